"""Run an experiment in Flower's simulation engine and write its results.

:func:`run_experiment` runs the configured strategy and, in the same invocation, the
local-only baseline (the same clients, models, seeds and private epochs, with the
distillation weight set to zero so nobody learns from anybody), then writes
``results.json``, ``report.md`` and ``accuracy.png`` to the output folder.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from clients.models.zoo import describe

from .config import ExperimentConfig
from .experiment import backend_config, build_split, build_strategy, make_client_app
from .reporting import write_report, write_results_json

HISTORY_KEYS = ("round", "client_accuracy_mean", "client_accuracy_std", "client_accuracy_min",
                "global_accuracy_mean", "bytes_up", "bytes_down", "seconds")


def simulate(cfg: ExperimentConfig, local_only: bool = False) -> list[dict]:
    """Run one federation in Flower's simulation engine; return the strategy's history.

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment.
    local_only : bool (default: False)
        Run the local-only baseline (see :func:`~simulations.experiment.build_strategy`).

    Returns
    -------
    list[dict]
        One entry per round (see :class:`flhet_strategies.history.RoundHistory`).
    """
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    sink: dict = {}
    if cfg.api == "message":
        server_app = ServerApp()

        @server_app.main()
        def main(grid, context):
            strategy = build_strategy(cfg, local_only)
            sink["strategy"] = strategy
            strategy.start(grid=grid, num_rounds=cfg.num_rounds)
    else:
        from flwr.server import ServerAppComponents, ServerConfig

        def server_fn(context):
            strategy = build_strategy(cfg, local_only)
            sink["strategy"] = strategy
            return ServerAppComponents(strategy=strategy,
                                       config=ServerConfig(num_rounds=cfg.num_rounds))

        server_app = ServerApp(server_fn=server_fn)

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(server_app=server_app, client_app=make_client_app(cfg),
                   num_supernodes=cfg.data.num_clients, backend_config=backend_config(cfg))
    if "strategy" not in sink or not sink["strategy"].history:
        raise RuntimeError("the simulation ended without a single completed round; see the log above")
    return sink["strategy"].history


def _client_table(cfg: ExperimentConfig) -> list[dict]:
    split = build_split(cfg)
    rows = []
    for cid, group in enumerate(cfg.client_groups()):
        arch = group.architecture
        info = describe(arch.split(":", 1)[1] if group.framework == "scikit-learn" else arch)
        rows.append({"id": cid, "architecture": arch, "family": info.get("family"),
                     "framework": group.framework, "num_train": len(split.clients[cid].train),
                     "num_test": len(split.clients[cid].test),
                     "classes": int((split.clients[cid].class_counts > 0).sum())})
    return rows


def _history_rows(history: list[dict]) -> list[dict]:
    rows = []
    for entry in sorted(history, key=lambda e: e["round"]):
        if entry.get("client_accuracy_mean") is None:
            continue  # a round without evaluation
        row = {k: entry.get(k) for k in HISTORY_KEYS}
        row["num_failures"] = entry.get("num_failures", 0)
        row["per_client"] = entry.get("per_client", {})
        rows.append(row)
    return rows


def assemble_results(cfg: ExperimentConfig, history: list[dict],
                     local_only: list[dict] | None, wall_seconds: float) -> dict:
    """Build the ``results.json`` content from the histories of both runs."""
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
    if local_only is not None:
        base = _history_rows(local_only)
        results["baselines"]["local_only"] = {
            "client_accuracy_mean": base[-1]["client_accuracy_mean"],
            "global_accuracy_mean": base[-1]["global_accuracy_mean"],
            "per_client": base[-1]["per_client"],
            "history": [{k: r[k] for k in HISTORY_KEYS} for r in base],
        }
        results["margins"] = {
            "client_accuracy_points": 100 * (results["final"]["client_accuracy_mean"]
                                             - base[-1]["client_accuracy_mean"]),
            "global_accuracy_points": 100 * (results["final"]["global_accuracy_mean"]
                                             - base[-1]["global_accuracy_mean"]),
        }
    return results


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path) -> dict:
    """Run the strategy and its local-only baseline; write results, report and plot.

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
    t0 = time.perf_counter()
    history = simulate(cfg)
    local_only = None
    if cfg.local_only_baseline:
        log.info("local-only baseline: same clients and epochs, kd_weight=0")
        local_only = simulate(cfg, local_only=True)
    results = assemble_results(cfg, history, local_only, time.perf_counter() - t0)
    write_results_json(results, out)
    write_report(results, out)
    return results
