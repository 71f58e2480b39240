"""Run every strategy of a comparison on one federation, over seeds, and summarise.

Each (strategy, seed) is one ``flhet-sim run`` (:func:`~simulations.runner.run_experiment`)
into ``<out>/<strategy>/seed<k>/``; a finished run found there (``"complete": true``, same
config) is read back instead of run again, an interrupted one is resumed, so an
interrupted comparison continues. Every
run also trains its local-only twin (the runner always does); the comparison's
``local_only`` row and the win rates take the twin of the first strategy's runs.
Writes ``comparison.json``, ``comparison.md`` and ``comparison.png`` (docs/compare.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from flhet_strategies.faces.checkpoint import write_atomically

from .compare_config import Comparison
from .compare_report import render_comparison_markdown, render_comparison_png
from .compare_summary import summarize_comparison, summarize_strategy, twin_margins
from .config import ConfigError, ExperimentConfig, from_dict
from .experiment import LOCAL_ONLY_PHASE
from .phases import MAIN_PHASE
from .reporting import RESULTS_FILENAME, read_results_json
from .runner import CHECKPOINT_DIR, ResumeError, _as_json, run_experiment

COMPARISON_FILES = ("comparison.json", "comparison.md", "comparison.png")


def run_dir(out_dir: str | Path, strategy: str, seed: int) -> Path:
    """Where the run of ``strategy`` with ``seed`` writes its results."""
    return Path(out_dir) / strategy / f"seed{seed}"


def finished_run(cfg: ExperimentConfig, folder: Path) -> dict | None:
    """The ``results.json`` of a finished run of ``cfg`` in ``folder``, else None.

    Parameters
    ----------
    cfg : ExperimentConfig
        The run's configuration.
    folder : Path
        Its output folder.

    Raises
    ------
    ResumeError
        If ``folder`` holds a run (finished or interrupted) of another configuration.
    """
    results_path, config_path = folder / RESULTS_FILENAME, folder / CHECKPOINT_DIR / "config.json"
    results = read_results_json(folder) if results_path.is_file() else None
    if config_path.is_file():      # what the runner saved when the run started
        saved, source = json.loads(config_path.read_text()), config_path
    elif results is not None:
        saved, source = results["config"], results_path
    else:
        return None
    try:   # through the loader, as the runner's resume does: new sections get defaults
        saved = _as_json(from_dict(saved))
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise ResumeError(f"{source} holds no readable configuration: {err}") from err
    config = _as_json(cfg)
    if saved != config:
        changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise ResumeError(f"{folder} holds a run of another configuration (differs in "
                          f"{', '.join(changed)}): use another --out, or delete that folder to "
                          "run it again")
    return results if results is not None and results.get("complete") else None


def phase_seconds(folder: Path, results: dict) -> dict[str, float | None]:
    """Seconds of the run's ``main`` and ``local_only`` phases (its checkpoint's
    ``phases.json``; without it the main phase gets the run's whole wall time)."""
    path = folder / CHECKPOINT_DIR / "phases.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    return {MAIN_PHASE: done.get(MAIN_PHASE, results.get("wall_seconds")),
            LOCAL_ONLY_PHASE: done.get(LOCAL_ONLY_PHASE)}


