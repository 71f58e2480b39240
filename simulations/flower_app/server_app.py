"""ServerApp of the flhet Flower App: the experiment and its baselines on one grid.

Every phase of the experiment (:func:`simulations.phases.experiment_phases`) runs on the
same federation under its own phase name; the results are written exactly as
``flhet-sim`` writes them. See docs/flower_app.md.
"""

from __future__ import annotations

import time
from logging import INFO

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from simulations.config import ConfigError
from simulations.contribution_report import write_contributions_png
from simulations.experiment import LOCAL_ONLY_PHASE, build_split
from simulations.phases import (
    MAIN_PHASE,
    Phase,
    experiment_phases,
    results_from_phases,
    save_server_state,
)
from simulations.reporting import write_report, write_results_json

from . import AppSettings, app_settings

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


def run_phase(grid: Grid, phase: Phase):
    """Run one phase of the experiment on ``grid``; return its strategy.

    Raises
    ------
    RuntimeError
        If not a single round completed.
    """
    strategy = phase.build()
    strategy.start(grid=grid, num_rounds=phase.cfg.num_rounds, timeout=phase.cfg.round_timeout)
    if not strategy.history:
        raise RuntimeError(f"phase {phase.name!r} ended without a single completed round; "
                           "see the log above")
    return strategy


def run_experiment_on_grid(grid: Grid, settings: AppSettings) -> dict:
    """Run the experiment's phases on ``grid``; write results, report and plot.

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
    finished = {}
    for phase in experiment_phases(cfg):
        log(INFO, "flhet: phase %s: %s", phase.name, phase.label)
        began = time.perf_counter()
        finished[phase.name] = (run_phase(grid, phase), time.perf_counter() - began)
    results = results_from_phases(cfg, finished, time.perf_counter() - start)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    save_server_state(finished[MAIN_PHASE][0], settings.out_dir)
    write_results_json(results, settings.out_dir)
    write_report(results, settings.out_dir)
    if "contributions" in results:
        write_contributions_png(results, settings.out_dir)
    log(INFO, "flhet: results written to %s", settings.out_dir)
    return results


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``: read the run config, run, write results."""
    run_experiment_on_grid(grid, app_settings(context.run_config))


__all__ = ["LOCAL_ONLY_PHASE", "NODE_WAIT_SECONDS", "app", "run_experiment_on_grid",
           "run_phase", "wait_for_nodes"]
