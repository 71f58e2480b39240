"""Integer helpers shared by the secure sums that encrypt exact integers.

The secure weighted sum (:mod:`.spec`) and the secure FedAvg (:mod:`.model_updates`)
quantize and weight on the client themselves, then send exact integers through a layout
whose quantization step is 1 (:func:`integer_layout`).
"""

from __future__ import annotations

import numpy as np
from phe import PaillierPublicKey

from .codec import SecureSumCodec
from .encrypt import RandomnessPool
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


class IntegerSumSpec:
    """Layout and codec of a spec whose shares are exact integers (a mixin).

    Mixed into :class:`.spec.SecureSumSpec` (and so into
    :class:`.model_updates.SecureModelSpec`); a subclass
    provides ``num_values``, ``max_summands`` and ``value_bits``.
    """

    num_values: int
    max_summands: int
    value_bits: int

    def layout(self, plaintext_bits: int) -> SecureSumLayout:
        """The secure-sum layout of a client share (integers, one quantization level each).

        Parameters
        ----------
        plaintext_bits : int
            ``n.bit_length() - 1`` of the public key.
        """
        return integer_layout(self.num_values, self.max_summands, self.value_bits,
                              plaintext_bits)

    def codec(self, public_key: PaillierPublicKey,
              randomness: RandomnessPool | None = None) -> SecureSumCodec:
        """The codec that encrypts a client share under ``public_key``.

        Parameters
        ----------
        public_key : phe.PaillierPublicKey
            The key dealer's public key.
        randomness : RandomnessPool, optional
            Precomputed Paillier randomness (e.g. a client's shared pool).
        """
        return SecureSumCodec(public_key, self.num_values, self.max_summands,
                              (0.0, float((1 << self.value_bits) - 1)), self.value_bits,
                              randomness=randomness)


__all__ = ["IntegerSumSpec", "check_int", "integer_layout", "round_half_up"]
