"""Fixed-point quantization with offset (sign) encoding.

A value in ``[value_min, value_max]`` becomes an integer level in ``[0, 2**bits - 1]``;
sums of levels never borrow, and a decoded sum of ``k`` values is within
``k * step / 2`` of the sum of the clipped inputs. See docs/paillier_packing.md.
"""

from __future__ import annotations

import math

import numpy as np

MAX_VALUE_BITS = 32


class FixedPointEncoder:
    """Quantize floats in a clip range to ``bits``-bit non-negative integers.

    Parameters
    ----------
    value_min : float
        Lower end of the clip range (may be negative).
    value_max : float
        Upper end of the clip range; must be greater than ``value_min``.
    bits : int
        Quantization bits per value, 1 to 32. 8 is the fast path for probabilities.

    Notes
    -----
    Values outside the range are clipped to it (the range is the caller's clipping
    bound, as in BatchCrypt or DP clipping); NaN and infinities are rejected.
    """

    def __init__(self, value_min: float, value_max: float, bits: int) -> None:
        value_min = float(value_min)
        value_max = float(value_max)
        if not (math.isfinite(value_min) and math.isfinite(value_max)):
            raise ValueError(
                f"value_range must be finite, got ({value_min}, {value_max})"
            )
        if not value_max > value_min:
            raise ValueError(
                f"value_range must satisfy min < max, got ({value_min}, {value_max})"
            )
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
            raise TypeError(f"bits must be an int, got {type(bits).__name__}")
        if not 1 <= int(bits) <= MAX_VALUE_BITS:
            raise ValueError(f"bits must be in [1, {MAX_VALUE_BITS}], got {bits}")
        self.value_min = value_min
        self.value_max = value_max
        self.bits = int(bits)
        self.max_level = (1 << self.bits) - 1
        self.step = (value_max - value_min) / self.max_level

    def __repr__(self) -> str:
        return (
            f"FixedPointEncoder(value_min={self.value_min}, "
            f"value_max={self.value_max}, bits={self.bits})"
        )

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Quantize values (clipped to the range) to integers in ``[0, 2**bits - 1]``.

        Parameters
        ----------
        values : np.ndarray
            Real values of any shape.

        Returns
        -------
        np.ndarray
            ``uint64`` array of the same shape.

        Raises
        ------
        ValueError
            If ``values`` is not numeric or holds NaN or infinities.
        """
        array = np.asarray(values)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"values must be numeric, got dtype {array.dtype}")
        array = array.astype(np.float64, copy=False)
        if not np.all(np.isfinite(array)):
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise ValueError(f"values hold {bad} NaN or infinite entries; cannot encrypt them")
        clipped = np.clip(array, self.value_min, self.value_max)
        levels = np.rint((clipped - self.value_min) / self.step)
        return np.clip(levels, 0, self.max_level).astype(np.uint64)

    def decode_sum(self, level_sums: np.ndarray, num_summands: int) -> np.ndarray:
        """Turn a sum of ``num_summands`` encodings back into a sum of real values.

        Parameters
        ----------
        level_sums : np.ndarray
            Element-wise sums of encodings (non-negative integers).
        num_summands : int
            How many encodings were added (the clients whose payload arrived).

        Returns
        -------
        np.ndarray
            ``float64`` sums, within ``max_sum_error(num_summands)`` of the sums of
            the clipped inputs.
        """
        sums = np.asarray(level_sums, dtype=np.float64)
        return num_summands * self.value_min + sums * self.step

    def max_sum_error(self, num_summands: int) -> float:
        """Largest quantization error of a decoded sum of ``num_summands`` values."""
        return num_summands * self.step / 2.0
