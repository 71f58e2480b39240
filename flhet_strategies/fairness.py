"""Fairness of a federation's outcome across clients (pure numpy).

:func:`accuracy_fairness` (spread, minimum, worst-10% mean, Jain's index),
:func:`contribution_gain_correlation` (do clients that contributed more gain more?) and
:func:`fairness_summary` (both, as written to ``results.json``). See docs/contribution.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .protocol import client_sort_key

ACCURACY_KEYS = ("client_accuracy", "global_accuracy")
"""Per-client metrics the fairness summary covers (own test split, global test set)."""

__all__ = [
    "ACCURACY_KEYS",
    "accuracy_fairness",
    "contribution_gain_correlation",
    "correlation",
    "fairness_summary",
    "jain_index",
    "worst_fraction_mean",
]


def _values(values: object, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array}")
    return array


def jain_index(values: object) -> float:
    """Jain's fairness index ``(sum x)^2 / (n * sum x^2)`` of non-negative values.

    Parameters
    ----------
    values : array-like
        Non-negative values, e.g. per-client accuracies.

    Returns
    -------
    float
        In ``[1/n, 1]``; 1 when all values are equal (all zero included).

    Examples
    --------
    >>> jain_index([1.0, 1.0]), jain_index([1.0, 0.0])
    (1.0, 0.5)
    """
    x = _values(values, "values")
    if np.any(x < 0):
        raise ValueError(f"Jain's index needs non-negative values, got {x}")
    squares = float(np.sum(x**2))
    if squares == 0.0:
        return 1.0
    return float(np.sum(x) ** 2 / (x.size * squares))


def worst_fraction_mean(values: object, fraction: float = 0.1) -> float:
    """Mean of the lowest ``ceil(fraction * n)`` values (at least one).

    Parameters
    ----------
    values : array-like
        E.g. per-client accuracies.
    fraction : float (default: 0.1)
        Share of the worst values to average, in ``(0, 1]``.

    Returns
    -------
    float
        With 10 clients and ``fraction=0.1``, the minimum; with 20, the mean of
        the two lowest.

    Examples
    --------
    >>> worst_fraction_mean([0.9, 0.5, 0.7, 0.6] * 5, 0.1)
    0.5
    """
    x = _values(values, "values")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    count = max(1, math.ceil(fraction * x.size - 1e-9))
    return float(np.sort(x)[:count].mean())


def accuracy_fairness(accuracies: Mapping[str, float], worst_fraction: float = 0.1) -> dict:
    """Fairness summary of per-client accuracies.

    Parameters
    ----------
    accuracies : Mapping[str, float]
        Client id -> accuracy (a fraction in ``[0, 1]``).
    worst_fraction : float (default: 0.1)
        Share of clients in the worst-clients mean.

    Returns
    -------
    dict
        ``num_clients``, ``mean``, ``std`` (population), ``min``,
        ``worst_10pct_mean`` (named for the default fraction; the mean of the
        worst ``worst_fraction`` of clients) and ``jain_index``.
    """
    x = _values(list(accuracies.values()), "accuracies")
    if np.any(x < 0) or np.any(x > 1):
        raise ValueError(f"accuracies must be fractions in [0, 1], got {x}")
    return {
        "num_clients": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "worst_10pct_mean": worst_fraction_mean(x, worst_fraction),
        "jain_index": jain_index(x),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float(np.sum(a**2)) * float(np.sum(b**2)))
    if norm == 0.0:
        return None
    return float(np.clip(np.sum(a * b) / norm, -1.0, 1.0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    counts = np.diff(np.r_[first, values.size])
    mean_rank = first + (counts + 1) / 2.0
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(mean_rank, counts)
    return ranks


def correlation(x: object, y: object, method: str = "pearson") -> float | None:
    """Pearson or Spearman correlation of two paired samples.

    Parameters
    ----------
    x, y : array-like
        Paired samples of at least two finite values.
    method : {"pearson", "spearman"} (default: "pearson")
        Spearman is the Pearson correlation of the ranks (ties get their mean rank).

    Returns
    -------
    float or None
        The coefficient in ``[-1, 1]``; None when either sample is constant.
    """
    a, b = _values(x, "x"), _values(y, "y")
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two paired samples of >= 2 values, got {a.shape} and {b.shape}")
    if method == "spearman":
        return _pearson(_average_ranks(a), _average_ranks(b))
    if method != "pearson":
        raise ValueError(f'method must be "pearson" or "spearman", got {method!r}')
    return _pearson(a, b)


def contribution_gain_correlation(
    contributions: Mapping[str, float], gains: Mapping[str, float]
) -> dict:
    """Correlation between clients' contributions and their accuracy gains.

    Parameters
    ----------
    contributions : Mapping[str, float]
        Client id -> cumulative contribution.
    gains : Mapping[str, float]
        Client id -> accuracy gain (e.g. final accuracy minus local-only).

    Returns
    -------
    dict
        ``num_clients`` (ids present in both), ``pearson`` and ``spearman``;
        each correlation is None with fewer than three common clients or when
        either side is constant.
    """
    common = sorted(set(map(str, contributions)) & set(map(str, gains)), key=client_sort_key)
    by_id_c = {str(k): v for k, v in contributions.items()}
    by_id_g = {str(k): v for k, v in gains.items()}
    result: dict = {"num_clients": len(common), "pearson": None, "spearman": None}
    if len(common) >= 3:
        c = [by_id_c[k] for k in common]
        g = [by_id_g[k] for k in common]
        result["pearson"] = correlation(c, g, "pearson")
        result["spearman"] = correlation(c, g, "spearman")
    return result


def _metric(per_client: Mapping[str, Mapping[str, float]], key: str) -> dict[str, float] | None:
    """``client id -> per_client[id][key]``, or None unless every client reports it."""
    if not per_client or any(m.get(key) is None for m in per_client.values()):
        return None
    return {str(cid): float(m[key]) for cid, m in per_client.items()}


def fairness_summary(
    per_client: Mapping[str, Mapping[str, float]],
    local_only: Mapping[str, Mapping[str, float]] | None = None,
    contributions: Mapping[str, float] | None = None,
) -> dict:
    """Fairness of one round's per-client accuracies, and contribution vs. gain.

    Parameters
    ----------
    per_client : Mapping[str, Mapping[str, float]]
        Client id -> evaluation metrics (``client_accuracy``, optionally
        ``global_accuracy``), e.g. the final round's ``per_client`` in the history.
    local_only : Mapping[str, Mapping[str, float]], optional
        The same for the local-only baseline; a client's gain is its accuracy
        minus its local-only accuracy.
    contributions : Mapping[str, float], optional
        Client id -> cumulative contribution.

    Returns
    -------
    dict
        For each of :data:`ACCURACY_KEYS` that every client reports, the
        :func:`accuracy_fairness` summary; with ``local_only`` and
        ``contributions``, ``contribution_vs_gain``: per accuracy key, the
        :func:`contribution_gain_correlation` of contribution and gain.
    """
    summary: dict = {}
    correlations: dict = {}
    for key in ACCURACY_KEYS:
        accuracy = _metric(per_client, key)
        if accuracy is None:
            continue
        summary[key] = accuracy_fairness(accuracy)
        baseline = _metric(local_only or {}, key)
        if baseline is not None and contributions:
            gains = {c: accuracy[c] - baseline[c] for c in accuracy if c in baseline}
            correlations[key] = contribution_gain_correlation(contributions, gains)
    if correlations:
        summary["contribution_vs_gain"] = correlations
    return summary
