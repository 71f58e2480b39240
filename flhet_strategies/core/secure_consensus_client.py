"""Client steps of a secure logit consensus: decrypt or open the consensus, encrypt a share.

:class:`ConsensusSumClient` is a key holder's side of
:class:`~flhet_strategies.secure_consensus_server.SecureConsensusServer`, with no Flower
import, so that the compat wrapper
:class:`clients.secure_consensus_numpy_client.SecureConsensusNumPyClient` (and any other
face) encodes, encrypts, decrypts and seals exactly as the Message-API mod
:class:`clients.mods.paillier_consensus.PaillierConsensusMod` does: the same
:class:`.SecureConsensusSpec`, :class:`.SecureSumCodec`, :class:`.GroupSeal` and the
per-process key and randomness caches of :mod:`.secure_sum.client_cache` (through
:class:`.ShareClient`, shared with the secure FedAvg's :class:`.ModelSumClient`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .secure_consensus import (
    SecureConsensusSpec,
    consensus_context,
    consensus_from_bytes,
    released_rows,
)
from .secure_sum.sealing import GroupSeal
from .secure_sum.share_client import ShareClient


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
    num_clipped : int (default: 0)
        Distributed DP: noisy values clipped to the spec's public bound.
    """

    payload: np.ndarray
    num_ciphertexts: int
    seconds: float
    num_clipped: int = 0


class ConsensusSumClient(ShareClient):
    """Decrypts (or opens) the consensus the server relays and encrypts this client's share.

    Parameters
    ----------
    holder, workers, decrypt_workers, short_exponent
        The key and thread settings of :class:`.ShareClient`.

    Examples
    --------
    >>> client = ConsensusSumClient(load_key_holder("paillier_private.json"))  # doctest: +SKIP
    >>> client.prepare(spec)                          # randomness, while training # doctest: +SKIP
    >>> consensus, n = client.decrypt(spec, relayed_sum, indices)            # doctest: +SKIP
    >>> share = client.encrypt(spec, logits, class_counts, num_examples)     # doctest: +SKIP
    """

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
            clients in the sum. Under distributed DP (``spec.privacy``) the rows the
            private release withheld are NaN: keep the others with
            :func:`.secure_consensus.released_rows`.

        Raises
        ------
        ValueError, SecureSumError
            If the spec names another key, the sum has another layout, is under another
            key, is malformed, or does not decode.
        """
        sums, vector = self._decrypt_vector(spec, encrypted, len(indices))
        result = spec.decode(sums, vector.num_summands, vector.layout.max_summands)
        return result.consensus, vector.num_summands

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

    def relayed_consensus(self, spec: SecureConsensusSpec, encrypted: np.ndarray | bytes | None,
                          sealed: np.ndarray | bytes | None, indices: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, str]:
        """The consensus a plan relays: open the seal if there is one, else decrypt the sum.

        Parameters
        ----------
        spec : SecureConsensusSpec
            This round's spec.
        encrypted : np.ndarray or bytes, optional
            The relayed encrypted sum (used when ``sealed`` is None).
        sealed : np.ndarray or bytes, optional
            The consensus another client sealed for the cohort.
        indices : np.ndarray
            The proxy indices of the consensus rows.

        Returns
        -------
        tuple
            The released indices and consensus rows (:func:`.released_rows`) and what was
            done, for the log.

        Raises
        ------
        ValueError, SecureSumError
            As :meth:`open_seal` or :meth:`decrypt`.
        """
        if sealed is not None:   # one client decrypted for everyone: open the seal
            consensus = self.open_seal(spec, sealed, indices)
            how = "opened the sealed consensus"
        else:
            consensus, num_summands = self.decrypt(spec, encrypted, indices)
            how = f"decrypted the consensus of {num_summands} clients"
        released_indices, released = released_rows(indices, consensus)
        return released_indices, released, how

    def decrypt_and_seal(self, spec: SecureConsensusSpec, encrypted: np.ndarray | bytes,
                         indices: np.ndarray) -> tuple[np.ndarray, int]:
        """Decrypt a sum for the whole cohort and seal it (:meth:`decrypt`, :meth:`seal`).

        Returns
        -------
        tuple
            The seal (``uint8``) and the number of clients in the sum.
        """
        consensus, num_summands = self.decrypt(spec, encrypted, indices)
        return self.seal(spec, consensus, indices), num_summands

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
            If the inputs do not fit the spec, or the spec asks for noisy probabilities
            (distributed DP: use :meth:`encrypt_noisy`).
        """
        start = time.perf_counter()
        self.check(spec)
        if spec.privacy is not None:
            raise ValueError(
                "the secure consensus asks for distributed DP: the share must be the noisy "
                "probabilities of DpPredictionsMod(encoding='probabilities'), not logits")
        if class_counts is None:
            if spec.class_vote_weighting:
                raise ValueError("per-class votes need the client's class_counts")
            class_counts = np.ones(spec.num_classes, dtype=np.int64)
        values = spec.encode(logits, class_counts, num_examples)
        return self._share(spec, values, start)

    def encrypt_noisy(self, spec: SecureConsensusSpec, noisy: np.ndarray) -> ConsensusShare:
        """Encode (:meth:`.SecureConsensusSpec.encode_noisy`) and encrypt a distributed-DP
        share: clipped probabilities plus this client's noise share.

        Raises
        ------
        ValueError
            If the spec has no ``privacy`` or the values do not fit it.
        """
        start = time.perf_counter()
        self.check(spec)
        values, num_clipped = spec.encode_noisy(noisy)
        return self._share(spec, values, start, num_clipped)

    def _share(self, spec: SecureConsensusSpec, values: np.ndarray, start: float,
               num_clipped: int = 0) -> ConsensusShare:
        codec = self.codec(spec)
        payload = self._encrypt_values(codec, values)
        return ConsensusShare(payload=payload, num_ciphertexts=codec.num_ciphertexts,
                              seconds=time.perf_counter() - start, num_clipped=num_clipped)


__all__ = ["ConsensusShare", "ConsensusSumClient"]
