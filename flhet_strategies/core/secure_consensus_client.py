"""Client steps of a secure logit consensus: decrypt or open the consensus, encrypt a share.

:class:`ConsensusSumClient` is a key holder's side of
:class:`~flhet_strategies.secure_consensus_server.SecureConsensusServer`, with no Flower
import, so that the compat wrapper
:class:`clients.secure_consensus_numpy_client.SecureConsensusNumPyClient` (and any other
face) encodes, encrypts, decrypts and seals exactly as the Message-API mod
:class:`clients.mods.paillier_consensus.PaillierConsensusMod` does: the same
:class:`.SecureConsensusSpec`, :class:`.SecureSumCodec`, :class:`.GroupSeal` and the
per-process key and randomness caches of :mod:`.secure_sum.client_cache`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from .secure_consensus import SecureConsensusSpec, consensus_context, consensus_from_bytes
from .secure_sum.client_cache import (
    check_key_fingerprint,
    check_worker_counts,
    shared_randomness_pool,
    top_up,
)
from .secure_sum.codec import SecureSumCodec
from .secure_sum.encrypt import available_cores
from .secure_sum.encrypted_vector import EncryptedVector
from .secure_sum.keys import KeyHolder
from .secure_sum.sealing import GroupSeal

_POOL_LOCK = threading.Lock()
"""The shared randomness pools are not thread-safe; clients served by threads of one
process (e.g. Flower's compat ``Server`` with in-process clients) take turns."""


@dataclass(frozen=True)
class ConsensusShare:
    """A client's encrypted share of the consensus sum.

    Parameters
    ----------
    payload : np.ndarray
        1-D ``uint8``: the serialized :class:`.EncryptedVector`.
    num_ciphertexts : int
        Ciphertexts in the payload.
    seconds : float
        Wall time of encoding and encrypting.
    """

    payload: np.ndarray
    num_ciphertexts: int
    seconds: float


class ConsensusSumClient:
    """Decrypts (or opens) the consensus the server relays and encrypts this client's share.

    Parameters
    ----------
    holder : KeyHolder
        The Paillier private key (from a key dealer's file), never the server's.
    workers : int (default: 1)
        Threads computing Paillier randomness in the background (the pool is shared
        per process and key).
    decrypt_workers : int, optional
        Threads decrypting a sum (default: every core this process may use).
    short_exponent : bool (default: True)
        Damgard-Jurik-Nielsen short-exponent randomness; False uses ``r**n``.

    Examples
    --------
    >>> client = ConsensusSumClient(load_key_holder("paillier_private.json"))  # doctest: +SKIP
    >>> client.prepare(spec)                          # randomness, while training # doctest: +SKIP
    >>> consensus, n = client.decrypt(spec, relayed_sum, indices)            # doctest: +SKIP
    >>> share = client.encrypt(spec, logits, class_counts, num_examples)     # doctest: +SKIP
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
        return f"ConsensusSumClient(key={self.holder.fingerprint.hex()})"

    def check(self, spec: SecureConsensusSpec) -> None:
        """Raise ``ValueError`` unless the spec asks for this client's key."""
        check_key_fingerprint(spec.key_fingerprint, self.holder)

    def codec(self, spec: SecureConsensusSpec) -> SecureSumCodec:
        """The codec of a share under ``spec`` (drawing randomness from the shared pool)."""
        return SecureSumCodec(self.holder.public_key, spec.num_values, spec.max_summands,
                              (0.0, float((1 << spec.value_bits) - 1)), spec.value_bits,
                              randomness=self.pool)

    def prepare(self, spec: SecureConsensusSpec) -> None:
        """Check the key and start computing the randomness of one share in the background."""
        self.check(spec)
        with _POOL_LOCK:
            top_up(self.pool, self.codec(spec).num_ciphertexts)

    def decrypt(self, spec: SecureConsensusSpec, encrypted: np.ndarray | bytes,
                indices: np.ndarray) -> tuple[np.ndarray, int]:
        """Decrypt and decode a relayed encrypted sum into the consensus.

        Parameters
        ----------
        spec : SecureConsensusSpec
            This round's spec (the sum may come from a round of another size).
        encrypted : np.ndarray or bytes
            The serialized encrypted sum.
        indices : np.ndarray
            The proxy indices the sum was computed on.

        Returns
        -------
        tuple
            The float32 consensus ``(len(indices), num_classes)`` and the number of
            clients in the sum.

        Raises
        ------
        ValueError, SecureSumError
            If the spec names another key, the sum has another layout, is under another
            key, is malformed, or does not decode.
        """
        self.check(spec)
        vector = EncryptedVector.from_array(encrypted, self.holder.public_key)
        spec.check_sum_layout(vector.layout, len(indices))
        sums = self.holder.decrypt_sum(vector, workers=self.decrypt_workers)
        return spec.decode(sums, vector.num_summands).consensus, vector.num_summands

    def seal(self, spec: SecureConsensusSpec, consensus: np.ndarray,
             indices: np.ndarray) -> np.ndarray:
        """Seal a decrypted consensus for the cohort (AES-GCM under a key derived from the
        Paillier private key, bound to the key, the indices and the shape)."""
        data = np.ascontiguousarray(consensus, dtype=np.float32).tobytes()
        return GroupSeal(self.holder).seal(
            data, consensus_context(spec.key_fingerprint, indices, spec.num_classes))

    def open_seal(self, spec: SecureConsensusSpec, sealed: np.ndarray | bytes,
                  indices: np.ndarray) -> np.ndarray:
        """Open a consensus another client sealed for the cohort.

        Raises
        ------
        ValueError, SecureSumError
            If the seal was altered, made under another key or for other indices.
        """
        data = GroupSeal(self.holder).unseal(
            sealed, consensus_context(spec.key_fingerprint, indices, spec.num_classes))
        return consensus_from_bytes(data, len(indices), spec.num_classes)

    def encrypt(self, spec: SecureConsensusSpec, logits: np.ndarray,
                class_counts: np.ndarray | None, num_examples: int) -> ConsensusShare:
        """Encode (:meth:`.SecureConsensusSpec.encode`) and encrypt this client's share.

        Parameters
        ----------
        spec : SecureConsensusSpec
            This round's spec.
        logits : np.ndarray
            The logits on the round's proxy samples.
        class_counts : np.ndarray or None
            The label histogram (needed with per-class votes).
        num_examples : int
            The number of training examples.

        Raises
        ------
        ValueError
            If the inputs do not fit the spec.
        """
        start = time.perf_counter()
        self.check(spec)
        if class_counts is None:
            if spec.class_vote_weighting:
                raise ValueError("per-class votes need the client's class_counts")
            class_counts = np.ones(spec.num_classes, dtype=np.int64)
        codec = self.codec(spec)
        values = spec.encode(logits, class_counts, num_examples)
        with _POOL_LOCK:
            payload = codec.encrypt(values).to_array()
            top_up(self.pool, codec.num_ciphertexts)   # for the next share this process makes
        return ConsensusShare(payload=payload, num_ciphertexts=codec.num_ciphertexts,
                              seconds=time.perf_counter() - start)


__all__ = ["ConsensusShare", "ConsensusSumClient"]
