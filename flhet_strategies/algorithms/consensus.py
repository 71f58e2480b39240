"""Logit consensus over a public proxy set, server half: FedMD and DS-FL (ERA, class votes).

FedMD: Li & Wang, 2019, https://arxiv.org/abs/1910.03581. DS-FL: Itahara et al., IEEE TMC
2021, https://arxiv.org/abs/2008.06180. Round ``t``: every sampled client gets the
consensus of round ``t-1`` and the proxy indices of round ``t``; it distills, trains,
and replies with its logits there. Flower-free; the client half is
``clients.algorithms.consensus``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .. import wire
from ..aggregation.logit_consensus import ConsensusConfig, entropy_reduction, logit_consensus, softmax
from ..aggregation.payload import ClientPayload, PayloadError, validate_payload
from ..aggregation.weighted_sum import SumLayout, SumTerm, WeightedSums
from ..protocol import Instruction, Outcome, Reply, ServerAlgorithm, client_sort_key, mean_metrics
from ..weighting.base import WeightFn, sample_count_weights, uniform_weights
from .recipes import DistillationRecipe

PROBABILITIES = "probabilities"
"""The weighted-sum term of a consensus: each client's ``softmax(logits / T)``."""


@dataclass(frozen=True)
class RoundPlan:
    """A consensus instruction's arrays, typed: what every sampled client receives.

    Parameters
    ----------
    server_round : int
        The round this plan is for (1-based).
    proxy_indices : np.ndarray
        int64 indices into the proxy set on which the client must return logits.
    consensus_indices : np.ndarray
        int64 indices of the proxy samples the consensus refers to (empty at first).
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
        return int(sum(a.nbytes for a in self.to_arrays().values()))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named arrays (the instruction's ``arrays``)."""
        return {wire.PROXY_INDICES: self.proxy_indices,
                wire.CONSENSUS_INDICES: self.consensus_indices,
                wire.CONSENSUS: self.consensus}

    @classmethod
    def from_arrays(cls, server_round: int, arrays: Mapping[str, np.ndarray]) -> "RoundPlan":
        """Rebuild a plan from :meth:`to_arrays`.

        Raises
        ------
        ValueError
            If an array is missing or the consensus does not match its indices.
        """
        missing = set(PLAN_ARRAY_KEYS) - set(arrays)
        if missing:
            raise ValueError(f"round plan is missing arrays: {sorted(missing)}")
        plan = cls(int(server_round),
                   np.asarray(arrays[wire.PROXY_INDICES], dtype=np.int64),
                   np.asarray(arrays[wire.CONSENSUS_INDICES], dtype=np.int64),
                   np.asarray(arrays[wire.CONSENSUS], dtype=np.float32))
        if plan.consensus.ndim != 2 or len(plan.consensus) != len(plan.consensus_indices):
            raise ValueError(f"consensus of shape {plan.consensus.shape} does not match "
                             f"{len(plan.consensus_indices)} consensus indices")
        return plan


PLAN_ARRAY_KEYS = (wire.PROXY_INDICES, wire.CONSENSUS_INDICES, wire.CONSENSUS)
"""The arrays of a consensus instruction."""


