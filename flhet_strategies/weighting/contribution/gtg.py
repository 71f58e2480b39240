"""GTG-Shapley-style guided, truncated permutation sampling.

After Liu et al., "GTG-Shapley: Efficient and Accurate Participant Contribution
Evaluation in Federated Learning" (ACM TIST 2022, https://arxiv.org/abs/2109.02053):
guided sampling and within-round truncation; the between-round truncation is not
implemented. See docs/contribution.md.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from flhet_strategies.weighting.contribution.estimator import (
    Estimate,
    ShapleyEstimator,
    check_budget,
)
from flhet_strategies.weighting.contribution.games import CoalitionUtility

__all__ = ["GTGShapley"]


class GTGShapley(ShapleyEstimator):
    """Guided, truncated permutation sampling (GTG-Shapley style).

    Parameters
    ----------
    budget : int
        Maximum utility evaluations (uncached coalitions).
    truncation_tol : float, default=0.0
        Within-round truncation threshold, as a fraction of
        ``|v(N) - v(∅)|`` (or in utility units with ``relative=False``).
        Scanning a permutation stops once ``|v(N) - v(prefix)|`` falls below
        it. ``0`` disables truncation.
    relative : bool, default=True
        Interpret ``truncation_tol`` relative to ``|v(N) - v(∅)|``.
    guided : bool, default=True
        Permutation ``k`` starts with player ``k mod n`` (each player leads in
        turn); otherwise fully random permutations.
    spread_residual : bool, default=True
        On truncation, split the remaining gap ``v(N) - v(prefix)`` equally
        among the unscanned players, so every permutation's marginals still
        sum to ``v(N) - v(∅)`` (efficiency holds exactly). With False the
        unscanned players get zero, as in the paper.
    convergence_tol : float, optional
        GTG-Shapley's stopping rule: after each full guided cycle of ``n``
        permutations, stop when the relative change of the estimate,
        ``||phi_new - phi_old|| / ||phi_new||``, is below this value. None
        uses the whole budget.
    max_permutations : int, optional
        Cap on permutations, reached only when memoization makes permutations
        free (tiny games with a large budget). Default: ``budget``.

    Notes
    -----
    A permutation interrupted by the end of the budget is discarded (its
    evaluations still count), so estimates are averages of whole permutations.
    The result's ``info["truncated_fraction"]`` is the share of marginals that
    truncation skipped.
    """

    name = "gtg"

    def __init__(
        self,
        budget: int,
        *,
        truncation_tol: float = 0.0,
        relative: bool = True,
        guided: bool = True,
        spread_residual: bool = True,
        convergence_tol: Optional[float] = None,
        max_permutations: Optional[int] = None,
    ) -> None:
        if truncation_tol < 0 or not np.isfinite(truncation_tol):
            raise ValueError(f"truncation_tol must be finite and >= 0, got {truncation_tol}.")
        if convergence_tol is not None and convergence_tol <= 0:
            raise ValueError(f"convergence_tol must be positive, got {convergence_tol}.")
        self.budget = int(budget)
        self.truncation_tol = float(truncation_tol)
        self.relative = bool(relative)
        self.guided = bool(guided)
        self.spread_residual = bool(spread_residual)
        self.convergence_tol = convergence_tol
        self.max_permutations = self.budget if max_permutations is None else int(max_permutations)

    def _estimate(self, utility: CoalitionUtility, generator: np.random.Generator) -> Estimate:
        n_players = utility.n_players
        budget = check_budget(self.budget, min(2**n_players, n_players + 1), self.name)
        start = utility.n_evaluations
        empty_value, grand_value = utility.empty_value, utility.grand_value
        tolerance = self.truncation_tol * (
            abs(grand_value - empty_value) if self.relative else 1.0
        )

        total = np.zeros(n_players)
        n_permutations = 0
        n_skipped = 0
        previous_estimate: Optional[np.ndarray] = None
        out_of_budget = False
        while not out_of_budget and n_permutations < self.max_permutations:
            order = self._order(n_permutations, n_players, generator)
            marginals = np.zeros(n_players)
            mask = np.zeros(n_players, dtype=bool)
            previous = empty_value
            for position, player in enumerate(order):
                if tolerance > 0 and abs(grand_value - previous) < tolerance:
                    rest = order[position:]
                    if self.spread_residual:
                        marginals[rest] = (grand_value - previous) / rest.size
                    n_skipped += rest.size
                    break
                mask[player] = True
                if utility.cost(mask[None, :]) and utility.n_evaluations - start >= budget:
                    out_of_budget = True
                    break
                value = utility(mask)
                marginals[player] = value - previous
                previous = value
            if out_of_budget:
                break
            total += marginals
            n_permutations += 1
            if self.convergence_tol is not None and n_permutations % n_players == 0:
                estimate = total / n_permutations
                if previous_estimate is not None:
                    change = np.linalg.norm(estimate - previous_estimate)
                    if change <= self.convergence_tol * max(np.linalg.norm(estimate), 1e-12):
                        break
                previous_estimate = estimate
        if n_permutations == 0:
            raise ValueError(f"{self.name}: the budget did not pay for one permutation.")
        return Estimate(
            total / n_permutations,
            empty_value,
            grand_value,
            n_samples=n_permutations,
            info={"truncated_fraction": n_skipped / (n_permutations * n_players)},
        )

    def _order(
        self, index: int, n_players: int, generator: np.random.Generator
    ) -> np.ndarray:
        if not self.guided:
            return generator.permutation(n_players)
        lead = index % n_players
        others = np.delete(np.arange(n_players), lead)
        return np.concatenate(([lead], generator.permutation(others)))
