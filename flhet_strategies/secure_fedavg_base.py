"""Round steps shared by both faces of the Paillier secure FedAvg.

:class:`SecureFedAvgRounds` is mixed into
:class:`~flhet_strategies.secure_fedavg.SecureFedAvg` (Message API) and
:class:`~flhet_strategies.secure_fedavg_compat.SecureFedAvgCompat` (compat API): the
public-key-only :class:`~flhet_strategies.core.secure_sum.model_server.ModelSumServer`,
the per-round specs, the share products with their log lines and the history. Each face
only translates between its Flower objects and ``(client id, payload)`` shares.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from logging import INFO, WARNING

import numpy as np
from flwr.common.logger import log
from phe import PaillierPublicKey

from .core.secure_sum.model_server import ModelSumServer, RoundOutcome
from .core.secure_sum.model_updates import SecureModelSpec


class SecureFedAvgRounds:
    """Server state and round bookkeeping of a secure FedAvg (a mixin).

    The faces inherit ``__init__`` (parameters documented on each face) and set the
    class attributes below; every round they call :meth:`_open_round` when configuring,
    and :meth:`_round_spec`, :meth:`_sum_shares` and :meth:`_close_round` when
    aggregating.

    Class attributes: ``inner_type`` (the FedAvg class of the face's API),
    ``aggregate_method`` (its aggregation method, which the inner strategy must not
    override), ``api`` (the module path of the face's strategies), ``other_api`` and
    ``other_face`` (the other face, named when a strategy of the wrong API is given).

    Attributes
    ----------
    strategy : object
        The inner FedAvg (of the face's API).
    server : ModelSumServer
        The public-key-only secure-sum server.
    """

    inner_type: type = object
    aggregate_method = ""
    api = ""
    other_api = ""
    other_face = ""

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        strategy: object,
        public_key: PaillierPublicKey,
        *,
        clip_bound: float,
        bits: int = 16,
        weighting: str = "sample_count",
        max_examples: int | None = None,
        vote_bits: int = 16,
    ) -> None:
        super().__init__()
        face = type(self).__name__
        if not isinstance(strategy, self.inner_type):
            raise TypeError(
                f"{face} wraps a {self.api}.FedAvg, got {type(strategy).__name__}; for "
                f"{self.other_api}.FedAvg use {self.other_face}")
        if getattr(type(strategy), self.aggregate_method) is not getattr(
                self.inner_type, self.aggregate_method):
            raise TypeError(
                f"{type(strategy).__name__} overrides FedAvg's aggregation; a secure sum "
                "computes FedAvg's weighted mean only")
        self.strategy = strategy
        self.server = ModelSumServer(public_key, clip_bound=clip_bound, bits=bits,
                                     weighting=weighting, max_examples=max_examples,
                                     vote_bits=vote_bits)
        self._specs: dict[int, SecureModelSpec] = {}
        self._encrypted: object | None = None   # the held encrypted model, in the face's type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.strategy!r}, key={self.server.fingerprint})"

    @property
    def public_key(self) -> PaillierPublicKey:
        """The public key shares are encrypted under."""
        return self.server.public_key

    @property
    def history(self) -> list[dict]:
        """Per round: ``bytes_down`` / ``bytes_down_evaluate`` / ``bytes_up``, ``accepted`` and
        ``rejected`` client ids, ``num_failures``, ``num_ciphertexts``, ``seconds_aggregate``."""
        return self.server.history

    def spec(self, max_summands: int = 1) -> SecureModelSpec:
        """The spec of a round of ``max_summands`` clients (once the initial model is known)."""
        return self.server.spec(max_summands)

    def _log_settings(self, title: str) -> None:
        """Log ``title`` and the secure-sum settings (key, clip bound, bits, weighting)."""
        settings = self.server.settings
        log(INFO, "%s: key %s, clip bound %s, %s-bit values, %s weights", title,
            self.server.fingerprint, settings["clip_bound"], settings["bits"],
            settings["weighting"])

    def _open_round(self, server_round: int, cohort: int, bytes_each: int,
                    initial_model: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None
                    ) -> SecureModelSpec:
        """The spec of a train round of ``cohort`` clients, checked and remembered.

        ``initial_model`` is the plaintext model the round sends (round 1), checked
        against the spec, or None when the round sends the encrypted sum.
        """
        spec = self.server.spec(cohort)
        if initial_model is not None:
            spec.check_arrays(initial_model)   # the public initial model
        self._specs[server_round] = spec
        self.server.record(server_round, bytes_down=bytes_each * cohort, cohort=cohort)
        return spec

    def _round_spec(self, server_round: int, num_replies: int) -> SecureModelSpec:
        """The spec :meth:`_open_round` sent for ``server_round`` (rebuilt if unknown)."""
        return self._specs.pop(server_round, None) or self.server.spec(max(1, num_replies))

    def _sum_shares(self, server_round: int, spec: SecureModelSpec,
                    shares: list[tuple[str, object]], rejected: dict[str, str],
                    who: str) -> RoundOutcome:
        """Multiply the valid shares; log every rejection (``rejected`` gains the core's).

        ``shares`` must be in a fixed order (sorted by client id) so that the sum does
        not depend on the order replies arrived in; ``who`` names a client in the log
        (``"node"`` or ``"client"``).
        """
        outcome = self.server.aggregate(spec, shares)
        rejected.update(outcome.rejected)
        for client_id, reason in sorted(rejected.items()):
            log(WARNING, "round %s: share of %s %s rejected: %s", server_round, who, client_id,
                reason)
        return outcome

    # pylint: disable=too-many-arguments
    def _close_round(self, server_round: int, spec: SecureModelSpec, outcome: RoundOutcome,
                     rejected: dict[str, str], *, bytes_up: int, num_failures: int,
                     started: float) -> np.ndarray | None:
        """Record the round in the history; the encrypted sum, or None (logged) if empty."""
        self.server.record(
            server_round, bytes_up=bytes_up, accepted=outcome.accepted, rejected=rejected,
            num_failures=num_failures,
            num_ciphertexts=spec.layout(self.public_key.n.bit_length() - 1).num_ciphertexts,
            seconds_aggregate=time.perf_counter() - started)
        if outcome.encrypted_sum is None:
            log(WARNING, "round %s: no share accepted; the global model stays", server_round)
        return outcome.encrypted_sum


__all__ = ["SecureFedAvgRounds"]
