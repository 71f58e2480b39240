"""Client steps of a secure FedAvg: decrypt the relayed model sum, encrypt a share.

Both client faces (:class:`clients.fedavg.paillier.PaillierFedAvgMod` and
``PaillierNumPyClient``) use :class:`ModelSumClient`; the key, randomness and Paillier
steps are :class:`.ShareClient`'s. No Flower import.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .keys import KeyHolder
from .model_updates import ModelSumResult, SecureModelSpec
from .share_client import ShareClient


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


class ModelSumClient(ShareClient):
    """A key holder's side of a secure FedAvg: decrypts sums, encrypts shares.

    Parameters
    ----------
    holder, workers, decrypt_workers, short_exponent
        The key and thread settings of :class:`.ShareClient` (the randomness computes
        in the background while the client trains).

    Examples
    --------
    >>> client = ModelSumClient(load_key_holder("paillier_private.json"))  # doctest: +SKIP
    >>> client.prepare(spec)                       # randomness, while training  # doctest: +SKIP
    >>> model = client.decrypt(spec, relayed_sum).arrays                  # doctest: +SKIP
    >>> share = client.encrypt(spec, trained_arrays, weight=num_examples)  # doctest: +SKIP
    """

    def __init__(self, holder: KeyHolder, **settings) -> None:
        if not isinstance(holder, KeyHolder):
            raise TypeError(f"secure FedAvg needs a Paillier private key (a KeyHolder from "
                            f"deal_keys), got {type(holder).__name__}: threshold keys are "
                            "for the flhet weighted sums (SecureConsensus)")
        super().__init__(holder, **settings)

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
        sums, num_summands = self._decrypt_sum(spec, payload)
        return spec.decode_model(sums, num_summands)

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
        share = spec.encode_model(arrays, weight)
        codec = self.codec(spec)
        payload = self._encrypt_values(codec, share.values)
        return EncryptedShare(payload=payload, num_clipped=share.num_clipped,
                              num_ciphertexts=codec.num_ciphertexts,
                              seconds=time.perf_counter() - start)


__all__ = ["EncryptedShare", "ModelSumClient"]
