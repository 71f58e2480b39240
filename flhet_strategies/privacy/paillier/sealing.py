"""Authenticated symmetric sealing among the holders of one Paillier private key.

One key holder decrypts a sum and seals it (AES-256-GCM under a key derived from the
Paillier private key) for the others; the server relays bytes it can neither read nor
alter undetected. See docs/paillier_packing.md.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import MalformedPayloadError
from .keys import KeyHolder

NONCE_BYTES = 12
TAG_BYTES = 16
_INFO = b"flhet paillier group seal v1"


class SymmetricSeal:
    """AES-256-GCM sealing under a 32-byte key the cohort's clients share (never the server).

    Parameters
    ----------
    key : bytes
        The 32-byte key.
    """

    def __init__(self, key: bytes) -> None:
        if len(bytes(key)) != 32:
            raise MalformedPayloadError("a seal key must have 32 bytes")
        self._aead = AESGCM(bytes(key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(AES-256-GCM)"

    def seal(self, data: bytes, associated_data: bytes) -> np.ndarray:
        """Encrypt and authenticate ``data`` bound to ``associated_data``.

        Returns
        -------
        np.ndarray
            1-D ``uint8``: nonce, ciphertext and tag.
        """
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, bytes(data), bytes(associated_data))
        return np.frombuffer(sealed, dtype=np.uint8).copy()

    def unseal(self, sealed: np.ndarray | bytes, associated_data: bytes) -> bytes:
        """Check and decrypt bytes from :meth:`seal`.

        Raises
        ------
        MalformedPayloadError
            If the bytes were not sealed under this key for this ``associated_data``, or
            were altered.
        """
        raw = sealed.tobytes() if isinstance(sealed, np.ndarray) else bytes(sealed)
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise MalformedPayloadError(f"sealed payload of {len(raw)} bytes is truncated")
        try:
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                      bytes(associated_data))
        except InvalidTag as error:
            raise MalformedPayloadError(
                "sealed payload does not authenticate: it was sealed under another key or "
                "for another context, or it was altered"
            ) from error


class GroupSeal(SymmetricSeal):
    """AES-GCM sealing with a key every holder of the same Paillier private key derives.

    Parameters
    ----------
    holder : KeyHolder
        The Paillier private key holder (a client, never the server).

    Examples
    --------
    >>> sealed = GroupSeal(holder).seal(consensus.tobytes(), context_bytes)  # doctest: +SKIP
    >>> data = GroupSeal(other_client_holder).unseal(sealed, context_bytes)  # doctest: +SKIP
    """

    def __init__(self, holder: KeyHolder) -> None:
        if not isinstance(holder, KeyHolder):
            raise TypeError(f"expected a KeyHolder, got {type(holder).__name__}")
        private_key = holder._private_key  # noqa: SLF001 - same package: derive, never export
        width = (private_key.public_key.n.bit_length() + 15) // 16
        material = private_key.p.to_bytes(width, "big") + private_key.q.to_bytes(width, "big")
        super().__init__(HKDF(algorithm=hashes.SHA256(), length=32, salt=holder.fingerprint,
                              info=_INFO).derive(material))
