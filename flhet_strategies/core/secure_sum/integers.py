"""Integer helpers shared by the secure sums that encrypt exact integers.

The secure consensus (:mod:`flhet_strategies.core.secure_consensus`) and the secure
FedAvg (:mod:`.model_updates`) quantize and weight on the client themselves, then send
exact integers through a layout whose quantization step is 1 (:func:`integer_layout`).
"""

from __future__ import annotations

import numpy as np

from .layout import SecureSumLayout


def integer_layout(num_values: int, max_summands: int, value_bits: int,
                   plaintext_bits: int) -> SecureSumLayout:
    """A :class:`.SecureSumLayout` whose quantization step is exactly 1 (integers as they are)."""
    return SecureSumLayout(
        num_values=num_values, max_summands=max_summands, value_min=0.0,
        value_max=float((1 << value_bits) - 1), value_bits=value_bits,
        plaintext_bits=plaintext_bits,
    )


def round_half_up(values: np.ndarray, unit: int) -> np.ndarray:
    """Integer ``values`` counted in units of ``unit``, rounding halves up (``unit`` 1: as is)."""
    return (values + unit // 2) // unit if unit > 1 else values


def check_int(name: str, value: object, minimum: int) -> None:
    """Raise ``TypeError`` unless ``value`` is an int, ``ValueError`` if below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


__all__ = ["check_int", "integer_layout", "round_half_up"]
