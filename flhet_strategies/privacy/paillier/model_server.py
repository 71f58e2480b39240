"""Server steps of a secure FedAvg: specs, share checks, ciphertext products, history.

Both Flower faces (:class:`flhet_strategies.privacy.paillier.fedavg.SecureFedAvg` and
:class:`flhet_strategies.privacy.paillier.fedavg.SecureFedAvgCompat`) delegate here. It
holds the public key only (a private key or :class:`.KeyHolder` is refused) and never
decrypts: the encrypted sum it returns is relayed to the clients, who decrypt it. No
Flower import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from phe import PaillierPublicKey

from .aggregate import CiphertextAggregator, one_client_share
from .errors import SecureSumError
from .keys import key_fingerprint, validate_public_key
from .model_updates import MODEL_WEIGHTINGS, SecureModelSpec


@dataclass
class RoundOutcome:
    """What the server made of one round's shares.

    Parameters
    ----------
    encrypted_sum : np.ndarray or None
        The serialized encrypted sum of the accepted shares (None if none was).
    accepted : list of str
        Ids of the clients in the sum.
    rejected : dict of str to str
        Ids of clients whose share was refused, with the reason.
    """

    encrypted_sum: np.ndarray | None
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


class ModelSumServer:
    """Public-key-only server half of a secure FedAvg.

    Parameters
    ----------
    public_key : phe.PaillierPublicKey
        The key dealer's public key (at least 2048 bits).
    clip_bound : float
        ``B``: clients clip every value to ``[-B, B]``.
    bits : int
        Quantization bits per value.
    weighting : str
        ``"sample_count"`` or ``"uniform"``.
    max_examples : int, optional
        Public bound on a client's number of examples (needed for sample counts).
    vote_bits : int
        Most bits of an integer weight.

    Attributes
    ----------
    history : list of dict
        One entry per round: ``round``, ``bytes_down`` (train messages),
        ``bytes_down_evaluate``, ``bytes_up``, ``accepted``, ``rejected``,
        ``num_failures``, ``num_ciphertexts``, ``seconds_aggregate``.
    """

    def __init__(self, public_key: PaillierPublicKey, *, clip_bound: float, bits: int,
                 weighting: str, max_examples: int | None, vote_bits: int) -> None:
        self.public_key = validate_public_key(public_key)
        if weighting not in MODEL_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {MODEL_WEIGHTINGS}, got {weighting!r}")
        self.fingerprint = key_fingerprint(self.public_key).hex()
        self._settings = {"clip_bound": clip_bound, "bits": bits, "weighting": weighting,
                          "max_examples": max_examples, "vote_bits": vote_bits}
        self._template: SecureModelSpec | None = None
        SecureModelSpec.for_arrays([np.zeros(1, np.float32)], max_summands=1,
                                   key_fingerprint=self.fingerprint, **self._settings)
        self.history: list[dict] = []

    def __repr__(self) -> str:
        return f"ModelSumServer(key={self.fingerprint}, structure={self._template is not None})"

    @property
    def settings(self) -> dict:
        """The encoding settings (clip bound, bits, weighting, max_examples, vote_bits)."""
        return dict(self._settings)

    @property
    def has_structure(self) -> bool:
        """Whether the model's structure is known (after :meth:`set_structure`)."""
        return self._template is not None

    def set_structure(self, arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> None:
        """Learn the model's names, shapes and dtypes from the (public) initial model."""
        self._template = SecureModelSpec.for_arrays(
            arrays, max_summands=1, key_fingerprint=self.fingerprint, **self._settings)

    def spec(self, max_summands: int) -> SecureModelSpec:
        """The spec of a round of ``max_summands`` clients.

        Raises
        ------
        ValueError
            If the structure is not known yet.
        """
        if self._template is None:
            raise ValueError("the model structure is unknown: call set_structure with the "
                             "initial model first")
        return self._template.with_max_summands(max_summands)

    def aggregate(self, spec: SecureModelSpec,
                  shares: Iterable[tuple[str, object]]) -> RoundOutcome:
        """Check every share and multiply the valid ones into the encrypted sum.

        Parameters
        ----------
        spec : SecureModelSpec
            The round's spec (its layout is what every share must have).
        shares : Iterable of (str, object)
            ``(client id, payload)``; a payload must be a 1-D ``uint8`` array holding
            one client's encrypted share. Anything else is rejected with its reason.

        Returns
        -------
        RoundOutcome
            The encrypted sum of the accepted shares (``num_summands`` in its header),
            the accepted ids, and the rejected ones with reasons.
        """
        layout = spec.layout(self.public_key.n.bit_length() - 1)
        aggregator = CiphertextAggregator(self.public_key)
        outcome = RoundOutcome(encrypted_sum=None)
        for client_id, payload in shares:
            try:
                if not isinstance(payload, np.ndarray) or payload.dtype != np.uint8 \
                        or payload.ndim != 1:
                    raise ValueError(
                        "the share must be a 1-D uint8 array (a serialized encrypted "
                        f"vector), got {type(payload).__name__} "
                        f"{getattr(payload, 'dtype', '')} {getattr(payload, 'shape', '')}")
                aggregator.add(one_client_share(payload, self.public_key, layout, "model"))
                outcome.accepted.append(client_id)
            except (SecureSumError, ValueError) as error:
                outcome.rejected[client_id] = str(error)
        if outcome.accepted:
            outcome.encrypted_sum = aggregator.result().to_array()
        return outcome

    def record(self, server_round: int, **entry: object) -> dict:
        """Add to (or create) the history entry of ``server_round`` and return it."""
        for existing in self.history:
            if existing["round"] == server_round:
                for key, value in entry.items():
                    if key.startswith("bytes_") and key in existing:
                        existing[key] += value
                    else:
                        existing[key] = value
                return existing
        new = {"round": server_round, "bytes_down": 0, "bytes_down_evaluate": 0,
               "bytes_up": 0, **entry}
        self.history.append(new)
        return new


__all__ = ["ModelSumServer", "RoundOutcome"]
