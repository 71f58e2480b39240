"""The summary of a comparison: per strategy, means over seeds, fairness and win rates.

Pure functions of the runs' histories (``results.json`` ``history`` rows, or a baseline's
``history``), no Flower. Jain's index and the worst-10% mean come from
:mod:`flhet_strategies.fairness`, rounds to a target from :mod:`simulations.convergence`.
Definitions: docs/compare.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from flhet_strategies.fairness import jain_index, worst_fraction_mean

from .convergence import rounds_to_target

ACCURACY_KEYS = ("client", "global")
"""The two accuracies: each client's own test split, and the global test set."""


def per_client_values(per_client: Mapping[str, Mapping[str, float | None]], key: str
                      ) -> dict[str, float]:
    """``client id -> per_client[id][key + "_accuracy"]``, clients without it left out.

    Parameters
    ----------
    per_client : Mapping[str, Mapping[str, float or None]]
        A history row's ``per_client`` (client id -> metrics).
    key : str
        ``"client"`` or ``"global"``.
    """
    metric = f"{key}_accuracy"
    return {str(cid): float(m[metric]) for cid, m in per_client.items()
            if m.get(metric) is not None}


def win_rate(runs: Sequence[Mapping[str, float]], baselines: Sequence[Mapping[str, float]]
             ) -> float | None:
    """Share of (client, seed) pairs whose value beats the client's baseline value.

    Parameters
    ----------
    runs : Sequence[Mapping[str, float]]
        Per seed, client id -> the strategy's final value.
    baselines : Sequence[Mapping[str, float]]
        Per seed (the same order), client id -> the baseline's final value.

    Returns
    -------
    float or None
        Wins (strictly greater; a tie is no win) over the pairs where both have a
        value; None without any pair.

    Examples
    --------
    >>> win_rate([{"0": 0.9, "1": 0.5}], [{"0": 0.8, "1": 0.5}])
    0.5
    """
    if len(runs) != len(baselines):
        raise ValueError(f"need one baseline per seed, got {len(runs)} runs and "
                         f"{len(baselines)} baselines")
    wins = pairs = 0
    for run, base in zip(runs, baselines):
        for cid in set(run) & set(base):
            pairs += 1
            wins += run[cid] > base[cid]
    return wins / pairs if pairs else None


def mean_curve(histories: Sequence[Sequence[Mapping]], key: str = "global_accuracy_mean"
               ) -> list[tuple[int, float]]:
    """The mean over seeds of ``key`` per round, for the rounds every seed evaluated.

    Parameters
    ----------
    histories : Sequence[Sequence[Mapping]]
        Per seed, the history rows (``round``, ``key``).
    key : str (default: "global_accuracy_mean")
        The value to average.

    Returns
    -------
    list[tuple[int, float]]
        ``(round, mean)`` in round order.

    Examples
    --------
    >>> mean_curve([[{"round": 1, "g": 0.2}, {"round": 2, "g": 0.4}],
    ...             [{"round": 2, "g": 0.6}]], "g")
    [(2, 0.5)]
    """
    by_seed = [{int(r["round"]): r[key] for r in h if r.get(key) is not None}
               for h in histories]
    if not by_seed:
        return []
    rounds = sorted(set.intersection(*(set(s) for s in by_seed)))
    return [(r, float(np.mean([s[r] for s in by_seed]))) for r in rounds]


