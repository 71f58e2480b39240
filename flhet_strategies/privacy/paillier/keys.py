"""Paillier keys: generation, the private-key holder, and the public-key-only view.

The private key lives in a :class:`KeyHolder` on the clients, never on the server; keys
shorter than :data:`MIN_KEY_BITS` are refused everywhere with :class:`.InsecureKeyError`.
See docs/paillier_packing.md.
"""

from __future__ import annotations

import hashlib
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import gmpy2
import numpy as np
from phe import PaillierPrivateKey, PaillierPublicKey, generate_paillier_keypair

from .errors import InsecureKeyError, KeyMismatchError, MalformedPayloadError

if TYPE_CHECKING:  # pragma: no cover
    from .encrypted_vector import EncryptedVector
    from .layout import SecureSumLayout

MIN_KEY_BITS = 2048
FINGERPRINT_BYTES = 16
_PUBLIC_KEY_MAGIC = b"FHPK"
_PUBLIC_KEY_HEADER = struct.Struct(">4sH")


def key_fingerprint(public_key: PaillierPublicKey) -> bytes:
    """First 16 bytes of the SHA-256 of the modulus ``n``: a short key identifier."""
    n = public_key.n
    return hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "big")).digest()[
        :FINGERPRINT_BYTES
    ]


def validate_public_key(public_key: object) -> PaillierPublicKey:
    """Check that ``public_key`` is a Paillier public key of at least 2048 bits.

    Parameters
    ----------
    public_key : object
        The key to check.

    Returns
    -------
    phe.PaillierPublicKey
        The same key.

    Raises
    ------
    TypeError
        If it is not a ``phe.PaillierPublicKey`` (a private key or a
        :class:`KeyHolder` is refused: pass ``key_holder.public_key``).
    InsecureKeyError
        If the modulus is shorter than :data:`MIN_KEY_BITS`.
    """
    if isinstance(public_key, (KeyHolder, PaillierPrivateKey)):
        raise TypeError(
            "expected a public key but got a private key; pass key_holder.public_key "
            "(the server side must never hold the private key)"
        )
    if not isinstance(public_key, PaillierPublicKey):
        raise TypeError(
            f"expected a phe.PaillierPublicKey, got {type(public_key).__name__}"
        )
    bits = public_key.n.bit_length()
    if bits < MIN_KEY_BITS:
        raise InsecureKeyError(
            f"Paillier key has {bits} bits; at least {MIN_KEY_BITS} are required "
            f"(generate one with KeyHolder.generate({MIN_KEY_BITS}))"
        )
    return public_key


def public_key_to_bytes(public_key: PaillierPublicKey) -> bytes:
    """Serialize a public key (its modulus ``n``) for sending to clients or the server."""
    public_key = validate_public_key(public_key)
    n = public_key.n
    length = (n.bit_length() + 7) // 8
    return _PUBLIC_KEY_HEADER.pack(_PUBLIC_KEY_MAGIC, length) + n.to_bytes(length, "big")


def public_key_from_bytes(data: bytes | np.ndarray) -> PaillierPublicKey:
    """Rebuild a public key written by :func:`public_key_to_bytes`.

    Parameters
    ----------
    data : bytes or np.ndarray
        The serialized key (a ``uint8`` array is accepted for Flower records).

    Raises
    ------
    MalformedPayloadError
        If the bytes are not a serialized public key.
    InsecureKeyError
        If the key is shorter than 2048 bits.
    """
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if len(raw) < _PUBLIC_KEY_HEADER.size:
        raise MalformedPayloadError("public key bytes are truncated")
    magic, length = _PUBLIC_KEY_HEADER.unpack_from(raw)
    if magic != _PUBLIC_KEY_MAGIC or len(raw) != _PUBLIC_KEY_HEADER.size + length:
        raise MalformedPayloadError("bytes are not a serialized flhet Paillier public key")
    n = int.from_bytes(raw[_PUBLIC_KEY_HEADER.size :], "big")
    if n < 3 or n % 2 == 0:
        raise MalformedPayloadError("serialized public key has an invalid modulus")
    return validate_public_key(PaillierPublicKey(n))


