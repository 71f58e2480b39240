"""An encrypted, packed vector (or a sum of them) under one Paillier public key."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from phe import PaillierPublicKey

from .errors import MalformedPayloadError, SecureSumOverflowError
from .keys import key_fingerprint, validate_public_key
from .layout import SecureSumLayout
from .serialize import (
    HEADER,
    check_ciphertexts,
    ciphertext_bytes,
    payload_from_array,
    payload_to_array,
)


@dataclass(frozen=True, eq=False)
class EncryptedVector:
    """Ciphertexts of one packed vector, or of the sum of ``num_summands`` of them.

    Holds the public key only. Create one with :meth:`.SecureSumCodec.encrypt`, or
    from a received payload with :meth:`from_array`.

    Parameters
    ----------
    public_key : phe.PaillierPublicKey
        The key the ciphertexts are under.
    layout : SecureSumLayout
        Quantization and packing of the plaintexts.
    ciphertexts : tuple of gmpy2.mpz
        ``layout.num_ciphertexts`` ciphertexts.
    num_summands : int
        Number of encrypted vectors added into this one (1 when fresh).
    """

    public_key: PaillierPublicKey
    layout: SecureSumLayout
    ciphertexts: tuple
    num_summands: int = 1

    def __post_init__(self) -> None:
        validate_public_key(self.public_key)
        if len(self.ciphertexts) != self.layout.num_ciphertexts:
            raise MalformedPayloadError(
                f"layout needs {self.layout.num_ciphertexts} ciphertexts, got "
                f"{len(self.ciphertexts)}"
            )
        if not 1 <= self.num_summands:
            raise MalformedPayloadError("an encrypted vector holds at least one summand")
        if self.num_summands > self.layout.max_summands:
            raise SecureSumOverflowError(
                f"a sum of {self.num_summands} vectors exceeds the layout's "
                f"max_summands={self.layout.max_summands}"
            )

    @property
    def key_fingerprint(self) -> bytes:
        """Fingerprint of the public key (see :func:`.key_fingerprint`)."""
        return key_fingerprint(self.public_key)

    @property
    def nbytes(self) -> int:
        """Size of the serialized payload in bytes."""
        return HEADER.size + len(self.ciphertexts) * ciphertext_bytes(self.public_key)

    def to_array(self) -> np.ndarray:
        """Serialize to a 1-D ``uint8`` array (header + ciphertexts), e.g. for an ArrayRecord."""
        return payload_to_array(self.public_key, self.layout, self.num_summands, self.ciphertexts)

    @classmethod
    def from_array(
        cls, array: np.ndarray | bytes, public_key: PaillierPublicKey
    ) -> "EncryptedVector":
        """Deserialize and check a payload written by :meth:`to_array`.

        Parameters
        ----------
        array : np.ndarray or bytes
            The serialized payload.
        public_key : phe.PaillierPublicKey
            The key the payload must be under.

        Raises
        ------
        KeyMismatchError
            If it was encrypted under another key.
        MalformedPayloadError
            If it is truncated, inconsistent or holds an invalid ciphertext.
        """
        public_key = validate_public_key(public_key)
        payload = payload_from_array(array, public_key)
        return cls(
            public_key=public_key,
            layout=payload.layout,
            ciphertexts=payload.ciphertexts,
            num_summands=payload.num_summands,
        )

    def check_ciphertexts(self) -> None:
        """Raise :class:`.MalformedPayloadError` unless every ciphertext is a unit mod ``n**2``."""
        check_ciphertexts(self.public_key, self.ciphertexts)
