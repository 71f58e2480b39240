"""Pick a Shapley estimator by name, or automatically by cohort size and budget."""

from __future__ import annotations

from typing import Any

from flhet_strategies.weighting.contribution.estimator import (
    RandomState,
    ShapleyEstimator,
    ShapleyResult,
)
from flhet_strategies.weighting.contribution.exact import ExactShapley
from flhet_strategies.weighting.contribution.games import CoalitionUtility
from flhet_strategies.weighting.contribution.gtg import GTGShapley
from flhet_strategies.weighting.contribution.permutation import PermutationShapley
from flhet_strategies.weighting.contribution.stratified import (
    RegressionAdjustedSVARM,
    StratifiedSVARM,
)

__all__ = ["ESTIMATOR_NAMES", "estimate_shapley", "make_estimator"]

ESTIMATOR_NAMES = (
    "auto",
    "exact",
    "permutation",
    "permutation_antithetic",
    "gtg",
    "stratified_svarm",
    "regression_adjusted_svarm",
)


def make_estimator(
    method: str = "auto", *, budget: int = 2000, n_players: int | None = None, **options: Any
) -> ShapleyEstimator:
    """Build a Shapley estimator by name.

    Parameters
    ----------
    method : str, default="auto"
        One of :data:`ESTIMATOR_NAMES`. ``"auto"`` is exact when all
        ``2**n_players`` coalitions fit in the budget, else regression-
        adjusted stratified SVARM (the most accurate per evaluation in
        ``benchmarks/shapley_benchmark.py``).
    budget : int, default=2000
        Utility evaluations for sampling estimators.
    n_players : int, optional
        Required for ``"auto"``.
    **options
        Passed to the estimator's constructor (e.g. ``truncation_tol`` for
        ``"gtg"``, ``max_players`` for ``"exact"``).

    Returns
    -------
    ShapleyEstimator
        The estimator.

    Raises
    ------
    ValueError
        For an unknown method, or ``"auto"`` without ``n_players``.
    """
    if method == "auto":
        if n_players is None:
            raise ValueError('method="auto" needs n_players to choose between exact and sampling.')
        method = "exact" if 2**n_players <= budget else "regression_adjusted_svarm"
    if method == "exact":
        return ExactShapley(**options)
    if method in ("permutation", "permutation_antithetic"):
        return PermutationShapley(budget, antithetic=method.endswith("antithetic"), **options)
    if method == "gtg":
        return GTGShapley(budget, **options)
    if method == "stratified_svarm":
        return StratifiedSVARM(budget, **options)
    if method == "regression_adjusted_svarm":
        return RegressionAdjustedSVARM(budget, **options)
    raise ValueError(f"Unknown Shapley estimator {method!r}; choose one of {ESTIMATOR_NAMES}.")


def estimate_shapley(
    utility: CoalitionUtility,
    method: str = "auto",
    *,
    budget: int = 2000,
    rng: RandomState = None,
    **options: Any,
) -> ShapleyResult:
    """Estimate Shapley values of a game in one call.

    Parameters
    ----------
    utility : CoalitionUtility
        The game.
    method : str, default="auto"
        See :func:`make_estimator`.
    budget : int, default=2000
        Utility evaluations for sampling estimators.
    rng : np.random.Generator or int or None
        Randomness for sampling estimators.
    **options
        Passed to the estimator's constructor.

    Returns
    -------
    ShapleyResult
        The estimate.
    """
    estimator = make_estimator(method, budget=budget, n_players=utility.n_players, **options)
    return estimator.estimate(utility, rng=rng)
