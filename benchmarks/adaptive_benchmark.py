"""Rounds to target accuracy: adaptive vs unadapted aggregation weights, in one run.

Runs the same experiment per seed with audit-only and with active
:class:`~flhet_strategies.weighting.adaptive.AdaptiveWeighting` and compares the rounds
each needs to a target global accuracy, e.g.
``python benchmarks/adaptive_benchmark.py --out outputs/adaptive_fmnist``. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from flhet_strategies.weighting.adaptive import AdaptiveWeighting
from simulations.convergence import accuracy_series, compare
from simulations.config import ExperimentConfig, load_config, parse_overrides

DEFAULT_CONFIG = "simulations/configs/fmnist_free_rider.toml"
DEFAULT_OVERRIDES = {"num_rounds": 12, "contribution.enabled": False}
"""Applied to the default config only: fewer rounds, sample-count weights."""

ADAPTIVE_PHASE = "adaptive"
"""Phase name of the adaptive run (clients keep one model per phase)."""


def _adaptive_options(args: argparse.Namespace, cfg: ExperimentConfig) -> dict:
    return {"smoothing": args.smoothing, "power": args.power, "min_factor": args.min_factor,
            "temperature": cfg.strategy.temperature}


def run_pair(cfg: ExperimentConfig, options: dict) -> dict:
    """Run the unadapted and the adaptive federation of one config; return both."""
    import torch

    from simulations.experiment import build_strategy
    from simulations.runner import simulate_strategy

    torch.set_num_threads(1)
    out = {}
    for name, adapt in (("unadapted", False), ("adaptive", True)):
        def factory(adapt=adapt):
            strategy = build_strategy(cfg, phase=ADAPTIVE_PHASE if adapt else None)
            core = strategy.core
            core.weight_fn = AdaptiveWeighting(core.weight_fn, use_for_weights=adapt, **options)
            return strategy

        start = time.perf_counter()
        strategy = simulate_strategy(cfg, strategy_factory=factory)
        out[name] = {"history": strategy.history,
                     "stability": strategy.core.weight_fn.history,
                     "seconds": time.perf_counter() - start}
    return out


def summarize(cfg: ExperimentConfig, runs: dict, target_fraction: float,
              target_accuracy: float | None) -> dict:
    """Accuracy series, rounds-to-target and the free-riders' weights of one seed."""
    free_riders = [str(i) for i, role in enumerate(cfg.client_roles()) if role == "free_rider"]
    result = {"seed": cfg.seed, "free_riders": free_riders}
    for label, exclude in (("all", ()), ("without_free_riders", free_riders)):
        if label == "without_free_riders" and not free_riders:
            continue
        series = {name: accuracy_series(runs[name]["history"], exclude) for name in runs}
        result[label] = {"series": series, **compare(series["unadapted"], series["adaptive"],
                                                     target_fraction, target_accuracy)}
    result["weights"] = {name: [{"round": e["round"], **e.get("weights", {})}
                                for e in sorted(runs[name]["history"], key=lambda e: e["round"])]
                         for name in runs}
    result["stability"] = {name: runs[name]["stability"] for name in runs}
    result["seconds"] = {name: runs[name]["seconds"] for name in runs}
    return result


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:6.2f}"


def print_seed(summary: dict) -> None:
    """Per-round table and rounds-to-target of one seed."""
    fr = summary["free_riders"]
    print(f"\n=== seed {summary['seed']}  (free-riders: {', '.join(fr) or 'none'}) ===")
    head = "round | unadapted | adaptive "
    if "without_free_riders" in summary:
        head += "| unadapted w/o FR | adaptive w/o FR | FR weight unadapted | FR weight adaptive"
    print(head)
    all_series = summary["all"]["series"]
    rest = summary.get("without_free_riders", {}).get("series")
    weights = summary["weights"]
    for i, (server_round, acc_un) in enumerate(all_series["unadapted"]):
        line = f"{server_round:5d} |    {_fmt(acc_un)} |  {_fmt(all_series['adaptive'][i][1])} "
        if rest is not None:
            w_un = sum(weights["unadapted"][i].get(c, 0.0) for c in fr)
            w_ad = sum(weights["adaptive"][i].get(c, 0.0) for c in fr)
            line += (f"|           {_fmt(rest['unadapted'][i][1])} |          "
                     f"{_fmt(rest['adaptive'][i][1])} |              {w_un:6.3f} |"
                     f"             {w_ad:6.3f}")
        print(line)
    for label in ("all", "without_free_riders"):
        if label in summary:
            s = summary[label]
            ratio = "n/a" if s["ratio"] is None else f"{s['ratio']:.2f}"
            print(f"[{label}] target {100 * s['target']:.2f}% | rounds to target: unadapted "
                  f"{s['unadapted_rounds']}, adaptive {s['adaptive_rounds']}, ratio {ratio} | "
                  f"final {100 * s['unadapted_final']:.2f}% vs {100 * s['adaptive_final']:.2f}% | "
                  f"mean over rounds {100 * s['unadapted_mean']:.2f}% vs "
                  f"{100 * s['adaptive_mean']:.2f}%")
    print(f"wall seconds: unadapted {summary['seconds']['unadapted']:.0f}, "
          f"adaptive {summary['seconds']['adaptive']:.0f}")


