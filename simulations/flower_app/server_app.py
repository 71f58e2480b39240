"""ServerApp of the flhet Flower App: the experiment and its local-only baseline.

One federation hosts both runs: first the configured strategy, then (if the
experiment asks for it) the local-only baseline, a second
:class:`~flhet_strategies.message_api.FedConsensus` with ``kd_weight=0`` under its own
phase name, so every client starts it from a fresh model with the same seed and
trains the same private epochs without learning from anyone. Then the results are
written exactly as ``flhet-sim`` writes them (``results.json``, ``report.md``,
``accuracy.png``).
"""

from __future__ import annotations

import time
from logging import INFO

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from flhet_strategies.message_api import FedConsensus
from simulations.config import ConfigError, ExperimentConfig
from simulations.experiment import LOCAL_ONLY_PHASE, build_split, build_strategy
from simulations.reporting import write_report, write_results_json
from simulations.runner import assemble_results

from . import AppSettings, app_settings

"""Phase name of the local-only baseline (clients keep a separate model for it)."""

NODE_WAIT_SECONDS = 30.0
"""How long to wait for the experiment's number of nodes before giving up."""


def wait_for_nodes(grid: Grid, expected: int, timeout: float = NODE_WAIT_SECONDS,
                   poll: float = 0.5) -> list[int]:
    """Wait until ``expected`` nodes are connected; fail clearly on any other number.

    Flower's own node sampling waits forever when too few nodes exist, and extra
    nodes would carry partition ids the experiment has no client for.

    Parameters
    ----------
    grid : Grid
        The ServerApp's grid.
    expected : int
        The experiment's ``data.num_clients``.
    timeout : float (default: NODE_WAIT_SECONDS)
        Seconds to wait for the nodes to connect.
    poll : float (default: 0.5)
        Seconds between checks.

    Returns
    -------
    list[int]
        The connected node ids.

    Raises
    ------
    ConfigError
        If fewer than ``expected`` nodes connected in time, or more are connected.
    """
    deadline = time.monotonic() + timeout
    if len(nodes := list(grid.get_node_ids())) < expected:
        log(INFO, "flhet: waiting up to %.0f s for %s nodes (%s connected)", timeout, expected,
            len(nodes))
    while len(nodes) < expected and time.monotonic() < deadline:
        time.sleep(poll)
        nodes = list(grid.get_node_ids())
    if len(nodes) != expected:
        raise ConfigError(
            f"the experiment has data.num_clients = {expected} clients but the federation "
            f"has {len(nodes)} nodes. For a local simulation run e.g. "
            f"flwr run . --federation-config \"num-supernodes={expected} "
            "client-resources-num-cpus=1 init-args-num-cpus=2\""
        )
    return nodes


def phase_strategy(cfg: ExperimentConfig, local_only: bool = False) -> FedConsensus:
    """The strategy of one phase: the experiment, or its local-only baseline.

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment (``api = "message"``).
    local_only : bool (default: False)
        Build the baseline: ``kd_weight=0``, phase ``LOCAL_ONLY_PHASE`` (fresh client
        models), evaluated every ``cfg.local_only_eval_every`` rounds (default: only
        after the last round).

    Returns
    -------
    FedConsensus
        The Message-API strategy.
    """
    return build_strategy(cfg, local_only)


def run_phase(grid: Grid, cfg: ExperimentConfig, local_only: bool = False) -> list[dict]:
    """Run one phase (see :func:`phase_strategy`) on ``grid``; return its history.

    Raises
    ------
    RuntimeError
        If not a single round completed.
    """
    strategy = phase_strategy(cfg, local_only)
    strategy.start(grid=grid, num_rounds=cfg.num_rounds)
    if not strategy.history:
        raise RuntimeError(f"the {'local-only' if local_only else 'main'} phase ended without "
                           "a single completed round; see the log above")
    return strategy.history


def run_experiment_on_grid(grid: Grid, settings: AppSettings) -> dict:
    """Run the experiment and its baseline on ``grid``; write results, report and plot.

    Parameters
    ----------
    grid : Grid
        The ServerApp's grid.
    settings : AppSettings
        The experiment and output folder (from the run config).

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    cfg = settings.experiment
    if cfg.api != "message":
        raise ConfigError(f"the Flower App runs the Message API face, but {settings.config_path} "
                          f"sets api = {cfg.api!r}; use flhet-sim for the compat face")
    split = build_split(cfg)  # fail fast on data problems
    log(INFO, "flhet: %s from %s, %s clients, proxy %s, global test %s", cfg.name,
        settings.config_path, len(split.clients), len(split.proxy_x), len(split.global_test))
    wait_for_nodes(grid, cfg.data.num_clients)
    start = time.perf_counter()
    history = run_phase(grid, cfg)
    log(INFO, "flhet: local-only baseline: same clients and epochs, kd_weight=0")
    baseline = run_phase(grid, cfg, local_only=True)
    results = assemble_results(cfg, history, baseline, time.perf_counter() - start)
    write_results_json(results, settings.out_dir)
    write_report(results, settings.out_dir)
    log(INFO, "flhet: results written to %s", settings.out_dir)
    return results


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``: read the run config, run, write results."""
    run_experiment_on_grid(grid, app_settings(context.run_config))


__all__ = ["LOCAL_ONLY_PHASE", "NODE_WAIT_SECONDS", "app", "phase_strategy",
           "run_experiment_on_grid", "run_phase", "wait_for_nodes"]
