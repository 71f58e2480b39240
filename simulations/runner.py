"""Run an experiment in Flower's simulation engine and write its results.

:func:`run_experiment` runs every phase of the experiment
(:func:`simulations.phases.experiment_phases`: the configured strategy, the local-only
baseline -- the same clients, models, seeds and private epochs with the distillation
weight set to zero, so nobody learns from anybody -- and the baselines its config asks
for) in the same invocation, one Flower simulation each, then writes ``results.json``,
``report.md`` and ``accuracy.png`` (and ``server_state.npz``) to the output folder. The
results are rewritten after every round and the run can be resumed after a crash from
``<out>/checkpoint`` (docs/resume.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from flhet_strategies.faces.checkpoint import write_atomically
from flhet_strategies.faces.driver import RoundDriver
from flhet_strategies.faces.views import FaceViews

from .config import ConfigError, ExperimentConfig, from_dict
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

CHECKPOINT_DIR = "checkpoint"
"""Sub-folder of the output folder that holds what ``--resume`` needs."""


class ResumeError(RuntimeError):
    """The output folder holds no run to resume, or a run of another configuration."""


class FinishedRun(FaceViews):
    """A phase finished in an earlier process, read back from its checkpoint (the views
    :func:`~simulations.phases.results_from_phases` reads of a strategy)."""

    def __init__(self, driver: RoundDriver) -> None:
        self.driver = driver


def simulate_strategy(cfg: ExperimentConfig, local_only: bool = False,
                      sample_count_weighting: bool = False, *, strategy_factory=None,
                      key_files=None, checkpoint: Path | None = None, resume: bool = False,
                      on_round_end=None, client_dir: Path | None = None):
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
        strategy = (strategy_factory() if strategy_factory is not None
                    else build_strategy(cfg, local_only, sample_count_weighting, key_files))
        strategy.driver.checkpoint, strategy.driver.on_round_end = checkpoint, on_round_end
        if resume and checkpoint is not None:
            strategy.resume(checkpoint)
        sink["strategy"] = strategy
        return strategy

    if cfg.api == "message":
        server_app = ServerApp()

        @server_app.main()
        def main(grid, context):
            strategy_for_run().start(grid=grid, num_rounds=cfg.num_rounds,
                                      timeout=cfg.round_timeout)
    else:
        from flwr.server import ServerAppComponents, ServerConfig

        def server_fn(context):
            strategy = strategy_for_run()
            return ServerAppComponents(strategy=strategy,
                                       config=ServerConfig(num_rounds=strategy.remaining_rounds,
                                                          round_timeout=cfg.round_timeout))

        server_app = ServerApp(server_fn=server_fn)

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(server_app=server_app, client_app=make_client_app(cfg, key_files, client_dir),
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


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False) -> dict:
    """Run the experiment's phases; write results, report, plots and server state.

    ``results.json``, ``report.md`` and ``accuracy.png`` are rewritten after every round
    (``"complete": false`` until the last phase ends); ``<out>/checkpoint`` keeps the
    server's and the clients' state after every round and the finished phases.

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment.
    out_dir : str or Path
        Output folder (created if missing).
    resume : bool (default: False)
        Continue the run in ``out_dir`` after its last finished round (the finished
        phases are not run again); without it an earlier checkpoint there is discarded.

    Returns
    -------
    dict
        The content of ``results.json``.

    Raises
    ------
    ResumeError
        With ``resume``, if ``out_dir`` holds no checkpoint or one of another config.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("flhet")
    split = build_split(cfg)  # fail fast on data problems, before Ray starts
    log.info("data: %s clients, proxy %s, global test %s", len(split.clients),
             len(split.proxy_x), len(split.global_test))
    ckpt = out / CHECKPOINT_DIR
    done = _open_checkpoint(cfg, ckpt, resume)
    key_files = paillier_key_files(cfg, out, resume=resume) if cfg.paillier.enabled else None
    t0 = time.perf_counter() - sum(done.values())   # wall time includes earlier processes
    finished = {name: (FinishedRun(RoundDriver.resume(ckpt / f"{name}.pkl")), seconds)
                for name, seconds in done.items()}

    def rewrite(running: str, started: float, driver: RoundDriver, _round: int) -> None:
        now = time.perf_counter()
        partial = {**finished, running: (FinishedRun(driver), now - started)}
        _write_partial(cfg, partial, running, now - t0, key_files, out)

    for phase in experiment_phases(cfg):
        if phase.name in finished:
            log.info("phase %s: finished before, read from %s", phase.name, ckpt)
            continue
        log.info("phase %s: %s", phase.name, phase.label)
        started = time.perf_counter()
        strategy = simulate_strategy(
            phase.cfg, strategy_factory=lambda p=phase: p.build(key_files), key_files=key_files,
            checkpoint=ckpt / f"{phase.name}.pkl", resume=resume,
            on_round_end=lambda d, r, n=phase.name, t=started: rewrite(n, t, d, r),
            client_dir=ckpt / "clients")
        finished[phase.name] = (strategy, time.perf_counter() - started)
        done[phase.name] = finished[phase.name][1]
        write_atomically(ckpt / "phases.json", json.dumps(done, indent=1).encode())
    results = results_from_phases(cfg, finished, time.perf_counter() - t0, key_files)
    results["complete"] = True
    save_server_state(finished[MAIN_PHASE][0], out)
    write_results_json(results, out)
    write_report(results, out)
    if "contributions" in results:
        write_contributions_png(results, out)
    return results


def _open_checkpoint(cfg: ExperimentConfig, ckpt: Path, resume: bool) -> dict:
    # The finished phases (name -> seconds) of the run to resume; a fresh run clears ckpt.
    config = _as_json(cfg)
    if not resume:
        shutil.rmtree(ckpt, ignore_errors=True)
        write_atomically(ckpt / "config.json", json.dumps(config, indent=1).encode())
        return {}
    if not (ckpt / "config.json").is_file():
        raise ResumeError(f"nothing to resume: {ckpt / 'config.json'} does not exist (run "
                          "without --resume to start)")
    try:   # read through the config loader: sections added since then get their defaults
        saved = _as_json(from_dict(json.loads((ckpt / "config.json").read_text())))
    except (ValueError, TypeError, KeyError, ConfigError) as err:
        raise ResumeError(f"{ckpt / 'config.json'} is not a readable configuration: {err}"
                          ) from err
    if saved != config:
        changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise ResumeError(f"the run in {ckpt.parent} used another configuration (differs in "
                          f"{', '.join(changed)}); resume with the same config and --set "
                          "options, or start afresh without --resume")
    phases = ckpt / "phases.json"
    return json.loads(phases.read_text()) if phases.is_file() else {}


def _as_json(cfg: ExperimentConfig) -> dict:
    # the config as it reads back from JSON (tuples as lists, paths as strings)
    return json.loads(json.dumps(cfg.to_dict(), default=str))


def _write_partial(cfg, partial: dict, running: str, seconds: float, key_files,
                   out: Path) -> None:
    # results.json and the report of a run in progress (the phases evaluated so far)
    evaluated = {name: run for name, run in partial.items()
                 if any(e.get("client_accuracy_mean") is not None for e in run[0].history)}
    if MAIN_PHASE not in evaluated:
        return
    try:   # a report that cannot be formed yet must not stop the run
        results = results_from_phases(cfg, evaluated, seconds, key_files)
    except (KeyError, IndexError, ZeroDivisionError, TypeError) as err:
        logging.getLogger("flhet").warning("no partial results after this round: %s", err)
        return
    results.update(complete=False, running_phase=running)
    write_results_json(results, out)
    write_report(results, out)
