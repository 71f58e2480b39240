"""Repeat an experiment over several seeds and summarise the margins over local-only.

Each seed re-draws the partition, the proxy subsets and every model's initialisation.
The local-only baseline runs inside every seed's invocation, so each margin compares
runs made with the same data, models and CPU budget.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .config import ExperimentConfig
from .runner import run_experiment


def summarize_seeds(results: list[dict]) -> dict:
    """Mean and standard deviation of the final accuracies and margins over seeds.

    Parameters
    ----------
    results : list[dict]
        ``results.json`` contents, one per seed, each with a local-only baseline.

    Returns
    -------
    dict
        ``seeds``, and for each of ``client_accuracy_points``, ``global_accuracy_points``
        (margins over local-only, in points), ``client_accuracy_mean``,
        ``global_accuracy_mean`` (final, fractions) and ``wall_seconds``: a dict with
        ``values``, ``mean`` and ``std`` (population std over seeds).
    """
    if not results or any("margins" not in r for r in results):
        raise ValueError("every result needs a local-only baseline (margins)")
    columns = {
        "client_accuracy_points": [r["margins"]["client_accuracy_points"] for r in results],
        "global_accuracy_points": [r["margins"]["global_accuracy_points"] for r in results],
        "client_accuracy_mean": [r["final"]["client_accuracy_mean"] for r in results],
        "global_accuracy_mean": [r["final"]["global_accuracy_mean"] for r in results],
        "local_only_client_accuracy": [r["baselines"]["local_only"]["client_accuracy_mean"]
                                       for r in results],
        "local_only_global_accuracy": [r["baselines"]["local_only"]["global_accuracy_mean"]
                                       for r in results],
        "wall_seconds": [r["wall_seconds"] for r in results],
    }
    summary: dict = {"seeds": [r["seed"] for r in results]}
    for name, values in columns.items():
        arr = np.asarray(values, dtype=float)
        summary[name] = {"values": arr.tolist(), "mean": float(arr.mean()), "std": float(arr.std())}
    return summary


def format_summary(summary: dict) -> str:
    """A plain-text table of :func:`summarize_seeds`."""
    lines = [f"seeds: {summary['seeds']}"]
    for name in ("client_accuracy_points", "global_accuracy_points", "client_accuracy_mean",
                 "global_accuracy_mean", "local_only_client_accuracy",
                 "local_only_global_accuracy", "wall_seconds"):
        s = summary[name]
        values = ", ".join(f"{v:.4g}" for v in s["values"])
        lines.append(f"{name:28s} mean {s['mean']:9.4f}  std {s['std']:8.4f}   [{values}]")
    return "\n".join(lines)


def run_seeds(cfg: ExperimentConfig, seeds: list[int], out_dir: str | Path) -> dict:
    """Run ``cfg`` once per seed into ``out_dir/seed_<s>``; write and print the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    for seed in seeds:
        print(f"== seed {seed}", flush=True)
        results.append(run_experiment(cfg.with_overrides(seed=seed), out / f"seed_{seed}"))
    summary = summarize_seeds(results)
    summary["total_wall_seconds"] = time.perf_counter() - t0
    summary["cpu_count"] = os.cpu_count()
    summary["threads_per_client"] = cfg.simulation.threads_per_client
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"total wall time {summary['total_wall_seconds']:.0f} s on {os.cpu_count()} CPUs, "
          f"{cfg.simulation.threads_per_client} thread(s) per client")
    return summary
