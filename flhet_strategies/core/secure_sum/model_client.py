"""Client steps of a secure FedAvg: decrypt the relayed model sum, encrypt a share.

Both Flower faces use :class:`ModelSumClient` (the Message-API mod
:class:`clients.mods.paillier_fedavg.PaillierFedAvgMod` and the compat wrapper
:class:`clients.paillier_numpy_client.PaillierNumPyClient`), so they encode, encrypt and
decode identically. No Flower import.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .client_cache import (
    check_key_fingerprint,
    check_worker_counts,
    shared_randomness_pool,
    top_up,
)
from .codec import SecureSumCodec
from .encrypt import available_cores
from .encrypted_vector import EncryptedVector
from .keys import KeyHolder
from .model_updates import ModelSumResult, SecureModelSpec


@dataclass(frozen=True)
class EncryptedShare:
    """A client's encrypted share and what it cost.

    Parameters
    ----------
    payload : np.ndarray
        1-D ``uint8``: the serialized :class:`.EncryptedVector` (header + ciphertexts).
    num_clipped : int
        Values clipped to ``[-clip_bound, clip_bound]``.
    num_ciphertexts : int
        Ciphertexts in the payload.
    seconds : float
        Wall time of encoding and encrypting.
    """

    payload: np.ndarray
    num_clipped: int
    num_ciphertexts: int
    seconds: float


class ModelSumClient:
    """A key holder's side of a secure FedAvg: decrypts sums, encrypts shares.

    Parameters
    ----------
    holder : KeyHolder
        The Paillier private key (from a key dealer's file), never the server's.
    workers : int (default: 1)
        Threads computing Paillier randomness (in the background, while the client
        trains). The pool is shared per process and key (see :mod:`.client_cache`).
    decrypt_workers : int, optional
        Threads decrypting a sum (default: every core this process may use).
    short_exponent : bool (default: True)
        Damgard-Jurik-Nielsen short-exponent randomness (see :mod:`.short_exponent`);
        False uses ``r**n``.

    Examples
    --------
    >>> client = ModelSumClient(load_key_holder("paillier_private.json"))  # doctest: +SKIP
    >>> client.prepare(spec)                       # randomness, while training  # doctest: +SKIP
    >>> model = client.decrypt(spec, relayed_sum).arrays                  # doctest: +SKIP
    >>> share = client.encrypt(spec, trained_arrays, weight=num_examples)  # doctest: +SKIP
    """

    def __init__(self, holder: KeyHolder, *, workers: int = 1, decrypt_workers: int | None = None,
                 short_exponent: bool = True) -> None:
        if not isinstance(holder, KeyHolder):
            raise TypeError(f"holder must be a KeyHolder, got {type(holder).__name__}")
        check_worker_counts(workers, decrypt_workers)
        self.holder = holder
        self.decrypt_workers = decrypt_workers or available_cores()
        self.pool = shared_randomness_pool(holder, short_exponent, workers)

    def __repr__(self) -> str:
        return f"ModelSumClient(key={self.holder.fingerprint.hex()}, pool={self.pool!r})"

    def check(self, spec: SecureModelSpec) -> None:
        """Raise ``ValueError`` unless the spec asks for this client's key."""
        check_key_fingerprint(spec.key_fingerprint, self.holder)

    def codec(self, spec: SecureModelSpec) -> SecureSumCodec:
        """The codec of a share under ``spec`` (drawing randomness from the shared pool)."""
        return spec.codec(self.holder.public_key, self.pool)

    def prepare(self, spec: SecureModelSpec) -> None:
        """Check the key and start computing the randomness of one share in the background."""
        self.check(spec)
        top_up(self.pool, self.codec(spec).num_ciphertexts)

    def decrypt(self, spec: SecureModelSpec, payload: np.ndarray | bytes) -> ModelSumResult:
        """Decrypt and decode a relayed encrypted sum into the global model.

        Parameters
        ----------
        spec : SecureModelSpec
            This round's spec (the sum may come from a cohort of another size).
        payload : np.ndarray or bytes
            The serialized encrypted sum.

        Raises
        ------
        ValueError
            If the spec names another key or the sum has another layout.
        KeyMismatchError, MalformedPayloadError, SecureSumOverflowError
            If the sum is under another key, malformed, or does not decode.
        """
        self.check(spec)
        vector = EncryptedVector.from_array(payload, self.holder.public_key)
        spec.check_sum_layout(vector.layout)
        sums = self.holder.decrypt_sum(vector, workers=self.decrypt_workers)
        return spec.decode(sums, vector.num_summands)

    def encrypt(self, spec: SecureModelSpec,
                arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                weight: float | None) -> EncryptedShare:
        """Clip, quantize, weight, pack and encrypt the client's model arrays.

        Parameters
        ----------
        spec : SecureModelSpec
            This round's spec.
        arrays : Mapping[str, np.ndarray] or Sequence[np.ndarray]
            The trained model arrays.
        weight : int or None
            The client's number of training examples (None with uniform weights).

        Raises
        ------
        ValueError
            If the arrays do not fit the spec or the weight exceeds its bound.
        """
        start = time.perf_counter()
        self.check(spec)
        share = spec.encode(arrays, weight)
        codec = self.codec(spec)
        payload = codec.encrypt(share.values).to_array()
        top_up(self.pool, codec.num_ciphertexts)   # for the next share this process makes
        return EncryptedShare(payload=payload, num_clipped=share.num_clipped,
                              num_ciphertexts=codec.num_ciphertexts,
                              seconds=time.perf_counter() - start)


__all__ = ["EncryptedShare", "ModelSumClient"]