def comparison_target(final_global: Mapping[str, float | None], fraction: float = 0.9
                      ) -> float | None:
    """The rounds-to-target accuracy: ``fraction`` of the best final global accuracy.

    Parameters
    ----------
    final_global : Mapping[str, float or None]
        Strategy -> its final global accuracy (mean over seeds); None where unknown.
    fraction : float (default: 0.9)
        Share of the best, in ``(0, 1]``.

    Returns
    -------
    float or None
        None when no strategy has a global accuracy.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    values = [v for v in final_global.values() if v is not None]
    return fraction * max(values) if values else None


def twin_margins(histories: Sequence[Sequence[Mapping]], twins: Sequence[Sequence[Mapping]]
                 ) -> dict:
    """A strategy against its own local-only twins (the same models and recipe, trained alone).

    Parameters
    ----------
    histories : Sequence[Sequence[Mapping]]
        Per seed, the strategy's history rows (the last is the final round).
    twins : Sequence[Sequence[Mapping]]
        Per seed (the same order), the history rows of the local-only twin of that run.

    Returns
    -------
    dict
        ``client_points`` and ``global_points`` (final mean accuracy minus the twin's, in
        percentage points, mean over seeds) and ``win_rate`` against the twins
        (:func:`win_rate`, ``client`` and ``global``).
    """
    finals, bases = [h[-1] for h in histories], [t[-1] for t in twins]
    if len(finals) != len(bases):
        raise ValueError(f"need one twin per seed, got {len(finals)} runs and {len(bases)} twins")
    margins = {}
    for key in ACCURACY_KEYS:
        metric = f"{key}_accuracy_mean"
        margins[f"{key}_points"] = _mean_std(
            [None if f.get(metric) is None or b.get(metric) is None
             else 100 * (f[metric] - b[metric]) for f, b in zip(finals, bases)])[0]
    margins["win_rate"] = {key: win_rate([per_client_values(f["per_client"], key) for f in finals],
                                         [per_client_values(b["per_client"], key) for b in bases])
                           for key in ACCURACY_KEYS}
    return margins


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    known = [float(v) for v in values if v is not None]
    if not known:
        return None, None
    return float(np.mean(known)), float(np.std(known))


def summarize_strategy(histories: Sequence[Sequence[Mapping]],
                       baselines: Sequence[Sequence[Mapping]] | None,
                       seeds: Sequence[int], wall_seconds: Sequence[float | None],
                       worst_fraction: float = 0.1) -> dict:
    """One strategy's row of ``comparison.json`` (all but ``rounds_to_target``).

    Parameters
    ----------
    histories : Sequence[Sequence[Mapping]]
        Per seed, the strategy's history rows; the last is the final round (with
        ``client_accuracy_mean``, ``global_accuracy_mean``, ``per_client``,
        ``bytes_up``, ``bytes_down``).
    baselines : Sequence[Sequence[Mapping]] or None
        Per seed (the same order), the local-only history rows the win rates compare
        with; None: no win rates (the local-only row itself).
    seeds : Sequence[int]
        The seeds, in that order.
    wall_seconds : Sequence[float or None]
        Per seed, the seconds the strategy's federation took.
    worst_fraction : float (default: 0.1)
        Share of the clients in ``worst10_client_accuracy``.

    Returns
    -------
    dict
        ``client_accuracy_mean`` / ``_std`` and ``global_accuracy_mean`` / ``_std``
        (final round, mean and population std over seeds), ``worst10_client_accuracy``
        and ``jain_index`` (of the final per-client accuracies on the clients' own test
        splits, mean over seeds), ``win_rate`` (``client``, ``global``: see
        :func:`win_rate`), ``bytes_up_per_round`` / ``bytes_down_per_round`` (mean over
        the rounds and seeds), ``wall_seconds`` (mean over seeds), ``seeds`` and
        ``global_accuracy_curve`` (:func:`mean_curve`).
    """
    if not histories or len(histories) != len(seeds) or any(not h for h in histories):
        raise ValueError("need a non-empty history for every seed")
    finals = [h[-1] for h in histories]
    client = [per_client_values(f["per_client"], "client") for f in finals]
    row: dict = {}
    for key in ACCURACY_KEYS:
        row[f"{key}_accuracy_mean"], row[f"{key}_accuracy_std"] = _mean_std(
            [f.get(f"{key}_accuracy_mean") for f in finals])
    row["worst10_client_accuracy"] = _mean_std(
        [worst_fraction_mean(list(c.values()), worst_fraction) for c in client])[0]
    row["jain_index"] = _mean_std([jain_index(list(c.values())) for c in client])[0]
    if baselines is None:
        row["win_rate"] = None
    else:
        base_finals = [b[-1]["per_client"] for b in baselines]
        row["win_rate"] = {key: win_rate([per_client_values(f["per_client"], key) for f in finals],
                                         [per_client_values(b, key) for b in base_finals])
                           for key in ACCURACY_KEYS}
    for direction in ("up", "down"):
        row[f"bytes_{direction}_per_round"] = _mean_std(
            [np.mean([r.get(f"bytes_{direction}", 0) for r in h]) for h in histories])[0]
    row["wall_seconds"] = _mean_std(wall_seconds)[0]
    row["seeds"] = [int(s) for s in seeds]
    row["global_accuracy_curve"] = [list(p) for p in mean_curve(histories)]
    return row


def summarize_comparison(rows: Mapping[str, dict], target_fraction: float = 0.9) -> dict:
    """Add ``rounds_to_target`` to every strategy's row; the ``comparison.json`` content.

    Parameters
    ----------
    rows : Mapping[str, dict]
        Strategy -> :func:`summarize_strategy`, in table order.
    target_fraction : float (default: 0.9)
        The target's share of the best final global accuracy (:func:`comparison_target`).

    Returns
    -------
    dict
        ``strategies`` (the rows with ``rounds_to_target``: the first round whose mean
        global accuracy over seeds reaches the target, None if none does),
        ``target_fraction`` and ``target_global_accuracy``.
    """
    target = comparison_target({n: r["global_accuracy_mean"] for n, r in rows.items()},
                               target_fraction)
    strategies = {}
    for name, row in rows.items():
        reached = (None if target is None else
                   rounds_to_target([tuple(p) for p in row["global_accuracy_curve"]], target))
        strategies[name] = {**row, "rounds_to_target": reached}
    return {"strategies": strategies, "target_fraction": target_fraction,
            "target_global_accuracy": target}
