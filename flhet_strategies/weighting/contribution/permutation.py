"""Permutation (Monte Carlo) sampling of Shapley values, optionally antithetic."""

from __future__ import annotations

from typing import Optional

import numpy as np

from flhet_strategies.weighting.contribution.estimator import (
    Estimate,
    ShapleyEstimator,
    check_budget,
)
from flhet_strategies.weighting.contribution.games import CoalitionUtility, prefix_masks

__all__ = ["PermutationShapley", "marginals_from_chain"]


def marginals_from_chain(order: np.ndarray, chain_values: np.ndarray) -> np.ndarray:
    """Marginal contribution of every player along one permutation.

    Parameters
    ----------
    order : np.ndarray
        Permutation of ``0..n-1``.
    chain_values : np.ndarray
        Shape ``(n + 1,)``: values of the prefixes of ``order`` (empty first).

    Returns
    -------
    np.ndarray
        Shape ``(n,)``; entry ``i`` is ``v(prefix up to i) - v(prefix before i)``.
    """
    marginals = np.empty(order.shape[0], dtype=np.float64)
    marginals[order] = np.diff(chain_values)
    return marginals


class PermutationShapley(ShapleyEstimator):
    """Permutation sampling (Castro et al. 2009), optionally with antithetic pairs.

    Each sampled permutation gives every player one marginal contribution;
    the estimate is their mean, so it satisfies efficiency exactly and gives a
    null player exactly zero. With ``antithetic=True`` every permutation is
    followed by its reverse, which cancels much of the position noise. The
    result's ``info["std_error"]`` holds each player's standard error (over
    permutations, or over antithetic pairs); ``estimate`` raises ValueError
    when the budget cannot pay for a single permutation (pair).

    Parameters
    ----------
    budget : int, optional
        Maximum utility evaluations (uncached coalitions). A permutation of
        ``n`` players costs at most ``n - 1`` once ``v(∅)`` and ``v(N)`` are
        known; sampling stops before a permutation (or an antithetic pair)
        would exceed the budget.
    n_permutations : int, optional
        Stop after this many permutations. At least one of ``budget`` and
        ``n_permutations`` must be given; sampling stops at whichever comes
        first.
    antithetic : bool, default=False
        Pair each permutation with its reverse.
    max_permutations : int, optional
        Cap on permutations, reached only when memoization makes permutations
        free (tiny games with a large budget). Default: ``budget``.

    Examples
    --------
    >>> import numpy as np
    >>> from flhet_strategies.weighting.contribution.games import CoalitionUtility
    >>> additive = CoalitionUtility(lambda m: m @ np.array([1.0, 2.0, 3.0]), 3)
    >>> PermutationShapley(budget=50).estimate(additive, rng=0).values
    array([1., 2., 3.])
    """

    def __init__(
        self,
        budget: Optional[int] = None,
        *,
        n_permutations: Optional[int] = None,
        antithetic: bool = False,
        max_permutations: Optional[int] = None,
    ) -> None:
        if budget is None and n_permutations is None:
            raise ValueError("Give a budget (utility evaluations) or n_permutations.")
        if n_permutations is not None and int(n_permutations) < 1:
            raise ValueError(f"n_permutations must be at least 1, got {n_permutations}.")
        self.budget = budget
        self.n_permutations = None if n_permutations is None else int(n_permutations)
        self.antithetic = bool(antithetic)
        if max_permutations is None:
            max_permutations = budget if budget is not None else n_permutations
        self.max_permutations = int(max_permutations)
        self.name = "permutation_antithetic" if antithetic else "permutation"

    def _estimate(self, utility: CoalitionUtility, generator: np.random.Generator) -> Estimate:
        n_players = utility.n_players
        group = 2 if self.antithetic else 1
        minimum = min(2**n_players, group * (n_players - 1) + 2)
        budget = check_budget(self.budget, minimum, self.name)
        cap = self.max_permutations if self.n_permutations is None else self.n_permutations
        start = utility.n_evaluations
        empty_value, grand_value = utility.empty_value, utility.grand_value
        total = np.zeros(n_players)
        total_sq = np.zeros(n_players)
        n_groups = 0
        while n_groups * group < cap:
            first = generator.permutation(n_players)
            orders = [first, first[::-1]] if self.antithetic else [first]
            if budget is not None:
                masks = np.concatenate([prefix_masks(order) for order in orders])
                if utility.n_evaluations - start + utility.cost(masks) > budget:
                    break
            marginals = np.zeros(n_players)
            for order in orders:
                marginals += marginals_from_chain(order, utility.evaluate_chain(order))
            marginals /= group
            total += marginals
            total_sq += marginals**2
            n_groups += 1
        if n_groups == 0:
            raise ValueError(f"{self.name}: the budget did not pay for one permutation.")
        mean = total / n_groups
        variance = np.maximum(total_sq / n_groups - mean**2, 0.0) / max(n_groups - 1, 1)
        return Estimate(
            mean,
            empty_value,
            grand_value,
            n_samples=n_groups * group,
            info={"std_error": np.sqrt(variance)},
        )
