"""The logit-consensus distillation protocol, independent of any Flower API.

Round ``t`` of the protocol:

1. The server sends each sampled client a :class:`RoundPlan`: the consensus soft
   targets computed in round ``t-1`` (on the proxy indices of round ``t-1``) and the
   proxy indices ``I_t`` it wants predictions on now.
2. The client distills on the consensus and trains on its private data (however its
   learner likes), then replies with its logits on ``I_t``.
3. The server validates the replies, weights them, and forms the new consensus on
   ``I_t``, which goes out with the next plan.

Only indices into the public proxy set and soft targets travel; the proxy inputs
themselves are public and already on every client. Both Flower faces of flhet
(Message API and compat API) are thin shells around :class:`ConsensusDistillation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .consensus import ConsensusConfig, logit_consensus
from .dp.private_consensus import PrivateConsensus
from .payload import ClientPayload, PayloadError, client_sort_key, validate_payload
from .weighting import WeightFn, sample_count_weights


@dataclass(frozen=True)
class RoundPlan:
    """What the server sends every sampled client in one round.

    Parameters
    ----------
    server_round : int
        The round this plan is for (1-based).
    proxy_indices : np.ndarray
        int64 indices into the proxy set on which the client must return logits.
    consensus_indices : np.ndarray
        int64 indices of the proxy samples the consensus below refers to (empty in
        the first round).
    consensus : np.ndarray
        float32 soft targets, ``(len(consensus_indices), num_classes)``.
    """

    server_round: int
    proxy_indices: np.ndarray
    consensus_indices: np.ndarray
    consensus: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes of array data in the plan (what one client downloads)."""
        return int(
            self.proxy_indices.nbytes + self.consensus_indices.nbytes + self.consensus.nbytes
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named arrays for a Flower record (the wire format of both API faces)."""
        return {
            "proxy_indices": self.proxy_indices,
            "consensus_indices": self.consensus_indices,
            "consensus": self.consensus,
        }

    @classmethod
    def from_arrays(cls, server_round: int, arrays: dict[str, np.ndarray]) -> "RoundPlan":
        """Rebuild a plan from the named arrays of :meth:`to_arrays`.

        Raises
        ------
        ValueError
            If an array is missing or the consensus does not match its indices.
        """
        missing = {"proxy_indices", "consensus_indices", "consensus"} - set(arrays)
        if missing:
            raise ValueError(f"round plan is missing arrays: {sorted(missing)}")
        plan = cls(
            server_round=int(server_round),
            proxy_indices=np.asarray(arrays["proxy_indices"], dtype=np.int64),
            consensus_indices=np.asarray(arrays["consensus_indices"], dtype=np.int64),
            consensus=np.asarray(arrays["consensus"], dtype=np.float32),
        )
        if plan.consensus.ndim != 2 or len(plan.consensus) != len(plan.consensus_indices):
            raise ValueError(
                f"consensus of shape {plan.consensus.shape} does not match "
                f"{len(plan.consensus_indices)} consensus indices"
            )
        return plan


PLAN_ARRAY_KEYS = ("proxy_indices", "consensus_indices", "consensus")
"""Order of the plan's arrays where a Flower API needs a list (compat ``Parameters``)."""


@dataclass
class AggregationOutcome:
    """Result of aggregating one round of client payloads.

    Parameters
    ----------
    consensus : np.ndarray or None
        The new soft targets on the round's proxy indices, ``None`` if no payload
        was accepted.
    accepted : list[str]
        Client ids whose payloads entered the consensus.
    rejected : dict[str, str]
        Client id -> reason, for payloads that failed validation.
    weights : dict[str, float]
        Normalised aggregation weight of each accepted client.
    bytes_up : int
        Array bytes received from the accepted and rejected payloads.
    noise_multiplier : float or None
        With differential privacy: the noise multiplier ``z`` the released consensus
        really carries (for the accountant); ``None`` without.
    """

    consensus: np.ndarray | None
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    noise_multiplier: float | None = None


class ConsensusDistillation:
    """Server-side state of logit-consensus distillation over a public proxy set.

    Parameters
    ----------
    num_proxy : int
        Size of the public proxy set (indices ``0 .. num_proxy - 1``).
    num_classes : int
        Number of classes.
    proxy_per_round : int (default: 2000)
        Proxy samples drawn (without replacement, fresh each round) per round;
        capped at ``num_proxy``.
    consensus : ConsensusConfig, optional
        The consensus rule (DS-FL with ERA and per-class votes by default).
    weight_fn : WeightFn (default: sample_count_weights)
        Client weights; replace it for contribution-weighted aggregation.
    seed : int (default: 0)
        Seed of the proxy-subset sampler.
    always_include : np.ndarray, optional
        Proxy indices requested in every round on top of the random subset, e.g. the
        server's labeled validation slice, so that contribution estimates can score
        every round's predictions. They count towards ``proxy_per_round``.
    privacy : PrivateConsensus, optional
        Client-level differential privacy of the released consensus (DS-FL without
        per-class votes only). Clients are then weighted equally and ``weight_fn``
        is not called: a data-dependent weight would change the sensitivity.
    """

    def __init__(
        self,
        num_proxy: int,
        num_classes: int,
        proxy_per_round: int = 2000,
        consensus: ConsensusConfig | None = None,
        weight_fn: WeightFn = sample_count_weights,
        seed: int = 0,
        always_include: np.ndarray | None = None,
        privacy: PrivateConsensus | None = None,
    ) -> None:
        if num_proxy < 1:
            raise ValueError(f"num_proxy must be at least 1, got {num_proxy}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if proxy_per_round < 1:
            raise ValueError(f"proxy_per_round must be at least 1, got {proxy_per_round}")
        self.num_proxy = int(num_proxy)
        self.num_classes = int(num_classes)
        self.proxy_per_round = min(int(proxy_per_round), self.num_proxy)
        self.consensus_config = consensus or ConsensusConfig()
        self.weight_fn = weight_fn
        self.privacy = privacy
        if privacy is not None:
            privacy.check_consensus(self.consensus_config)
        self.seed = int(seed)
        fixed = np.unique(np.asarray([] if always_include is None else always_include, dtype=np.int64))
        if fixed.size and (fixed.min() < 0 or fixed.max() >= self.num_proxy):
            raise ValueError(f"always_include indices must lie in [0, {self.num_proxy})")
        if fixed.size > self.proxy_per_round:
            raise ValueError(
                f"always_include has {fixed.size} indices, more than proxy_per_round "
                f"({self.proxy_per_round})"
            )
        self.always_include = fixed
        self._consensus_indices = np.zeros(0, dtype=np.int64)
        self._consensus = np.zeros((0, self.num_classes), dtype=np.float32)

    def proxy_indices(self, server_round: int) -> np.ndarray:
        """Proxy indices for a round: a seeded draw, reproducible per round."""
        rng = np.random.default_rng([self.seed, int(server_round)])
        if not self.always_include.size:
            idx = rng.choice(self.num_proxy, size=self.proxy_per_round, replace=False)
            return np.sort(idx).astype(np.int64)
        pool = np.setdiff1d(np.arange(self.num_proxy), self.always_include)
        extra = rng.choice(pool, size=self.proxy_per_round - self.always_include.size, replace=False)
        return np.sort(np.concatenate([self.always_include, extra])).astype(np.int64)

    @property
    def consensus(self) -> tuple[np.ndarray, np.ndarray]:
        """The latest consensus as ``(indices, soft_targets)``."""
        return self._consensus_indices, self._consensus

    def plan(self, server_round: int) -> RoundPlan:
        """Build the plan sent to every client sampled in ``server_round``."""
        return RoundPlan(
            server_round=int(server_round),
            proxy_indices=self.proxy_indices(server_round),
            consensus_indices=self._consensus_indices,
            consensus=self._consensus,
        )

    def validate(
        self, server_round: int, payloads: Sequence[ClientPayload]
    ) -> tuple[list[ClientPayload], dict[str, str]]:
        """Split payloads into valid ones (sorted by client id) and rejected ones."""
        expected = len(self.proxy_indices(server_round))
        need_counts = self.consensus_config.class_vote_weighting
        valid, rejected = [], {}
        for payload in sorted(payloads, key=lambda p: client_sort_key(p.client_id)):
            try:
                valid.append(validate_payload(payload, expected, self.num_classes, need_counts))
            except PayloadError as err:
                rejected[str(payload.client_id)] = str(err)
        return valid, rejected

    def aggregate(
        self, server_round: int, payloads: Sequence[ClientPayload],
        num_expected: int | None = None,
    ) -> AggregationOutcome:
        """Validate, weight and combine the round's payloads into a new consensus.

        Parameters
        ----------
        server_round : int
            The round the payloads answer.
        payloads : Sequence[ClientPayload]
            Untrusted client replies.
        num_expected : int, optional
            Clients sampled this round; with distributed DP, the cohort size the
            clients split the noise for (default: the number of valid payloads).

        Returns
        -------
        AggregationOutcome
            The new consensus (also stored for the next plan), who was accepted or
            rejected and why, and the weights used. If nothing valid arrived, the
            previous consensus is kept and ``consensus`` is ``None``.
        """
        bytes_up = sum(_safe_nbytes(p) for p in payloads)
        valid, rejected = self.validate(server_round, payloads)
        if not valid:
            return AggregationOutcome(consensus=None, rejected=rejected, bytes_up=bytes_up)
        indices = self.proxy_indices(server_round)
        if self.privacy is not None:
            return self._aggregate_private(server_round, indices, valid, rejected, bytes_up,
                                           num_expected)
        weights = np.asarray(self.weight_fn(valid, server_round, indices), dtype=np.float64)
        if weights.shape != (len(valid),) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(
                f"weight_fn must return {len(valid)} non-negative weights, not all zero; "
                f"got {weights}"
            )
        counts = None
        if self.consensus_config.class_vote_weighting:
            counts = np.stack([p.class_counts for p in valid])
        consensus = logit_consensus(
            np.stack([p.logits for p in valid]), weights, self.consensus_config, counts
        )
        self._consensus_indices = indices
        self._consensus = consensus
        norm = weights / weights.sum()
        return AggregationOutcome(
            consensus=consensus,
            accepted=[p.client_id for p in valid],
            rejected=rejected,
            weights={p.client_id: float(w) for p, w in zip(valid, norm)},
            bytes_up=bytes_up,
        )

    def _aggregate_private(self, server_round: int, indices: np.ndarray,
                           valid: list[ClientPayload], rejected: dict[str, str],
                           bytes_up: int, num_expected: int | None) -> AggregationOutcome:
        consensus, realized, keep = self.privacy.combine(
            [p.logits for p in valid], self.consensus_config, server_round, num_expected)
        self._consensus_indices = indices[keep]
        self._consensus = consensus
        return AggregationOutcome(
            consensus=consensus,
            accepted=[p.client_id for p in valid],
            rejected=rejected,
            weights={p.client_id: 1.0 / len(valid) for p in valid},
            bytes_up=bytes_up,
            noise_multiplier=realized,
        )


def _safe_nbytes(payload: ClientPayload) -> int:
    try:
        return payload.nbytes
    except Exception:  # noqa: BLE001 - a malformed payload still counts as traffic
        return 0
