"""Run an experiment in Flower's simulation engine and write its results.

:func:`run_experiment` runs every phase of the experiment
(:func:`simulations.phases.experiment_phases`: the configured strategy, the local-only
baseline -- the same clients, models, seeds and private epochs with the distillation
weight set to zero, so nobody learns from anybody -- and the baselines its config asks
for) in the same invocation, one Flower simulation each, then writes ``results.json``,
``report.md`` and ``accuracy.png`` (and ``server_state.npz``) to the output folder.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from clients.learners.free_rider import FreeRiderLearner
from clients.models.zoo import describe
from flhet_strategies.core.fairness import fairness_summary

from .config import ExperimentConfig
from .contribution_report import write_contributions_png
from .experiment import (
    backend_config,
    build_split,
    build_strategy,
    make_client_app,
    paillier_key_files,
)
from .phases import MAIN_PHASE, experiment_phases, results_from_phases, save_server_state
from .reporting import write_report, write_results_json

HISTORY_KEYS = ("round", "client_accuracy_mean", "client_accuracy_std", "client_accuracy_min",
                "global_accuracy_mean", "bytes_up", "bytes_down", "seconds")
PRIVACY_KEYS = ("epsilon", "delta", "noise_multiplier", "released_rows")
"""History keys of a round that released a differentially private consensus."""


def simulate_strategy(cfg: ExperimentConfig, local_only: bool = False,
                      sample_count_weighting: bool = False, *, strategy_factory=None,
                      key_files=None):
    """Run one federation in Flower's simulation engine; return its strategy.

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment.
    local_only : bool (default: False)
        Run the local-only baseline (see :func:`~simulations.experiment.build_strategy`).
    sample_count_weighting : bool (default: False)
        Run the sample-count-weighted baseline of a contribution-weighted experiment.
    strategy_factory : callable, optional
        ``() -> strategy`` replacing :func:`~simulations.experiment.build_strategy`
        (e.g. a benchmark's variant of the configured strategy); the other two
        parameters are then ignored.
    key_files : KeyFiles, optional
        The dealt Paillier keys of a ``[paillier]`` experiment (public key for the
        strategy, private key for the clients' mod).

    Returns
    -------
    FedConsensus or FedConsensusCompat
        The strategy after the run: its ``history`` and, with contributions enabled,
        its ledger (:func:`~simulations.experiment.contribution_ledger`).
    """
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    sink: dict = {}

    def strategy_for_run():
        sink["strategy"] = (strategy_factory() if strategy_factory is not None
                            else build_strategy(cfg, local_only, sample_count_weighting,
                                                key_files))
        return sink["strategy"]

    if cfg.api == "message":
        server_app = ServerApp()

        @server_app.main()
        def main(grid, context):
            strategy_for_run().start(grid=grid, num_rounds=cfg.num_rounds)
    else:
        from flwr.server import ServerAppComponents, ServerConfig

        def server_fn(context):
            return ServerAppComponents(strategy=strategy_for_run(),
                                       config=ServerConfig(num_rounds=cfg.num_rounds))

        server_app = ServerApp(server_fn=server_fn)

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(server_app=server_app, client_app=make_client_app(cfg, key_files),
                   num_supernodes=cfg.data.num_clients, backend_config=backend_config(cfg))
    if "strategy" not in sink or not sink["strategy"].history:
        raise RuntimeError("the simulation ended without a single completed round; see the log above")
    return sink["strategy"]


def simulate(cfg: ExperimentConfig, local_only: bool = False) -> list[dict]:
    """The strategy's history after :func:`simulate_strategy` (same parameters).

    Returns
    -------
    list[dict]
        One entry per round (see :class:`flhet_strategies.history.RoundHistory`).
    """
    return simulate_strategy(cfg, local_only).history


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
        row.update({k: entry[k] for k in PRIVACY_KEYS if k in entry})
        row["num_failures"] = entry.get("num_failures", 0)
        row["per_client"] = entry.get("per_client", {})
        rows.append(row)
    return rows


def _baseline_entry(rows: list[dict]) -> dict:
    return {
        "client_accuracy_mean": rows[-1]["client_accuracy_mean"],
        "global_accuracy_mean": rows[-1]["global_accuracy_mean"],
        "per_client": rows[-1]["per_client"],
        "history": [{k: r[k] for k in HISTORY_KEYS} for r in rows],
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
        With ``fairness`` (:func:`~flhet_strategies.core.fairness.fairness_summary` of
        the final round, contribution vs. gain over local-only where both exist) and,
        when given, ``contributions``.
    """
    rows = _history_rows(history)
    results = {
        "strategy": f"{cfg.strategy.name}:{cfg.strategy.mode}",
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


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path) -> dict:
    """Run the experiment's phases; write results, report, plots and server state.

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment.
    out_dir : str or Path
        Output folder (created if missing).

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("flhet")
    split = build_split(cfg)  # fail fast on data problems, before Ray starts
    log.info("data: %s clients, proxy %s, global test %s", len(split.clients),
             len(split.proxy_x), len(split.global_test))
    key_files = paillier_key_files(cfg, out) if cfg.paillier.enabled else None
    t0 = time.perf_counter()
    finished = {}
    for phase in experiment_phases(cfg):
        log.info("phase %s: %s", phase.name, phase.label)
        started = time.perf_counter()
        strategy = simulate_strategy(phase.cfg, strategy_factory=lambda p=phase: p.build(key_files),
                                     key_files=key_files)
        finished[phase.name] = (strategy, time.perf_counter() - started)
    results = results_from_phases(cfg, finished, time.perf_counter() - t0, key_files)
    save_server_state(finished[MAIN_PHASE][0], out)
    write_results_json(results, out)
    write_report(results, out)
    if "contributions" in results:
        write_contributions_png(results, out)
    return results
