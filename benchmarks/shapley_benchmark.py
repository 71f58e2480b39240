"""Benchmark of the Shapley estimators on a synthetic non-IID logit-consensus game.

Prints exact Shapley time for 10 clients, then each estimator's time, evaluations and
agreement (cosine, Spearman) with a high-budget reference for 50 clients. Run
``python benchmarks/shapley_benchmark.py [--quick]``. See docs/benchmarks.md.
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# The synthetic game is a test fixture (tests/synthetic_games.py), shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from flhet_strategies.weighting.contribution import (  # noqa: E402
    ExactShapley,
    GTGShapley,
    LogitConsensusUtility,
    PermutationShapley,
    RegressionAdjustedSVARM,
    StratifiedSVARM,
)
from synthetic_games import make_synthetic_logit_game  # noqa: E402

EstimateFn = Callable[[LogitConsensusUtility, int, int], tuple[np.ndarray, int]]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two value vectors."""
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two value vectors."""
    return float(spearmanr(a, b).statistic)


def time_exact(n_clients: int, repeats: int) -> tuple[float, int]:
    """Median seconds of exact Shapley on a fresh ``n_clients`` logit game."""
    game = make_synthetic_logit_game(n_clients, seed=1)
    consensus = game.consensus_utility()
    times, evaluations = [], 0
    for _ in range(repeats):
        utility = consensus.as_utility()
        start = time.perf_counter()
        result = ExactShapley().estimate(utility)
        times.append(time.perf_counter() - start)
        evaluations = result.n_evaluations
    return float(np.median(times)), evaluations


def reference_values(
    consensus: LogitConsensusUtility, seconds: float, chunk: int, permutations: int | None
) -> tuple[np.ndarray, int, float]:
    """Antithetic permutation sampling for about ``seconds`` of CPU time.

    With ``permutations`` given, exactly that many (rounded up to ``chunk``)
    instead, which reproduces a reference across runs (chunk ``k`` always
    uses seed ``10_000 + k``). Returns the mean estimate, the permutations
    used and the mean standard error per client.
    """
    utility = consensus.as_utility(memoize=False)
    estimates, errors = [], []
    start = time.process_time()
    seed = 10_000

    def more() -> bool:
        if permutations is not None:
            return len(estimates) * chunk < permutations
        return not estimates or time.process_time() - start < seconds

    while more():
        result = PermutationShapley(n_permutations=chunk, antithetic=True).estimate(
            utility, rng=seed
        )
        estimates.append(result.values)
        errors.append(result.info["std_error"])
        seed += 1
    n_chunks = len(estimates)
    mean_error = float(np.mean(np.sqrt(np.sum(np.square(errors), axis=0)) / n_chunks))
    return np.mean(estimates, axis=0), n_chunks * chunk, mean_error


def flhet_estimators() -> dict[str, Callable[[int], object]]:
    """The estimators of this package, by display name."""
    return {
        "permutation": lambda budget: PermutationShapley(budget),
        "permutation + reverse (antithetic)": lambda budget: PermutationShapley(
            budget, antithetic=True
        ),
        "GTG guided (no truncation)": lambda budget: GTGShapley(budget),
        "GTG guided, truncation 0.03": lambda budget: GTGShapley(budget, truncation_tol=0.03),
        "stratified SVARM (paper)": lambda budget: StratifiedSVARM(budget),
        "stratified SVARM + Neyman": lambda budget: StratifiedSVARM(budget, allocation="neyman"),
        "regression-adjusted SVARM (flhet default)": lambda budget: RegressionAdjustedSVARM(
            budget
        ),
    }


def shapiq_estimators(n_players: int) -> dict[str, Callable[[int, int], object]]:
    """shapiq's Shapley approximators, when shapiq is importable."""
    try:
        import shapiq  # noqa: F401
        from shapiq.approximator import (
            SVARM,
            KernelSHAP,
            LeverageSHAP,
            PermutationSamplingSV,
        )
    except ImportError:
        return {}
    return {
        "shapiq PermutationSamplingSV": lambda seed: PermutationSamplingSV(
            n_players, random_state=seed
        ),
        "shapiq SVARM": lambda seed: SVARM(n_players, random_state=seed),
        "shapiq KernelSHAP (paired)": lambda seed: KernelSHAP(
            n_players, pairing_trick=True, random_state=seed
        ),
        "shapiq LeverageSHAP": lambda seed: LeverageSHAP(n_players, random_state=seed),
    }  # shapiq's RegressionMSR needs xgboost (its "proxy" extra): left out