class ConsensusDistillation(ServerAlgorithm):
    """Server half of logit-consensus distillation over a public proxy set.

    Parameters
    ----------
    num_proxy : int
        Size of the public proxy set (indices ``0 .. num_proxy - 1``).
    num_classes : int
        Number of classes.
    proxy_per_round : int (default: 2000)
        Proxy samples drawn (fresh each round, seeded) per round; capped at ``num_proxy``.
    consensus : ConsensusConfig, optional
        The consensus rule (DS-FL with ERA and per-class votes by default).
    recipe : DistillationRecipe, optional
        The client recipe sent every round.
    weight_fn : WeightFn (default: sample_count_weights)
        Client weights; replace it for contribution-weighted or adaptive aggregation.
    seed : int (default: 0)
        Seed of the proxy-subset sampler.
    always_include : np.ndarray, optional
        Proxy indices requested every round (part of ``proxy_per_round``), e.g. the
        server's labeled validation slice for contribution estimates.
    min_margin : float or None (default: 2.0)
        For a noisy (differentially private) sum only: release a row only if its top
        class leads the runner-up by ``min_margin`` noise standard deviations of that
        difference (post-processing; PATE-style confident release).
    min_rows : int (default: 10)
        For a noisy sum only: release nothing when fewer rows pass ``min_margin``.
    """

    name = "consensus"
    reply_array_names = (wire.LOGITS, wire.CLASS_COUNTS)

    def __init__(self, num_proxy: int, num_classes: int, proxy_per_round: int = 2000,
                 consensus: ConsensusConfig | None = None,
                 recipe: DistillationRecipe | None = None,
                 weight_fn: WeightFn = sample_count_weights, seed: int = 0,
                 always_include: np.ndarray | None = None, min_margin: float | None = 2.0,
                 min_rows: int = 10) -> None:
        if num_proxy < 1:
            raise ValueError(f"num_proxy must be at least 1, got {num_proxy}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if proxy_per_round < 1:
            raise ValueError(f"proxy_per_round must be at least 1, got {proxy_per_round}")
        if min_margin is not None and not min_margin >= 0:
            raise ValueError(f"min_margin must be non-negative or None, got {min_margin!r}")
        if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 0:
            raise ValueError(f"min_rows must be a non-negative int, got {min_rows!r}")
        self.num_proxy = int(num_proxy)
        self.num_classes = int(num_classes)
        self.proxy_per_round = min(int(proxy_per_round), self.num_proxy)
        self.consensus_config = consensus or ConsensusConfig()
        self.recipe = recipe or DistillationRecipe()
        self.weight_fn = weight_fn
        self.seed = int(seed)
        self.min_margin = min_margin
        self.min_rows = int(min_rows)
        fixed = np.unique(np.asarray([] if always_include is None else always_include,
                                     dtype=np.int64))
        if fixed.size and (fixed.min() < 0 or fixed.max() >= self.num_proxy):
            raise ValueError(f"always_include indices must lie in [0, {self.num_proxy})")
        if fixed.size > self.proxy_per_round:
            raise ValueError(f"always_include has {fixed.size} indices, more than "
                             f"proxy_per_round ({self.proxy_per_round})")
        self.always_include = fixed
        self._consensus_indices = np.zeros(0, dtype=np.int64)
        self._consensus = np.zeros((0, self.num_classes), dtype=np.float32)

    def describe(self) -> list[str]:
        """The proxy sampling, the consensus rule and the client recipe."""
        return [f"Logit consensus: {self.num_proxy} proxy samples, {self.proxy_per_round} per "
                f"round", f"Consensus: {self.consensus_config}", f"Client recipe: {self.recipe}"]

    # ------------------------------------------------------------------ plan

    def proxy_indices(self, server_round: int) -> np.ndarray:
        """Proxy indices for a round: a seeded draw, reproducible per round."""
        rng = np.random.default_rng([self.seed, int(server_round)])
        if not self.always_include.size:
            idx = rng.choice(self.num_proxy, size=self.proxy_per_round, replace=False)
            return np.sort(idx).astype(np.int64)
        pool = np.setdiff1d(np.arange(self.num_proxy), self.always_include)
        extra = rng.choice(pool, size=self.proxy_per_round - self.always_include.size,
                           replace=False)
        return np.sort(np.concatenate([self.always_include, extra])).astype(np.int64)

    @property
    def consensus(self) -> tuple[np.ndarray, np.ndarray]:
        """The latest consensus as ``(indices, soft_targets)``."""
        return self._consensus_indices, self._consensus

    def plan(self, server_round: int) -> RoundPlan:
        """The plan every client sampled in ``server_round`` receives."""
        return RoundPlan(int(server_round), self.proxy_indices(server_round),
                         self._consensus_indices, self._consensus)

    def instructions(self, server_round: int, nodes: Sequence[str]) -> dict[str, Instruction]:
        """The same plan and recipe for every sampled node."""
        arrays, config = self.plan(server_round).to_arrays(), self.recipe.to_config()
        return {node: Instruction(dict(arrays), dict(config)) for node in nodes}

    # ------------------------------------------------------------------ aggregation

    def payload(self, reply: Reply) -> ClientPayload:
        """A reply as the payload weight functions see (unvalidated)."""
        return ClientPayload(reply.client_id,
                             reply.arrays.get(wire.LOGITS, np.zeros((0, 0), np.float32)),
                             reply.num_examples, reply.arrays.get(wire.CLASS_COUNTS))

    def validate(self, server_round: int, replies: Sequence[Reply]
                 ) -> tuple[list[ClientPayload], dict[str, str]]:
        """Split replies into valid payloads (sorted by client id) and rejected ones."""
        expected = len(self.proxy_indices(server_round))
        need_counts = self.consensus_config.class_vote_weighting
        valid, rejected = [], {}
        for reply in sorted(replies, key=lambda r: client_sort_key(r.client_id)):
            try:
                if wire.LOGITS not in reply.arrays:
                    raise PayloadError(f"the reply has no '{wire.LOGITS}' array; found "
                                       f"{sorted(reply.arrays)}")
                valid.append(validate_payload(self.payload(reply), expected, self.num_classes,
                                              need_counts))
            except PayloadError as err:
                rejected[str(reply.client_id)] = str(err)
        return valid, rejected

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """Validate, weight and combine the replies into the next consensus.

        If nothing valid arrived, the previous consensus stays (``released`` False).
        """
        valid, rejected = self.validate(server_round, replies)
        if not valid:
            return Outcome(rejected=rejected)
        indices = self.proxy_indices(server_round)
        weights = np.asarray(self.weight_fn(valid, server_round, indices), dtype=np.float64)
        if weights.shape != (len(valid),) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"weight_fn must return {len(valid)} non-negative weights, not "
                             f"all zero; got {weights}")
        counts = None
        if self.consensus_config.class_vote_weighting:
            counts = np.stack([p.class_counts for p in valid])
        self._consensus = logit_consensus(np.stack([p.logits for p in valid]), weights,
                                          self.consensus_config, counts)
        self._consensus_indices = indices
        accepted = [p.client_id for p in valid]
        norm = weights / weights.sum()
        return Outcome(accepted=accepted, rejected=rejected,
                       weights={c: float(w) for c, w in zip(accepted, norm)},
                       metrics=mean_metrics(replies, accepted, ("train_loss", "kd_loss")),
                       released=True)

    def result_arrays(self) -> dict[str, np.ndarray]:
        """The latest consensus and its proxy indices."""
        return {wire.CONSENSUS_INDICES: self._consensus_indices,
                wire.CONSENSUS: self._consensus}

    # ------------------------------------------------------------------ as a weighted sum

    broadcast_names = (wire.CONSENSUS_INDICES, wire.CONSENSUS)
    """Instruction arrays that carry the previous aggregate."""

    def sum_layout(self, server_round: int) -> SumLayout:
        """The round's weighted sum: DS-FL's per-class-vote mean of probabilities.

        Raises
        ------
        ValueError
            For FedMD (a mean of unbounded logits) or weights a client cannot compute
            itself (anything but sample counts or uniform weights).
        """
        config = self.consensus_config
        if config.mode != "dsfl":
            raise ValueError("a private or secure consensus needs the DS-FL consensus (a mean "
                             f"of probabilities), not mode {config.mode!r}")
        if self.weight_fn is sample_count_weights:
            weighting = "sample_count_class_counts" if config.class_vote_weighting \
                else "sample_count"
        elif self.weight_fn is uniform_weights:
            weighting = "class_counts" if config.class_vote_weighting else "uniform"
        else:
            raise ValueError("a private or secure consensus weights clients by their example "
                             "counts or equally; a weight_fn that needs the plaintext "
                             f"predictions ({type(self.weight_fn).__name__}) cannot be used")
        term = SumTerm(PROBABILITIES, (len(self.proxy_indices(server_round)), self.num_classes),
                       weight_axis=1, low=0.0, high=1.0)
        return SumLayout(self.name, (term,), weighting,
                         {"temperature": config.temperature,
                          "era_temperature": config.era_temperature,
                          "min_margin": self.min_margin, "min_rows": self.min_rows})

    def sum_context(self, server_round: int) -> dict[str, np.ndarray]:
        """The public arrays a round's sum refers to: its proxy indices."""
        return {wire.CONSENSUS_INDICES: self.proxy_indices(server_round)}

    def check_reply(self, server_round: int, reply: Reply) -> ClientPayload:
        """Validate one plaintext reply (raises :class:`PayloadError`)."""
        return validate_payload(self.payload(reply), len(self.proxy_indices(server_round)),
                                self.num_classes, False)

    def release(self, server_round: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Adopt a consensus finished outside (a private release)."""
        self._consensus_indices = np.asarray(arrays[wire.CONSENSUS_INDICES], dtype=np.int64)
        self._consensus = np.asarray(arrays[wire.CONSENSUS], dtype=np.float32)

    def state_dict(self) -> dict:
        """The latest consensus."""
        return {"consensus_indices": self._consensus_indices, "consensus": self._consensus}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`."""
        self.release(0, {wire.CONSENSUS_INDICES: state["consensus_indices"],
                         wire.CONSENSUS: state["consensus"]})


class ConsensusSumRule:
    """The consensus as a weighted sum, for both sides (privacy mods and wrappers)."""

    @staticmethod
    def terms(layout: SumLayout, arrays: Mapping[str, np.ndarray],
              metrics: Mapping[str, object]) -> dict[str, np.ndarray]:
        """A client's term: ``softmax(logits / T)`` of its reply (``ValueError`` if bad)."""
        term = layout.term(PROBABILITIES)
        if wire.LOGITS not in arrays:
            raise ValueError(f"the reply has no '{wire.LOGITS}' array; found {sorted(arrays)}")
        logits = np.asarray(arrays[wire.LOGITS])
        if logits.shape != term.shape or not np.issubdtype(logits.dtype, np.floating) \
                or not np.all(np.isfinite(logits)):
            raise ValueError(f"logits must be finite floats of shape {term.shape}, got "
                             f"{logits.dtype} {logits.shape}")
        return {PROBABILITIES: softmax(logits, float(layout.params.get("temperature", 1.0)))}

    @staticmethod
    def finish(layout: SumLayout, sums: WeightedSums, context: Mapping[str, np.ndarray],
               noise_std: float | None = None) -> dict[str, np.ndarray]:
        """The released consensus of a weighted sum (post-processing only).

        Per class, the vote-weighted mean of the probabilities (0 for a class no summed
        client holds); rows normalised; ERA. A noisy sum (``noise_std``, the noise std of
        one entry of the sum; the mean's is ``noise_std / count``) keeps only rows
        confident beyond the noise (``min_margin``, ``min_rows``) and clamps them onto the
        simplex first.
        """
        term = layout.term(PROBABILITIES)
        mean = np.nan_to_num(sums.mean(term), nan=0.0)
        indices = np.asarray(context[wire.CONSENSUS_INDICES], dtype=np.int64)
        era = layout.params.get("era_temperature")
        if noise_std is None:
            rows = mean.sum(axis=1, keepdims=True)
            target = np.divide(mean, rows, out=np.full(mean.shape, 1.0 / mean.shape[1]),
                               where=rows > 0)
            keep = np.ones(len(mean), dtype=bool)
        else:
            from ..privacy.dp.postprocess import noisy_rows_to_probabilities

            keep = confident_rows(mean, float(noise_std) / max(int(sums.count), 1),
                                  layout.params.get("min_margin"),
                                  int(layout.params.get("min_rows", 0)))
            target = noisy_rows_to_probabilities(mean[keep])
        if era is not None and len(target):
            target = entropy_reduction(target, float(era))
        return {wire.CONSENSUS_INDICES: indices[keep], wire.CONSENSUS: target.astype(np.float32)}

    @staticmethod
    def released(arrays: Mapping[str, np.ndarray]) -> int:
        """Rows of a finished consensus."""
        return int(len(arrays[wire.CONSENSUS]))


def confident_rows(noisy_mean: np.ndarray, entry_std: float, min_margin: float | None,
                   min_rows: int) -> np.ndarray:
    """Mask of rows whose top-1 beats the top-2 by ``min_margin`` noise stds of that gap
    (``sqrt(2) * entry_std``); none if fewer than ``min_rows`` do."""
    if min_margin is None or noisy_mean.shape[1] < 2:
        return np.ones(len(noisy_mean), dtype=bool)
    top2 = np.sort(noisy_mean, axis=1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) > float(min_margin) * np.sqrt(2.0) * entry_std
    if keep.sum() < min(int(min_rows), len(keep)):
        keep[:] = False
    return keep


SUM_RULE = ConsensusSumRule()

__all__ = ["ConsensusDistillation", "ConsensusSumRule", "PLAN_ARRAY_KEYS", "PROBABILITIES",
           "RoundPlan", "SUM_RULE", "confident_rows"]
