"""Client side of a secure sum: quantize, pack and encrypt a vector."""

from __future__ import annotations

import numpy as np
from phe import PaillierPublicKey

from .encrypt import RandomnessPool, encrypt_plaintexts
from .encrypted_vector import EncryptedVector
from .keys import validate_public_key
from .layout import SecureSumLayout


class SecureSumCodec:
    """Encrypt vectors for a Paillier secure sum, many values per ciphertext.

    Parameters
    ----------
    public_key : phe.PaillierPublicKey
        Public key of the key holder (at least 2048 bits).
    num_values : int
        Length of the vectors to sum.
    max_summands : int
        Most vectors that will be added into one sum (the number of clients that may
        take part in a round). Sets the carry room of each slot; adding more raises.
    value_range : tuple of float
        Clip range ``(min, max)``; values outside are clipped. The default ``(0, 1)``
        with ``bits=8`` is the fast path for predicted probabilities.
    bits : int
        Quantization bits per value (1 to 32). A decoded sum of ``k`` vectors is within
        ``k * (max - min) / (2**bits - 1) / 2`` of the sum of the clipped inputs.
    workers : int, optional
        Worker processes for the randomness (``None``: every core). Ignored when
        ``randomness`` is given.
    randomness : RandomnessPool, optional
        A pool of precomputed obfuscators for ``public_key`` to draw from; by default
        the codec makes its own.

    Examples
    --------
    >>> holder = KeyHolder.generate()                                   # doctest: +SKIP
    >>> codec = SecureSumCodec(holder.public_key, 1000, max_summands=10)  # doctest: +SKIP
    >>> codec.precompute(1)             # e.g. while the client trains  # doctest: +SKIP
    >>> payload = codec.encrypt(probabilities.ravel()).to_array()       # doctest: +SKIP
    """

    def __init__(
        self,
        public_key: PaillierPublicKey,
        num_values: int,
        max_summands: int,
        value_range: tuple[float, float] = (0.0, 1.0),
        bits: int = 8,
        *,
        workers: int | None = None,
        randomness: RandomnessPool | None = None,
    ) -> None:
        self.public_key = validate_public_key(public_key)
        if len(value_range) != 2:
            raise ValueError(f"value_range must be (min, max), got {value_range!r}")
        self.layout = SecureSumLayout(
            num_values=num_values,
            max_summands=max_summands,
            value_min=value_range[0],
            value_max=value_range[1],
            value_bits=bits,
            plaintext_bits=self.public_key.n.bit_length() - 1,
        )
        self._owns_randomness = randomness is None
        if randomness is None:
            randomness = RandomnessPool(self.public_key, workers=workers)
        elif randomness.public_key != self.public_key:
            raise ValueError("the randomness pool was made for another public key")
        self.randomness = randomness

    def __repr__(self) -> str:
        return f"SecureSumCodec({self.layout}, ciphertexts={self.num_ciphertexts})"

    def __enter__(self) -> "SecureSumCodec":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def num_ciphertexts(self) -> int:
        """Ciphertexts per encrypted vector."""
        return self.layout.num_ciphertexts

    def max_sum_error(self, num_summands: int) -> float:
        """Largest quantization error of a decoded sum of ``num_summands`` vectors."""
        return self.layout.max_sum_error(num_summands)

    def precompute(self, num_encryptions: int = 1, block: bool = True) -> None:
        """Precompute the randomness for ``num_encryptions`` future :meth:`encrypt` calls.

        Parameters
        ----------
        num_encryptions : int
            Vectors to prepare for.
        block : bool
            If False, compute in the background worker processes and return at once.
        """
        self.randomness.fill(num_encryptions * self.num_ciphertexts, block=block)

    def encrypt(self, vector: np.ndarray) -> EncryptedVector:
        """Quantize, pack and encrypt one vector.

        Parameters
        ----------
        vector : np.ndarray
            1-D vector of ``num_values`` finite reals.

        Returns
        -------
        EncryptedVector
            ``num_ciphertexts`` ciphertexts; ``.to_array()`` serializes them.

        Raises
        ------
        ValueError
            If the vector has the wrong shape or holds NaN/Inf.
        """
        plaintexts = self.layout.encode(vector)
        obfuscators = self.randomness.take(len(plaintexts))
        ciphertexts = encrypt_plaintexts(self.public_key, plaintexts, obfuscators)
        return EncryptedVector(self.public_key, self.layout, ciphertexts, num_summands=1)

    def close(self) -> None:
        """Stop the worker processes of the codec's own randomness pool (not a shared one)."""
        if self._owns_randomness:
            self.randomness.close()
