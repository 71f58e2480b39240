"""The agreed encoding of one secure-sum vector: quantization plus bit layout.

Every client of a secure sum, and the key holder who decrypts it, must use the same
layout; a serialized payload carries it in its header (see :mod:`.serialize`) so a
mismatch is detected rather than decoded wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import MalformedPayloadError
from .fixed_point import FixedPointEncoder
from .packing import SlotPacking


@dataclass(frozen=True)
class SecureSumLayout:
    """Quantization and packing parameters of a secure-sum vector.

    Parameters
    ----------
    num_values : int
        Length of the vectors that are summed.
    max_summands : int
        Most vectors that may be added into one sum (e.g. the number of clients).
    value_min, value_max : float
        Clip range of the values.
    value_bits : int
        Quantization bits per value.
    plaintext_bits : int
        Usable plaintext bits of the key: ``n.bit_length() - 1``.
    """

    num_values: int
    max_summands: int
    value_min: float
    value_max: float
    value_bits: int
    plaintext_bits: int
    encoder: FixedPointEncoder = field(init=False, repr=False, compare=False)
    packing: SlotPacking = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.num_values, bool) or not isinstance(self.num_values, (int, np.integer)):
            raise TypeError(f"num_values must be an int, got {type(self.num_values).__name__}")
        if self.num_values < 1:
            raise ValueError(f"num_values must be at least 1, got {self.num_values}")
        object.__setattr__(self, "num_values", int(self.num_values))
        object.__setattr__(self, "value_min", float(self.value_min))
        object.__setattr__(self, "value_max", float(self.value_max))
        object.__setattr__(
            self, "encoder", FixedPointEncoder(self.value_min, self.value_max, self.value_bits)
        )
        object.__setattr__(
            self,
            "packing",
            SlotPacking(self.value_bits, self.max_summands, self.plaintext_bits),
        )

    @property
    def slot_bits(self) -> int:
        """Bits per packed value, padding included."""
        return self.packing.slot_bits

    @property
    def slots_per_ciphertext(self) -> int:
        """Values packed into one ciphertext."""
        return self.packing.slots_per_plaintext

    @property
    def num_ciphertexts(self) -> int:
        """Ciphertexts per encrypted vector."""
        return self.packing.num_plaintexts(self.num_values)

    def encode(self, vector: np.ndarray) -> list[int]:
        """Quantize and pack a vector into plaintext integers.

        Parameters
        ----------
        vector : np.ndarray
            1-D vector of ``num_values`` finite reals (clipped to the value range).

        Returns
        -------
        list of int
            ``num_ciphertexts`` plaintexts.
        """
        array = np.asarray(vector)
        if array.ndim != 1 or array.shape[0] != self.num_values:
            raise ValueError(
                f"expected a 1-D vector of {self.num_values} values, got shape "
                f"{array.shape}; flatten multi-dimensional payloads with .ravel()"
            )
        return self.packing.pack(self.encoder.encode(array))

    def decode(self, plaintexts: list[int], num_summands: int) -> np.ndarray:
        """Unpack and dequantize decrypted plaintexts of a sum of ``num_summands`` vectors.

        Raises
        ------
        SecureSumOverflowError, MalformedPayloadError
            See :meth:`.SlotPacking.unpack`.
        """
        level_sums = self.packing.unpack(plaintexts, self.num_values, num_summands)
        return self.encoder.decode_sum(level_sums, num_summands)

    def max_sum_error(self, num_summands: int) -> float:
        """Largest quantization error of a decoded sum of ``num_summands`` vectors."""
        return self.encoder.max_sum_error(num_summands)

    def check_same(self, other: "SecureSumLayout", what: str) -> None:
        """Raise :class:`.MalformedPayloadError` naming ``what`` if ``other`` differs."""
        if other != self:
            raise MalformedPayloadError(
                f"{what} uses layout {other}, expected {self}; all clients and the key "
                "holder must use the same num_values, max_summands, value range and bits"
            )
