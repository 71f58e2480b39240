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