class KeyHolder:
    """Holder of a Paillier private key: decrypts secure sums. Never give it to the server.

    Parameters
    ----------
    private_key : phe.PaillierPrivateKey
        A private key of at least 2048 bits.

    Raises
    ------
    InsecureKeyError
        If the key is shorter than 2048 bits.

    Examples
    --------
    >>> holder = KeyHolder.generate()                      # doctest: +SKIP
    >>> codec = SecureSumCodec(holder.public_key, 100, 10)  # doctest: +SKIP
    """

    def __init__(self, private_key: PaillierPrivateKey) -> None:
        if not isinstance(private_key, PaillierPrivateKey):
            raise TypeError(
                f"expected a phe.PaillierPrivateKey, got {type(private_key).__name__}"
            )
        validate_public_key(private_key.public_key)
        self._private_key = private_key

    @classmethod
    def generate(cls, n_length: int = MIN_KEY_BITS) -> "KeyHolder":
        """Generate a fresh key pair with an ``n_length``-bit modulus (at least 2048)."""
        if n_length < MIN_KEY_BITS:
            raise InsecureKeyError(
                f"refusing to generate a {n_length}-bit Paillier key; at least "
                f"{MIN_KEY_BITS} bits are required"
            )
        _, private_key = generate_paillier_keypair(n_length=n_length)
        return cls(private_key)

    @property
    def public_key(self) -> PaillierPublicKey:
        """The public key: safe to give to the server and to every client."""
        return self._private_key.public_key

    @property
    def fingerprint(self) -> bytes:
        """Short identifier of the key pair (see :func:`key_fingerprint`)."""
        return key_fingerprint(self.public_key)

    def __repr__(self) -> str:
        return (
            f"KeyHolder(bits={self.public_key.n.bit_length()}, "
            f"fingerprint={self.fingerprint.hex()})"
        )

    def decrypt_plaintexts(self, encrypted: "EncryptedVector", workers: int = 1) -> list[int]:
        """Decrypt every ciphertext of ``encrypted`` to its raw plaintext integer.

        Parameters
        ----------
        encrypted : EncryptedVector
            The ciphertexts.
        workers : int (default: 1)
            Threads to decrypt in (gmpy2 releases the GIL in them); use the idle cores
            of a client that decrypts for a whole cohort.

        Raises
        ------
        KeyMismatchError
            If ``encrypted`` was produced under another public key.
        """
        if encrypted.key_fingerprint != self.fingerprint:
            raise KeyMismatchError(
                f"payload was encrypted under key {encrypted.key_fingerprint.hex()}, "
                f"this key holder holds key {self.fingerprint.hex()}"
            )
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        ciphertexts = [int(c) for c in encrypted.ciphertexts]
        if workers == 1 or len(ciphertexts) < 2:
            return self._decrypt_chunk(ciphertexts, release_gil=False)
        size = -(-len(ciphertexts) // workers)
        chunks = [ciphertexts[i : i + size] for i in range(0, len(ciphertexts), size)]
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            parts = list(pool.map(self._decrypt_chunk, chunks))
        return [plaintext for part in parts for plaintext in part]

    def _decrypt_chunk(self, ciphertexts: list[int], release_gil: bool = True) -> list[int]:
        if release_gil:
            gmpy2.get_context().allow_release_gil = True  # this worker thread's context
        decrypt = self._private_key.raw_decrypt
        return [decrypt(c) for c in ciphertexts]

    def decrypt_sum(
        self,
        encrypted_sum: "EncryptedVector",
        num_summands: int | None = None,
        *,
        expected_layout: "SecureSumLayout | None" = None,
        workers: int = 1,
    ) -> np.ndarray:
        """Decrypt and decode a secure sum.

        Parameters
        ----------
        encrypted_sum : EncryptedVector
            The sum from :meth:`.CiphertextAggregator.result` (or one encrypted vector).
        num_summands : int, optional
            Number of vectors in the sum: the clients whose payload arrived. Defaults
            to the count the sum carries; if given, it must agree with it.
        expected_layout : SecureSumLayout, optional
            The layout this client agreed to (``codec.layout``); if given, a sum whose
            header claims another layout is refused.
        workers : int (default: 1)
            Decryption threads (see :meth:`decrypt_plaintexts`).

        Returns
        -------
        np.ndarray
            ``float64`` sums of length ``num_values``, each within
            ``layout.max_sum_error(num_summands)`` of the sum of the clipped inputs.

        Raises
        ------
        KeyMismatchError
            If the sum was encrypted under another key.
        SecureSumOverflowError
            If the count exceeds ``max_summands`` or a slot overflowed.
        MalformedPayloadError
            If the layout differs from ``expected_layout``, the counts disagree, or a
            decrypted plaintext is not a valid packed sum.
        """
        layout = encrypted_sum.layout
        if expected_layout is not None:
            expected_layout.check_same(layout, "the encrypted sum")
        carried = encrypted_sum.num_summands
        if num_summands is None:
            num_summands = carried
        elif num_summands != carried:
            raise MalformedPayloadError(
                f"num_summands={num_summands} but the encrypted sum holds {carried} "
                "vectors; decode with the count of payloads that arrived"
            )
        return layout.decode(self.decrypt_plaintexts(encrypted_sum, workers), num_summands)
