"""Server side of a secure sum: multiply ciphertexts, holding the public key only.

Paillier is additively homomorphic: the product of ciphertexts modulo ``n**2`` is a
ciphertext of the sum of the plaintexts, so the server sums packed vectors without
seeing any of them. Clients that drop out are simply not added; the result carries the
number of vectors that arrived, which the key holder decodes with.
"""

from __future__ import annotations

import gmpy2
import numpy as np
from phe import PaillierPublicKey

from .encrypted_vector import EncryptedVector
from .errors import KeyMismatchError, SecureSumOverflowError
from .keys import key_fingerprint, validate_public_key
from .layout import SecureSumLayout


class CiphertextAggregator:
    """Running encrypted sum of packed vectors under one public key.

    Parameters
    ----------
    public_key : phe.PaillierPublicKey
        The key holder's public key. A private key or :class:`.KeyHolder` is refused:
        the server never holds the private key.

    Examples
    --------
    >>> aggregator = CiphertextAggregator(public_key)           # doctest: +SKIP
    >>> aggregator.add(*payload_arrays_that_arrived)            # doctest: +SKIP
    >>> reply = aggregator.result().to_array()                  # doctest: +SKIP
    """

    def __init__(self, public_key: PaillierPublicKey) -> None:
        self.public_key = validate_public_key(public_key)
        self._fingerprint = key_fingerprint(self.public_key)
        self._nsquare = gmpy2.mpz(self.public_key.n) ** 2
        self._layout: SecureSumLayout | None = None
        self._sum: list | None = None
        self._num_summands = 0

    def __repr__(self) -> str:
        return (
            f"CiphertextAggregator(fingerprint={self._fingerprint.hex()}, "
            f"num_summands={self._num_summands})"
        )

    @property
    def num_summands(self) -> int:
        """Number of vectors added so far."""
        return self._num_summands

    @property
    def layout(self) -> SecureSumLayout | None:
        """Layout of the vectors added so far (None before the first)."""
        return self._layout

    def add(self, *payloads: EncryptedVector | np.ndarray | bytes) -> "CiphertextAggregator":
        """Add encrypted vectors (or their serialized arrays) to the sum.

        All payloads are checked before any is added, so a bad one leaves the sum
        unchanged.

        Parameters
        ----------
        *payloads : EncryptedVector or np.ndarray or bytes
            Vectors from :meth:`.SecureSumCodec.encrypt`, or arrays from
            :meth:`.EncryptedVector.to_array`.

        Returns
        -------
        CiphertextAggregator
            ``self``, so calls chain: ``CiphertextAggregator(pk).add(a, b).result()``.

        Raises
        ------
        KeyMismatchError
            If a payload is under another key.
        MalformedPayloadError
            If a payload is malformed or its layout differs from the others'.
        SecureSumOverflowError
            If the sum would hold more vectors than the layout's ``max_summands``.
        """
        vectors = [self._as_vector(payload) for payload in payloads]
        if not vectors:
            return self
        layout = self._layout if self._layout is not None else vectors[0].layout
        for index, vector in enumerate(vectors):
            layout.check_same(vector.layout, f"payload {index}")
        total = self._num_summands + sum(vector.num_summands for vector in vectors)
        if total > layout.max_summands:
            raise SecureSumOverflowError(
                f"adding these payloads makes a sum of {total} vectors, but the slots "
                f"only absorb the carries of {layout.max_summands}; encode with a larger "
                "max_summands"
            )
        nsquare = self._nsquare
        running = self._sum
        for vector in vectors:
            if running is None:
                running = list(vector.ciphertexts)
            else:
                running = [(a * b) % nsquare for a, b in zip(running, vector.ciphertexts)]
        self._layout = layout
        self._sum = running
        self._num_summands = total
        return self

    def result(self) -> EncryptedVector:
        """The encrypted sum of every vector added, with the count that arrived.

        Raises
        ------
        ValueError
            If nothing was added.
        """
        if self._sum is None or self._layout is None:
            raise ValueError("no encrypted vector was added; there is no sum to return")
        return EncryptedVector(
            self.public_key, self._layout, tuple(self._sum), num_summands=self._num_summands
        )

    def _as_vector(self, payload: EncryptedVector | np.ndarray | bytes) -> EncryptedVector:
        if isinstance(payload, EncryptedVector):
            if payload.key_fingerprint != self._fingerprint:
                raise KeyMismatchError(
                    f"payload was encrypted under key {payload.key_fingerprint.hex()}, "
                    f"the aggregator uses key {self._fingerprint.hex()}"
                )
            payload.check_ciphertexts()
            return payload
        if isinstance(payload, (np.ndarray, bytes, bytearray, memoryview)):
            return EncryptedVector.from_array(payload, self.public_key)
        raise TypeError(
            "payloads must be EncryptedVector or uint8 arrays from to_array(), got "
            f"{type(payload).__name__}"
        )


def one_client_share(payload: np.ndarray | bytes, public_key: PaillierPublicKey,
                     layout: SecureSumLayout, what: str = "vector") -> EncryptedVector:
    """Parse one client's encrypted share and check it can join the round's sum.

    Parameters
    ----------
    payload : np.ndarray or bytes
        The serialized :class:`.EncryptedVector` a client sent.
    public_key : phe.PaillierPublicKey
        The key the share must be under.
    layout : SecureSumLayout
        The round's layout, which the share must have.
    what : str (default: "vector")
        What a share holds, for the error message (e.g. ``"model"``).

    Raises
    ------
    ValueError, SecureSumError
        If the share is malformed, under another key, has another layout or claims more
        than one summand.
    """
    vector = EncryptedVector.from_array(payload, public_key)
    layout.check_same(vector.layout, "the encrypted share")
    if vector.num_summands != 1:
        raise ValueError(
            f"a share must hold one client's {what}, this one claims {vector.num_summands}")
    return vector
