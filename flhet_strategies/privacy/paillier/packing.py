"""BatchCrypt-style packing of many quantized values into one plaintext integer.

Each value gets a slot with zero padding that absorbs the carries of up to
``max_summands`` additions; unpacking checks every bound, so an overflow or a foreign
ciphertext raises instead of decoding wrongly. BatchCrypt: Zhang et al., USENIX ATC 2020,
https://www.usenix.org/conference/atc20/presentation/zhang-chengliang. See
docs/paillier_packing.md.
"""

from __future__ import annotations

import numpy as np

from .errors import MalformedPayloadError, SecureSumOverflowError

MAX_SLOT_BITS = 63


class SlotPacking:
    """Bit layout of packed plaintexts and the pack/unpack operations.

    Parameters
    ----------
    value_bits : int
        Bits of one quantized value (see :class:`.FixedPointEncoder`).
    max_summands : int
        Most packed plaintexts that may be added; sets the padding bits per slot.
    plaintext_bits : int
        Usable plaintext bits: ``n.bit_length() - 1`` for a Paillier modulus ``n``.

    Attributes
    ----------
    slot_bits : int
        ``value_bits`` plus the padding: bit length of ``max_summands * (2**value_bits - 1)``.
    slots_per_plaintext : int
        Values per plaintext (per ciphertext).
    """

    def __init__(self, value_bits: int, max_summands: int, plaintext_bits: int) -> None:
        for name, value in (
            ("value_bits", value_bits),
            ("max_summands", max_summands),
            ("plaintext_bits", plaintext_bits),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.value_bits = int(value_bits)
        self.max_summands = int(max_summands)
        self.plaintext_bits = int(plaintext_bits)
        self.max_value = (1 << self.value_bits) - 1
        self.slot_bits = (self.max_summands * self.max_value).bit_length()
        if self.slot_bits > MAX_SLOT_BITS:
            raise ValueError(
                f"{self.value_bits}-bit values summed {self.max_summands} times need "
                f"{self.slot_bits}-bit slots; at most {MAX_SLOT_BITS} are supported. "
                "Lower bits or max_summands."
            )
        if self.slot_bits > self.plaintext_bits:
            raise ValueError(
                f"a {self.slot_bits}-bit slot does not fit a {self.plaintext_bits}-bit plaintext"
            )
        self.slots_per_plaintext = self.plaintext_bits // self.slot_bits
        self._used_bits = self.slots_per_plaintext * self.slot_bits
        self._pad_bits = (-self._used_bits) % 8
        self._num_bytes = (self._used_bits + self._pad_bits) // 8
        self._shifts = np.arange(self.slot_bits - 1, -1, -1, dtype=np.uint64)
        self._weights = np.left_shift(np.uint64(1), self._shifts)

    def __repr__(self) -> str:
        return (
            f"SlotPacking(value_bits={self.value_bits}, max_summands={self.max_summands}, "
            f"plaintext_bits={self.plaintext_bits}; slot_bits={self.slot_bits}, "
            f"slots_per_plaintext={self.slots_per_plaintext})"
        )

    def num_plaintexts(self, num_values: int) -> int:
        """Number of plaintexts (ciphertexts) that ``num_values`` values fill."""
        return max(1, -(-int(num_values) // self.slots_per_plaintext))

    def pack(self, levels: np.ndarray) -> list[int]:
        """Pack quantized values into plaintext integers.

        Parameters
        ----------
        levels : np.ndarray
            1-D integers in ``[0, 2**value_bits - 1]``; value ``i`` goes to slot
            ``i % slots_per_plaintext`` (counted from the most significant used slot)
            of plaintext ``i // slots_per_plaintext``.

        Returns
        -------
        list of int
            ``num_plaintexts(len(levels))`` integers, each below ``2**plaintext_bits``.

        Raises
        ------
        ValueError
            If ``levels`` is not 1-D or holds values outside the value range.
        """
        levels = np.asarray(levels)
        if levels.ndim != 1:
            raise ValueError(f"levels must be 1-D, got shape {levels.shape}")
        if levels.size and (levels.min() < 0 or levels.max() > self.max_value):
            raise ValueError(
                f"levels must lie in [0, {self.max_value}] for {self.value_bits}-bit slots"
            )
        count = self.num_plaintexts(levels.size)
        grid = np.zeros(count * self.slots_per_plaintext, dtype=np.uint64)
        grid[: levels.size] = levels.astype(np.uint64)
        grid = grid.reshape(count, self.slots_per_plaintext)
        bits = ((grid[:, :, None] >> self._shifts) & np.uint64(1)).astype(np.uint8)
        bits = bits.reshape(count, self._used_bits)
        if self._pad_bits:
            bits = np.concatenate(
                [np.zeros((count, self._pad_bits), dtype=np.uint8), bits], axis=1
            )
        rows = np.packbits(bits, axis=1)
        return [int.from_bytes(row.tobytes(), "big") for row in rows]

    def unpack(self, plaintexts: list[int], num_values: int, num_summands: int) -> np.ndarray:
        """Split (summed) plaintexts back into per-value integer sums, checking bounds.

        Parameters
        ----------
        plaintexts : list of int
            Decrypted plaintexts of a sum of ``num_summands`` packed vectors.
        num_values : int
            Number of values that were packed.
        num_summands : int
            Number of packed vectors in the sum.

        Returns
        -------
        np.ndarray
            ``uint64`` per-value sums, length ``num_values``.

        Raises
        ------
        SecureSumOverflowError
            If ``num_summands`` exceeds ``max_summands``, or a slot exceeds
            ``num_summands * (2**value_bits - 1)`` (an out-of-range summand, a wrong
            count, or a foreign ciphertext).
        MalformedPayloadError
            If the number of plaintexts is wrong, a bit above the slots is set or an
            unused slot is not zero (a wrong key or a corrupted ciphertext).
        """
        if not 1 <= num_summands <= self.max_summands:
            raise SecureSumOverflowError(
                f"a sum of {num_summands} vectors does not fit slots sized for at most "
                f"{self.max_summands} summands"
            )
        expected = self.num_plaintexts(num_values)
        if len(plaintexts) != expected:
            raise MalformedPayloadError(
                f"{num_values} values need {expected} plaintexts, got {len(plaintexts)}"
            )
        for index, plaintext in enumerate(plaintexts):
            if plaintext < 0 or plaintext >> self._used_bits:
                raise MalformedPayloadError(
                    f"decrypted plaintext {index} has bits set above the packed slots: "
                    "the ciphertext was not produced under this key and layout, or was "
                    "corrupted"
                )
        raw = b"".join(int(p).to_bytes(self._num_bytes, "big") for p in plaintexts)
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8).reshape(expected, -1), axis=1)
        bits = bits[:, self._pad_bits :].reshape(-1, self.slot_bits).astype(np.uint64)
        sums = bits @ self._weights
        bound = num_summands * self.max_value
        if np.any(sums > bound):
            worst = int(sums.max())
            raise SecureSumOverflowError(
                f"a decrypted slot holds {worst}, more than {num_summands} summands of at "
                f"most {self.max_value} can give ({bound}): a summand was out of range, "
                "the summand count is wrong, or a ciphertext is foreign"
            )
        if np.any(sums[num_values:]):
            raise MalformedPayloadError(
                "unused slots after the last value are not zero: the ciphertext was not "
                "produced under this layout, or was corrupted"
            )
        return sums[:num_values]
