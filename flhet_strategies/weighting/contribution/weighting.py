"""Contribution-weighted aggregation: Shapley values as client weights.

:class:`ContributionWeighting` is a :data:`~flhet_strategies.weighting.base.WeightFn`
for the logit consensus: every round it values the participants by Shapley values on
the server's labeled validation slice and mixes their discounted cumulative values
with sample counts. See docs/contribution.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, softmax
from flhet_strategies.weighting.contribution.auto import ESTIMATOR_NAMES, estimate_shapley
from flhet_strategies.weighting.contribution.ledger import ContributionLedger
from flhet_strategies.weighting.contribution.logit_utility import LogitConsensusUtility
from flhet_strategies.aggregation.payload import ClientPayload

__all__ = ["ContributionWeighting", "mix_weights"]

_METRICS = ("accuracy", "neg_log_loss")


def mix_weights(scores: np.ndarray, sample_counts: np.ndarray, mix: float) -> np.ndarray:
    """Mix clipped contribution scores with sample counts into normalised weights.

    Parameters
    ----------
    scores : np.ndarray
        Contribution scores ``(n,)``; negative ones count as zero.
    sample_counts : np.ndarray
        Positive training-set sizes ``(n,)``.
    mix : float
        Share of the contribution part, in ``[0, 1]``.

    Returns
    -------
    np.ndarray
        Non-negative weights ``(n,)`` that sum to one:
        ``mix * clip(s, 0) / sum(clip(s, 0)) + (1 - mix) * n / sum(n)``, or
        ``n / sum(n)`` when no score is positive.

    Examples
    --------
    >>> mix_weights(np.array([0.3, -0.1, 0.1]), np.array([1.0, 1.0, 2.0]), 0.5)
    array([0.5  , 0.125, 0.375])
    """
    scores = np.asarray(scores, dtype=np.float64)
    counts = np.asarray(sample_counts, dtype=np.float64)
    if scores.shape != counts.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and sample_counts {counts.shape} must be (n,)")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores must be finite, got {scores}")
    if not np.all(np.isfinite(counts)) or np.any(counts <= 0):
        raise ValueError(f"sample_counts must be positive and finite, got {counts}")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must lie in [0, 1], got {mix}")
    by_count = counts / counts.sum()
    clipped = np.clip(scores, 0.0, None)
    if clipped.sum() <= 0.0:
        return by_count
    return mix * (clipped / clipped.sum()) + (1.0 - mix) * by_count   # no denormal underflow


class ContributionWeighting:
    """Shapley-value client weights on a labeled validation slice of the proxy set.

    A :data:`~flhet_strategies.weighting.base.WeightFn`: called with a round's
    validated payloads, the round number and the round's proxy indices, it

    1. finds the validation samples among the round's proxy indices (rows of the
       payloads' logits) and takes each client's class probabilities there,
       ``softmax(logits / consensus.temperature)``;
    2. builds the :class:`LogitConsensusUtility` of the strategy's consensus rule
       (client weights = sample counts, per-class votes from the clients' label
       histograms when ``consensus.class_vote_weighting`` is on): ``v(S)`` is the
       accuracy (or negative log loss) of coalition ``S``'s consensus;
    3. estimates the participants' Shapley values (``method``, ``budget``) and
       records them in :attr:`ledger`;
    4. returns :func:`mix_weights` of the clients' discounted cumulative values
       (see docs/contribution.md), or the sample counts when ``use_for_weights`` is
       False (audit only: values are recorded, aggregation is unchanged).

    The utility averages probabilities, as the ``"dsfl"`` consensus does; DS-FL's
    entropy reduction keeps every sample's arg-max, so accuracy values are exact
    for it. For ``"fedmd"`` (mean logits) the game is an approximation.

    Parameters
    ----------
    validation_indices : np.ndarray
        Proxy-set indices of the labeled validation slice (unique, ``>= 0``).
    validation_labels : np.ndarray
        Their labels, in the same order.
    consensus : ConsensusConfig, optional
        The strategy's consensus rule (its temperature and class-vote setting).
    method : str (default: "auto")
        Shapley estimator, one of
        :data:`~flhet_strategies.weighting.contribution.auto.ESTIMATOR_NAMES`; ``"auto"``
        is exact while ``2**n <= budget`` (10 clients: 1,024 coalitions).
    budget : int (default: 2000)
        Utility evaluations per round for sampling estimators.
    mix : float (default: 1.0)
        Share of the contribution part of the weights, in ``[0, 1]``; 0 gives
        sample-count weights.
    use_for_weights : bool (default: True)
        False: audit only (record contributions, weight by sample counts).
    decay : float (default: 0.5)
        Discount of older rounds in the score, in ``[0, 1]`` (docs/contribution.md).
    metric : {"accuracy", "neg_log_loss"} (default: "accuracy")
        The coalition utility.
    seed : int (default: 0)
        Seed of sampling estimators; round ``t`` uses ``(seed, t)``.
    estimator_options : dict, optional
        Passed to the estimator's constructor (e.g. ``truncation_tol`` for
        ``"gtg"``).

    Attributes
    ----------
    ledger : ContributionLedger
        Per-round and cumulative Shapley values of the participants.
    skipped_rounds : list[int]
        Rounds in which no validation sample was among the proxy indices (no
        values recorded; sample-count weights used).
    """

    def __init__(
        self,
        validation_indices: np.ndarray,
        validation_labels: np.ndarray,
        *,
        consensus: ConsensusConfig | None = None,
        method: str = "auto",
        budget: int = 2000,
        mix: float = 1.0,
        use_for_weights: bool = True,
        decay: float = 0.5,
        metric: str = "accuracy",
        seed: int = 0,
        estimator_options: dict[str, Any] | None = None,
    ) -> None:
        indices = np.asarray(validation_indices)
        labels = np.asarray(validation_labels)
        if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError("validation_indices must be a non-empty 1-D integer array")
        if indices.min() < 0 or np.unique(indices).size != indices.size:
            raise ValueError("validation_indices must be unique and non-negative")
        if labels.shape != indices.shape or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"validation_labels must be {indices.size} integers, got shape {labels.shape} "
                f"and dtype {labels.dtype}"
            )
        if labels.min() < 0:
            raise ValueError("validation_labels must be non-negative")
        if method not in ESTIMATOR_NAMES:
            raise ValueError(f"method must be one of {ESTIMATOR_NAMES}, got {method!r}")
        if int(budget) < 1:
            raise ValueError(f"budget must be at least 1, got {budget}")
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must lie in [0, 1], got {mix}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay}")
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        order = np.argsort(indices)
        self._sorted_indices = indices[order].astype(np.int64)
        self._sorted_labels = labels[order].astype(np.int64)
        self.consensus = consensus or ConsensusConfig()
        self.method = method
        self.budget = int(budget)
        self.mix = float(mix)
        self.use_for_weights = bool(use_for_weights)
        self.decay = float(decay)
        self.metric = metric
        self.seed = int(seed)
        self.estimator_options = dict(estimator_options or {})
        self.ledger = ContributionLedger()
        self.skipped_rounds: list[int] = []

    def __call__(
        self, payloads: Sequence[ClientPayload], server_round: int, proxy_indices: np.ndarray
    ) -> np.ndarray:
        """Value the round's participants and return their aggregation weights.

        Parameters
        ----------
        payloads : Sequence[ClientPayload]
            The round's validated payloads (logits on ``proxy_indices``).
        server_round : int
            The round.
        proxy_indices : np.ndarray
            Proxy index of each row of the payloads' logits.

        Returns
        -------
        np.ndarray
            One non-negative weight per payload, summing to one.
        """
        counts = np.array([p.num_examples for p in payloads], dtype=np.float64)
        rows, labels = self._validation_rows(np.asarray(proxy_indices, dtype=np.int64))
        if rows.size == 0:
            self.skipped_rounds.append(int(server_round))
            return counts / counts.sum()
        start = time.perf_counter()
        result = estimate_shapley(
            self._utility(payloads, rows, labels).as_utility(),
            self.method,
            budget=self.budget,
            rng=np.random.default_rng([self.seed, int(server_round)]),
            **self.estimator_options,
        )
        ids = [str(p.client_id) for p in payloads]
        self.ledger.record(server_round, ids, result, time.perf_counter() - start)
        if not self.use_for_weights:
            return counts / counts.sum()
        scores = self.ledger.discounted_total(self.decay)
        return mix_weights(np.array([scores[c] for c in ids]), counts, self.mix)

    def _validation_rows(self, proxy_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the round's logits that hold validation samples, and their labels."""
        order = np.argsort(proxy_indices, kind="stable")
        ordered = proxy_indices[order]
        position = np.searchsorted(ordered, self._sorted_indices)
        found = position < ordered.size
        found[found] = ordered[position[found]] == self._sorted_indices[found]
        return order[position[found]], self._sorted_labels[found]

    def _utility(
        self, payloads: Sequence[ClientPayload], rows: np.ndarray, labels: np.ndarray
    ) -> LogitConsensusUtility:
        """The round's logit-consensus game on the validation rows."""
        logits = np.stack([np.asarray(p.logits)[rows] for p in payloads])
        probabilities = softmax(logits, temperature=self.consensus.temperature)
        class_counts = None
        if self.consensus.class_vote_weighting:
            class_counts = np.stack([p.class_counts for p in payloads])
        weights = np.array([p.num_examples for p in payloads], dtype=np.float64)
        return LogitConsensusUtility(
            probabilities, labels, weights, class_counts, metric=self.metric
        )
