"""Robust aggregation of any weighted-sum algorithm: weighted median or trimmed mean.

Per coordinate, over the clients, with each client's weight for that coordinate (its
example count, or its count of the coordinate's class): the weighted median
(Yin et al., ICML'18, https://arxiv.org/abs/1803.01498, coordinate-wise, weighted) or the
weighted trimmed mean. Returned as :class:`WeightedSums` (``estimate * sum w, sum w``) so
the algorithm's own finishing rule applies unchanged. ``docs/robust_aggregation.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import wire
from ..algorithms import sum_rule
from ..protocol import (
    Outcome,
    Reply,
    ServerAlgorithm,
    ServerAlgorithmWrapper,
    client_sort_key,
    mean_metrics,
)
from .payload import PayloadError
from .weighted_sum import SumLayout, WeightedSums, client_weights

ROBUST_RULES = ("median", "trimmed_mean")
"""Coordinate-wise rules :func:`robust_sums` knows."""


def robust_sums(layout: SumLayout,
                contributions: Sequence[tuple[Mapping[str, np.ndarray],
                                              Mapping[str, np.ndarray]]],
                rule: str = "median", trim: float = 0.2) -> WeightedSums:
    """Per-coordinate robust estimates of ``contributions``, as weighted sums.

    Parameters
    ----------
    layout : SumLayout
        The terms.
    contributions : sequence of (values, weights)
        As for :func:`~flhet_strategies.aggregation.weighted_sum.weighted_sums`.
    rule : str (default: "median")
        ``"median"``: the weighted (lower) median; ``"trimmed_mean"``: the weighted mean
        after removing ``trim`` of the coordinate's total weight from each tail.
    trim : float (default: 0.2)
        Share of the weight trimmed from each tail, in ``[0, 0.5)``.
    """
    _check(rule, trim)
    nums, dens = {}, {}
    for term in layout.terms:
        values = np.stack([np.asarray(v[term.name], dtype=np.float64).reshape(term.shape)
                           for v, _ in contributions]) if contributions else \
            np.zeros((0, *term.shape))
        weights = np.stack([np.broadcast_to(term.broadcast(w[term.name]), term.shape)
                            for _, w in contributions]) if contributions else values
        total = weights.sum(axis=0)
        estimate = _weighted_median(values, weights) if rule == "median" else \
            _trimmed_mean(values, weights, trim)
        nums[term.name] = np.where(total > 0, estimate * total, 0.0)
        dens[term.name] = np.asarray(np.zeros(term.weight_size) if not contributions else
                                     sum(np.asarray(w[term.name], dtype=np.float64)
                                         .reshape(term.weight_size) for _, w in contributions))
    return WeightedSums(nums, dens, len(contributions))


def _check(rule: str, trim: float) -> None:
    if rule not in ROBUST_RULES:
        raise ValueError(f"rule must be one of {ROBUST_RULES}, got {rule!r}")
    if isinstance(trim, bool) or not isinstance(trim, (int, float)) or not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim!r}")


def _sorted(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(values, axis=0, kind="stable")
    return np.take_along_axis(values, order, 0), np.take_along_axis(weights, order, 0)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The smallest value whose cumulative weight reaches half the total (0 if no weight)."""
    if not len(values):
        return np.zeros(values.shape[1:])
    v, w = _sorted(values, weights)
    cum = np.cumsum(w, axis=0)
    half = 0.5 * cum[-1]
    index = np.argmax(cum >= half - 1e-12 * np.abs(half), axis=0)
    return np.where(cum[-1] > 0, np.take_along_axis(v, index[None], 0)[0], 0.0)


def _trimmed_mean(values: np.ndarray, weights: np.ndarray, trim: float) -> np.ndarray:
    """Mean of the weight between ``trim`` and ``1 - trim`` of each coordinate's total."""
    if not len(values):
        return np.zeros(values.shape[1:])
    v, w = _sorted(values, weights)
    upper = np.cumsum(w, axis=0)
    lower = upper - w
    total = upper[-1]
    kept = np.clip(np.minimum(upper, (1 - trim) * total) - np.maximum(lower, trim * total),
                   0.0, None)
    mass = kept.sum(axis=0)
    out = np.zeros(values.shape[1:])
    np.divide((kept * v).sum(axis=0), mass, out=out, where=mass > 0)
    return out


class RobustAggregation(ServerAlgorithmWrapper):
    """A weighted-sum server half aggregated by a robust coordinate-wise rule.

    Each valid reply's terms and weights (the algorithm's own layout) are combined by
    :func:`robust_sums` instead of the weighted sum; the algorithm finishes the result
    as usual (consensus: normalise and sharpen; prototypes: per-class means).

    Parameters
    ----------
    inner : ServerAlgorithm
        A server half whose aggregation is a weighted sum (consensus, FedProto, ...).
    rule : str (default: "median")
        One of :data:`ROBUST_RULES`.
    trim : float (default: 0.2)
        Tail share of the trimmed mean.
    """

    def __init__(self, inner: ServerAlgorithm, rule: str = "median", trim: float = 0.2) -> None:
        super().__init__(inner)
        for method in ("sum_layout", "sum_context", "check_reply", "release"):
            if not callable(getattr(self.innermost, method, None)):
                raise TypeError(f"{type(self.innermost).__name__} does not aggregate by a "
                                "weighted sum; robust rules need one")
        _check(rule, trim)
        self.rule, self.trim = rule, float(trim)

    def describe(self) -> list[str]:
        """The rule, then the inner lines."""
        how = "weighted median" if self.rule == "median" else f"trimmed mean ({self.trim:g})"
        return [f"Robust aggregation: coordinate-wise {how}"] + self.inner.describe()

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """Validate the replies, combine them robustly, let the algorithm finish."""
        core = self.innermost
        layout = core.sum_layout(server_round)
        rule = sum_rule(layout.algorithm)
        contributions, accepted, rejected, shares = [], [], {}, {}
        for reply in sorted(replies, key=lambda r: client_sort_key(r.client_id)):
            try:
                core.check_reply(server_round, reply)
                values = rule.terms(layout, reply.arrays, reply.metrics)
                weights = {t.name: client_weights(layout, t, reply.arrays.get(wire.CLASS_COUNTS),
                                                  reply.num_examples) for t in layout.terms}
            except (PayloadError, ValueError) as error:
                rejected[reply.client_id] = str(error)
                continue
            contributions.append((values, weights))
            accepted.append(reply.client_id)
            shares[reply.client_id] = float(sum(np.sum(w) for w in weights.values()))
        if not accepted:
            return Outcome(rejected=rejected)
        sums = robust_sums(layout, contributions, self.rule, self.trim)
        core.release(server_round, rule.finish(layout, sums, core.sum_context(server_round)))
        total = sum(shares.values()) or 1.0
        return Outcome(accepted=accepted, rejected=rejected,
                       weights={c: s / total for c, s in shares.items()},
                       metrics=mean_metrics(replies, accepted, ("train_loss", "kd_loss",
                                                                "aux_loss")),
                       released=True, history={"robust_rule": self.rule})


__all__ = ["ROBUST_RULES", "RobustAggregation", "robust_sums"]