def run_comparison(comparison: Comparison, seeds: list[int], out_dir: str | Path) -> dict:
    """Run (or read back) every strategy with every seed; write the comparison files.

    Parameters
    ----------
    comparison : Comparison
        The strategies and their configs (:func:`~simulations.compare_config.load_comparison`).
    seeds : list[int]
        The seeds; each re-draws the partition, proxy subsets and model initialisations,
        the same for every strategy.
    out_dir : str or Path
        Output folder: ``comparison.json``, ``comparison.md``, ``comparison.png`` and one
        ``<strategy>/seed<k>/`` folder per run.

    Returns
    -------
    dict
        The ``comparison.json`` content.

    Raises
    ------
    ResumeError
        If a run's folder holds a run of another configuration.
    """
    if not seeds:
        raise ValueError("need at least one seed")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("flhet")
    names = list(comparison.strategies)
    t0 = time.perf_counter()
    runs: dict[str, list[tuple[dict, dict]]] = {name: [] for name in names}
    for i, name in enumerate(names, 1):
        for j, seed in enumerate(seeds, 1):
            cfg = comparison.strategies[name].with_overrides(seed=seed)
            folder = run_dir(out, name, seed)
            results = finished_run(cfg, folder)
            resume = results is None and (folder / CHECKPOINT_DIR / "config.json").is_file()
            state = ("reused the finished run" if results is not None
                     else "resuming the interrupted run" if resume else "running")
            log.info("compare: strategy %d/%d (%s), seed %d/%d (seed %d): %s in %s, "
                     "%.0f s elapsed", i, len(names), name, j, len(seeds), seed, state,
                     folder, time.perf_counter() - t0)
            if results is None:
                results = run_experiment(cfg, folder, resume=resume)
            runs[name].append((results, phase_seconds(folder, results)))
    comparison_json = summarize_runs(runs, seeds, comparison.target_fraction)
    comparison_json.update(
        seeds=list(seeds), local_only_from=names[0], dataset=comparison.base.data.dataset,
        num_clients=comparison.base.data.num_clients, num_rounds=comparison.base.num_rounds,
        runs={name: [str(run_dir(out, name, s).relative_to(out)) for s in seeds]
              for name in names},
        total_wall_seconds=time.perf_counter() - t0, cpu_count=os.cpu_count())
    write_comparison(comparison_json, out)
    log.info("compare: %d strategies x %d seeds done in %.0f s; %s", len(names), len(seeds),
             comparison_json["total_wall_seconds"], out / COMPARISON_FILES[0])
    return comparison_json


def summarize_runs(runs: dict[str, list[tuple[dict, dict]]], seeds: list[int],
                   target_fraction: float = 0.9) -> dict:
    """The comparison summary from the runs' results (``results.json`` content).

    Parameters
    ----------
    runs : dict[str, list[tuple[dict, dict]]]
        Strategy -> per seed, (its ``results.json`` content, :func:`phase_seconds`); the
        first strategy's local-only twin is the ``local_only`` row and the baseline of
        every win rate; each strategy's row also gets ``own_twin``, its margins over its
        own runs' twins (:func:`~simulations.compare_summary.twin_margins`).
    seeds : list[int]
        The seeds, in the runs' order.
    target_fraction : float (default: 0.9)
        See :func:`~simulations.compare_summary.summarize_comparison`.
    """
    first = next(iter(runs.values()))
    local = [r["baselines"][LOCAL_ONLY_PHASE]["history"] for r, _ in first]
    rows = {}
    for name, per_seed in runs.items():
        histories = [r["history"] for r, _ in per_seed]
        rows[name] = summarize_strategy(histories, local, seeds,
                                        [s[MAIN_PHASE] for _, s in per_seed])
        rows[name]["own_twin"] = twin_margins(
            histories, [r["baselines"][LOCAL_ONLY_PHASE]["history"] for r, _ in per_seed])
    rows[LOCAL_ONLY_PHASE] = summarize_strategy(local, None, seeds,
                                                [s[LOCAL_ONLY_PHASE] for _, s in first])
    # the twin runs the first strategy's protocol with what it receives ignored: none of
    # its traffic is needed to train alone, so it has none to report
    rows[LOCAL_ONLY_PHASE].update(bytes_up_per_round=None, bytes_down_per_round=None)
    return summarize_comparison(rows, target_fraction)


def write_comparison(comparison_json: dict, out_dir: str | Path) -> list[Path]:
    """Write ``comparison.json``, ``comparison.md`` and ``comparison.png`` to ``out_dir``."""
    out = Path(out_dir)
    text = json.dumps(comparison_json, indent=2, allow_nan=False)
    contents = (text.encode(), render_comparison_markdown(comparison_json).encode(),
                render_comparison_png(comparison_json))
    return [write_atomically(out / name, data) for name, data in zip(COMPARISON_FILES, contents)]