def run_flhet(make, consensus, budget, seed):
    """One flhet estimate: values, evaluations, CPU seconds."""
    utility = consensus.as_utility()
    start = time.process_time()
    result = make(budget).estimate(utility, rng=seed)
    return result.values, result.n_evaluations, time.process_time() - start


def run_shapiq(make, consensus, budget, seed):
    """One shapiq estimate: values, evaluations, CPU seconds."""
    calls = {"evaluations": 0}

    def game(coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        calls["evaluations"] += coalitions.shape[0]
        return consensus(coalitions) - consensus.empty_value

    start = time.process_time()
    values = make(seed).approximate(budget, game).get_n_order_values(1)
    return np.asarray(values, dtype=np.float64), calls["evaluations"], time.process_time() - start


def main() -> None:
    """Parse arguments, run the benchmark, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, short reference")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 5)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 2000, 5000])
    parser.add_argument(
        "--reference-seconds",
        type=float,
        default=None,
        help="CPU seconds for the reference (default 90, --quick 15)",
    )
    parser.add_argument(
        "--reference-permutations",
        type=int,
        default=None,
        help="fixed reference size instead of a time limit (reproducible across runs)",
    )
    parser.add_argument(
        "--only", default=None, help="run only estimators whose name contains this text"
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    n_seeds = args.seeds or (2 if args.quick else 5)
    reference_seconds = args.reference_seconds or (15.0 if args.quick else 90.0)

    print("== Exact Shapley, 10 clients, 2,000 samples, 10 classes (logit consensus) ==")
    seconds, evaluations = time_exact(10, repeats=3 if args.quick else 7)
    verdict = "meets" if seconds <= 0.1 else "MISSES"
    print(f"median {seconds * 1000:.1f} ms for {evaluations} coalitions ({verdict} <= 100 ms)\n")

    game = make_synthetic_logit_game(args.clients, args.samples, args.classes, seed=0)
    consensus = game.consensus_utility()
    n_players = consensus.n_players
    grand = consensus(np.ones((1, n_players), dtype=bool))[0]
    print(
        f"== {n_players} clients, {args.samples} samples, {args.classes} classes: "
        f"v(N) = {grand:.4f}, v(empty) = {consensus.empty_value:.4f} =="
    )
    start = time.process_time()
    reference, n_permutations, mean_error = reference_values(
        consensus, reference_seconds, chunk=200, permutations=args.reference_permutations
    )
    reference_cpu = time.process_time() - start
    print(
        f"reference: {n_permutations} permutations ({n_permutations // 2} antithetic pairs, "
        f"{n_permutations * (n_players - 1)} evaluations, {reference_cpu:.0f} s CPU); "
        f"mean standard error {mean_error:.2e} vs mean |value| {np.abs(reference).mean():.2e}"
    )
    alone = consensus(np.eye(n_players, dtype=bool)) - consensus.empty_value
    print(
        f"score each client alone ({n_players} evaluations): cosine {cosine(alone, reference):.3f}"
        f" / Spearman {spearman(alone, reference):.3f}\n"
    )

    rows = [(name, make, run_flhet) for name, make in flhet_estimators().items()]
    rows += [(name, make, run_shapiq) for name, make in shapiq_estimators(n_players).items()]
    if len(rows) == len(flhet_estimators()):
        print("(shapiq not importable here: its rows are skipped; see the module docstring)\n")
    if args.only:
        rows = [row for row in rows if args.only.lower() in row[0].lower()]
    header = f"{'estimator':44s}" + "".join(
        f" | {budget:>5d} evals: cos / Spear / evals / CPU s" for budget in args.budgets
    )
    print(header)
    print("-" * len(header))
    for name, make, runner in rows:
        cells = []
        for budget in args.budgets:
            scores = []
            for seed in range(n_seeds):
                values, used, cpu = runner(make, consensus, budget, seed)
                scores.append((cosine(values, reference), spearman(values, reference), used, cpu))
            cos_mean, spear_mean, used_mean, cpu_mean = np.mean(scores, axis=0)
            cells.append(
                f" | {cos_mean:14.3f} / {spear_mean:5.3f} / {used_mean:5.0f} / {cpu_mean:5.2f}"
            )
        print(f"{name:44s}" + "".join(cells), flush=True)
    print(
        f"\nmeans over {n_seeds} seeds; evaluations = utility calls on distinct coalitions "
        "(cache misses); CPU time includes the utility (single thread)."
    )


if __name__ == "__main__":
    main()