def _load(args: argparse.Namespace) -> tuple[ExperimentConfig, dict]:
    overrides = dict(DEFAULT_OVERRIDES) if args.config is None else {}
    for entry in args.set:
        overrides.update(parse_overrides(entry))
    cfg = load_config(args.config or Path(__file__).resolve().parents[1] / DEFAULT_CONFIG)
    return (cfg.with_overrides(**overrides) if overrides else cfg), overrides


def _output_path(out: str) -> Path:
    path = Path(out)
    if path.suffix == ".json":
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    path.mkdir(parents=True, exist_ok=True)
    return path / "adaptive_results.json"


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; returns what it writes to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help=f"experiment TOML (default: "
                        f"{DEFAULT_CONFIG} with {DEFAULT_OVERRIDES})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. num_rounds=8 (repeatable)")
    parser.add_argument("--out", required=True,
                        help="JSON file, or folder for adaptive_results.json")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds, each runs both "
                        "variants (default: the config's seed)")
    parser.add_argument("--target-fraction", type=float, default=0.95,
                        help="target = this share of the unadapted final global accuracy")
    parser.add_argument("--target-accuracy", type=float, default=None,
                        help="absolute target accuracy in [0, 1] instead")
    parser.add_argument("--smoothing", type=float, default=0.5)
    parser.add_argument("--power", type=float, default=1.0)
    parser.add_argument("--min-factor", type=float, default=0.0)
    args = parser.parse_args(argv)
    if not 0.0 < args.target_fraction <= 1.0:
        parser.error(f"--target-fraction must lie in (0, 1], got {args.target_fraction}")
    try:
        cfg, overrides = _load(args)
        seeds = [cfg.seed] if args.seeds is None else [
            int(s) for s in args.seeds.split(",") if s.strip()]
        options = _adaptive_options(args, cfg)
        AdaptiveWeighting(**options)  # fail fast on bad options, before Ray starts
    except (FileNotFoundError, ValueError) as err:  # ConfigError is a ValueError
        parser.error(str(err))
    path = _output_path(args.out)
    summaries = []
    for seed in seeds:
        seed_cfg = cfg.with_overrides(seed=seed)
        summaries.append(summarize(seed_cfg, run_pair(seed_cfg, options), args.target_fraction,
                                   args.target_accuracy))
        print_seed(summaries[-1])
    results = {"config": args.config or DEFAULT_CONFIG, "overrides": overrides,
               "adaptive": options, "target_fraction": args.target_fraction,
               "target_accuracy": args.target_accuracy, "seeds": summaries}
    if len(summaries) > 1:
        print("\n=== all seeds ===")
        for label in ("all", "without_free_riders"):
            rows = [s[label] for s in summaries if label in s]
            if rows:
                ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
                gain = sum(r["adaptive_mean"] - r["unadapted_mean"] for r in rows) / len(rows)
                print(f"[{label}] rounds to target (unadapted -> adaptive): "
                      + ", ".join(f"{r['unadapted_rounds']}->{r['adaptive_rounds']}" for r in rows)
                      + (f" | mean ratio {sum(ratios) / len(ratios):.2f}" if ratios else "")
                      + f" | mean accuracy over rounds: {100 * gain:+.2f} points")
    path.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nresults written to {path}")
    return results


if __name__ == "__main__":
    main()
