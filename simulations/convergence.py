"""Convergence speed of a run against a baseline: rounds to a target accuracy.

Used by ``[adaptive]`` experiments (``results.json`` ``adaptive`` section: the adaptive
run against its unadapted twin in the same invocation) and by
``benchmarks/adaptive_benchmark.py``.
"""

from __future__ import annotations

from collections.abc import Sequence


def rounds_to_target(series: Sequence[tuple[int, float | None]], target: float) -> int | None:
    """The first round whose accuracy reaches ``target``.

    Parameters
    ----------
    series : Sequence[tuple[int, float or None]]
        ``(round, accuracy)`` pairs; ``None`` accuracies (rounds without
        evaluation) are skipped.
    target : float
        Accuracy to reach.

    Returns
    -------
    int or None
        The round, or ``None`` if the target is never reached.

    Examples
    --------
    >>> rounds_to_target([(1, 0.2), (2, None), (3, 0.5), (4, 0.4)], 0.45)
    3
    """
    for server_round, accuracy in sorted(series, key=lambda item: item[0]):
        if accuracy is not None and accuracy >= target:
            return int(server_round)
    return None


def accuracy_series(history: Sequence[dict], exclude: Sequence[str] = ()
                    ) -> list[tuple[int, float | None]]:
    """Per-round mean global-test accuracy from a strategy history.

    Parameters
    ----------
    history : Sequence[dict]
        ``strategy.history`` entries (``round``, ``per_client``, ``global_accuracy_mean``).
    exclude : Sequence[str] (default: ())
        Client ids left out of the mean (e.g. free-riders); empty: the history's
        own ``global_accuracy_mean``.

    Returns
    -------
    list[tuple[int, float or None]]
        ``(round, accuracy)`` in round order; ``None`` where the round was not
        evaluated or no remaining client reported a global accuracy.
    """
    series = []
    for entry in sorted(history, key=lambda e: e["round"]):
        if not exclude:
            series.append((int(entry["round"]), entry.get("global_accuracy_mean")))
            continue
        values = [m["global_accuracy"] for cid, m in (entry.get("per_client") or {}).items()
                  if cid not in set(exclude) and m.get("global_accuracy") is not None]
        series.append((int(entry["round"]), sum(values) / len(values) if values else None))
    return series


def compare(unadapted: list[tuple[int, float | None]], adaptive: list[tuple[int, float | None]],
            target_fraction: float, target_accuracy: float | None = None) -> dict:
    """Rounds-to-target of both runs and their ratio.

    Parameters
    ----------
    unadapted, adaptive : list[tuple[int, float or None]]
        Accuracy series (:func:`accuracy_series`).
    target_fraction : float
        Target as a share of the unadapted run's last evaluated accuracy, in ``(0, 1]``.
    target_accuracy : float, optional
        An absolute target instead.

    Returns
    -------
    dict
        ``target``, ``unadapted_final``, ``adaptive_final``, ``unadapted_rounds``,
        ``adaptive_rounds``, ``ratio`` (adaptive / unadapted rounds; ``None``
        when either run misses the target) and ``unadapted_mean`` /
        ``adaptive_mean``, the mean accuracy over the evaluated rounds (the area
        under the curve per round: less noisy than one crossing).
    """
    if not 0.0 < target_fraction <= 1.0:
        raise ValueError(f"target_fraction must lie in (0, 1], got {target_fraction}")
    finals = [[a for _, a in s if a is not None] for s in (unadapted, adaptive)]
    if not finals[0] or not finals[1]:
        raise ValueError("both runs need at least one evaluated round")
    target = target_accuracy if target_accuracy is not None else target_fraction * finals[0][-1]
    r_un, r_ad = rounds_to_target(unadapted, target), rounds_to_target(adaptive, target)
    return {"target": target, "unadapted_final": finals[0][-1], "adaptive_final": finals[1][-1],
            "unadapted_rounds": r_un, "adaptive_rounds": r_ad,
            "ratio": None if r_un is None or r_ad is None else r_ad / r_un,
            "unadapted_mean": sum(finals[0]) / len(finals[0]),
            "adaptive_mean": sum(finals[1]) / len(finals[1])}
