"""``flhet-sim``: run flhet experiments from a TOML config.

Examples
--------
``flhet-sim run --config simulations/configs/fmnist_hetero.toml --out outputs/fmnist``
``flhet-sim run --config ... --out ... --set num_rounds=5 --set recipe.kd_weight=0.3``
``flhet-sim run --config ... --out ... --resume`` (after a crash: continue the run in ``--out``)
``flhet-sim bench --config simulations/configs/fmnist_hetero.toml --out outputs/bench --seeds 0,1,2``
``flhet-sim compare --config simulations/configs/fmnist_compare.toml --out outputs/compare --seeds 0,1,2``
"""

from __future__ import annotations

import argparse
import shlex
import json
import logging
import sys

from .config import ConfigError, load_config, parse_overrides


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        ((key, value),) = parse_overrides(shlex.quote(text)).items()
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return key, value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(prog="flhet-sim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment and its local-only baseline")
    run.add_argument("--config", required=True, help="experiment TOML file")
    run.add_argument("--out", required=True, help="output folder for results.json, report.md, accuracy.png")
    run.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                     metavar="KEY=VALUE", help="override a config entry, e.g. recipe.kd_weight=0.3")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out after its last finished round "
                          "(same --config and --set options)")
    bench = sub.add_parser("bench", help="repeat an experiment over seeds; print mean and spread of the margins")
    bench.add_argument("--config", required=True, help="experiment TOML file")
    bench.add_argument("--out", required=True, help="output folder; one sub-folder per seed")
    bench.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                       metavar="KEY=VALUE", help="override a config entry")
    compare = sub.add_parser("compare", help="run every strategy of a [compare] config on one "
                             "federation over seeds; write comparison.json/.md/.png")
    compare.add_argument("--config", required=True, help="comparison TOML file (with [compare])")
    compare.add_argument("--out", required=True,
                         help="output folder; one <strategy>/seed<k> sub-folder per run "
                              "(finished runs there are reused)")
    compare.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    compare.add_argument("--set", dest="overrides", action="append", default=[],
                         type=_parse_override, metavar="KEY=VALUE",
                         help="override a config entry of every strategy, e.g. num_rounds=5")
    return parser


def _seeds(text: str) -> list[int] | None:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        print(f"flhet-sim: --seeds must be comma-separated integers, got {text!r}",
              file=sys.stderr)
        return None
    return seeds


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``flhet-sim`` console script."""
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s flhet: %(message)s"))
    logger = logging.getLogger("flhet")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        if args.command == "compare":
            from .compare_config import load_comparison

            comparison = load_comparison(args.config, dict(args.overrides))
        else:
            cfg = load_config(args.config)
            if args.overrides:
                cfg = cfg.with_overrides(**dict(args.overrides))
    except (FileNotFoundError, ConfigError) as err:
        print(f"flhet-sim: {err}", file=sys.stderr)
        return 2
    if args.command == "compare":
        return _compare(comparison, args)
    if args.command == "bench":
        from .seed_benchmark import run_seeds

        seeds = _seeds(args.seeds)
        if seeds is None:
            return 2
        run_seeds(cfg, seeds, args.out)
        return 0
    from .runner import ResumeError, run_experiment

    try:
        results = run_experiment(cfg, args.out, resume=args.resume)
    except ResumeError as err:
        print(f"flhet-sim: {err}", file=sys.stderr)
        return 2
    summary = {"final": results["final"], "margins": results.get("margins"),
               "wall_seconds": round(results["wall_seconds"], 1)}
    print(json.dumps(summary, indent=2))
    print(f"results written to {args.out}/results.json")
    return 0


def _compare(comparison, args) -> int:
    from .compare import run_comparison
    from .compare_report import render_comparison_markdown
    from .runner import ResumeError

    seeds = _seeds(args.seeds)
    if seeds is None:
        return 2
    try:
        summary = run_comparison(comparison, seeds, args.out)
    except ResumeError as err:
        print(f"flhet-sim: {err}", file=sys.stderr)
        return 2
    print(render_comparison_markdown(summary))
    print(f"comparison written to {args.out}/comparison.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
