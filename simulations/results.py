"""``results.json`` content from the histories of an experiment's runs.

:func:`assemble_results` turns the strategy's history and its baselines' histories into
what ``flhet-sim`` and the Flower App write (see :mod:`simulations.phases`, which calls
it with the finished phases).
"""

from __future__ import annotations

from clients.learners.free_rider import FreeRiderLearner
from clients.models.zoo import describe
from flhet_strategies.fairness import fairness_summary

from .config import ExperimentConfig
from .experiment import build_split

HISTORY_KEYS = ("round", "client_accuracy_mean", "client_accuracy_std", "client_accuracy_min",
                "global_accuracy_mean", "bytes_up", "bytes_down", "seconds")
PRIVACY_KEYS = ("epsilon", "delta", "noise_multiplier", "released_rows",
                "epsilon_mean", "epsilon_max", "epsilon_per_client", "record_delta")
"""History keys of a round under DP: a released private consensus (client level), or the
clients' DP-SGD epsilon (record level)."""
REPORT_KEYS = ("feddf", "sum_decryption")
"""History keys of a server half's per-round report (FedDF: its groups' distillation;
Paillier: who decrypted the sum the round's clients received)."""


def _client_table(cfg: ExperimentConfig) -> list[dict]:
    split = build_split(cfg)
    rows = []
    for cid, group in enumerate(cfg.client_groups()):
        arch = group.architecture
        info = describe(arch.split(":", 1)[1] if group.framework == "scikit-learn" else arch)
        framework = FreeRiderLearner.framework if group.role == "free_rider" else group.framework
        rows.append({"id": cid, "architecture": arch, "family": info.get("family"),
                     "framework": framework, "num_train": len(split.clients[cid].train),
                     "num_test": len(split.clients[cid].test),
                     "classes": int((split.clients[cid].class_counts > 0).sum()),
                     "role": group.role})
    return rows


def _history_rows(history: list[dict]) -> list[dict]:
    rows = []
    for entry in sorted(history, key=lambda e: e["round"]):
        if entry.get("client_accuracy_mean") is None:
            continue  # a round without evaluation
        row = {k: entry.get(k) for k in HISTORY_KEYS}
        row.update({k: entry[k] for k in PRIVACY_KEYS + REPORT_KEYS if k in entry})
        row["num_failures"] = entry.get("num_failures", 0)
        row["per_client"] = entry.get("per_client", {})
        rows.append(row)
    return rows


def _baseline_entry(rows: list[dict]) -> dict:
    return {
        "client_accuracy_mean": rows[-1]["client_accuracy_mean"],
        "global_accuracy_mean": rows[-1]["global_accuracy_mean"],
        "per_client": rows[-1]["per_client"],
        "history": [{**{k: r[k] for k in HISTORY_KEYS}, "per_client": r["per_client"]}
                    for r in rows],
    }


def _points(final: dict, base: dict) -> dict:
    return {f"{key.removesuffix('_mean')}_points":
            None if final[key] is None or base[key] is None else 100 * (final[key] - base[key])
            for key in ("client_accuracy_mean", "global_accuracy_mean")}


def assemble_results(cfg: ExperimentConfig, history: list[dict],
                     local_only: list[dict] | None, wall_seconds: float, *,
                     contributions: dict | None = None,
                     sample_count: list[dict] | None = None,
                     sample_count_contributions: dict | None = None,
                     baselines: dict[str, list[dict]] | None = None,
                     sections: dict[str, dict] | None = None) -> dict:
    """Build the ``results.json`` content from the histories of the runs.

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment.
    history : list[dict]
        The strategy's history.
    local_only : list[dict] or None
        The local-only baseline's history.
    wall_seconds : float
        Wall-clock seconds of all runs.
    contributions : dict, optional
        The strategy's :meth:`ContributionLedger.to_dict` (``rounds``, ``total``).
    sample_count : list[dict], optional
        History of the same strategy with sample-count weights
        (``baselines.sample_count_weighting``).
    sample_count_contributions : dict, optional
        That run's contribution audit.
    baselines : dict[str, list[dict]], optional
        Further baselines by name (e.g. ``no_dp``, ``plaintext``: the same
        configuration without DP or encryption), each with ``gain_points`` of the
        strategy over it.
    sections : dict[str, dict], optional
        Extra top-level sections (``privacy``, ``paillier``).

    Returns
    -------
    dict
        With ``fairness`` (:func:`~flhet_strategies.fairness.fairness_summary` of
        the final round, contribution vs. gain over local-only where both exist) and,
        when given, ``contributions``.
    """
    rows = _history_rows(history)
    results = {
        "strategy": cfg.strategy.label,
        "dataset": cfg.data.dataset,
        "partitioner": cfg.data.partitioner_spec().to_dict(),
        "num_clients": cfg.data.num_clients,
        "num_rounds": cfg.num_rounds,
        "seed": cfg.seed,
        "api": cfg.api,
        "clients": _client_table(cfg),
        "history": rows,
        "final": {k: rows[-1][k] for k in ("client_accuracy_mean", "global_accuracy_mean")},
        "baselines": {},
        "wall_seconds": wall_seconds,
        "config": cfg.to_dict(),
    }
    total = (contributions or {}).get("total")
    local_rows = _history_rows(local_only) if local_only is not None else None
    if local_rows is not None:
        results["baselines"]["local_only"] = _baseline_entry(local_rows)
        results["margins"] = _points(results["final"], local_rows[-1])
    results["fairness"] = fairness_summary(
        rows[-1]["per_client"], local_rows[-1]["per_client"] if local_rows else None, total)
    if contributions is not None:
        results["contributions"] = contributions
    if sample_count is not None:
        base = _history_rows(sample_count)
        entry = _baseline_entry(base)
        entry["fairness"] = fairness_summary(base[-1]["per_client"])
        if sample_count_contributions is not None:
            entry["contributions"] = sample_count_contributions
        entry["contribution_weighting_gain"] = _points(results["final"], base[-1])
        results["baselines"]["sample_count_weighting"] = entry
    for name, baseline_history in (baselines or {}).items():
        base = _history_rows(baseline_history)
        entry = _baseline_entry(base)
        entry["gain_points"] = _points(results["final"], base[-1])
        results["baselines"][name] = entry
    results.update(sections or {})
    return results
