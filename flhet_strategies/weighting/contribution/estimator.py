"""The interface every Shapley estimator implements, and its result type."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from flhet_strategies.weighting.contribution.games import CoalitionUtility

RandomState = Union[np.random.Generator, int, None]

__all__ = [
    "Estimate",
    "RandomState",
    "ShapleyEstimator",
    "ShapleyResult",
    "as_generator",
    "check_budget",
]


@dataclass(frozen=True)
class ShapleyResult:
    """Shapley values of one game, as estimated by one estimator.

    Parameters
    ----------
    values : np.ndarray
        Float64 array of shape ``(n_players,)``; ``values[i]`` is player
        ``i``'s (estimated) Shapley value.
    n_evaluations : int
        Utility evaluations (uncached coalitions) the estimate used.
    estimator : str
        Name of the estimator that produced it.
    empty_value : float
        ``v(∅)`` of the game.
    grand_value : float
        ``v(N)`` of the game. Efficiency says ``values.sum()`` equals
        ``grand_value - empty_value`` (exactly for exact and permutation
        estimators, approximately for stratified ones).
    n_samples : int
        Permutations (permutation estimators) or sampled coalitions
        (stratified estimators) used; ``2**n`` for the exact estimator.
    info : dict
        Estimator-specific diagnostics (e.g. truncated positions).
    """

    values: np.ndarray
    n_evaluations: int
    estimator: str
    empty_value: float
    grand_value: float
    n_samples: int = 0
    info: dict = field(default_factory=dict)

    @property
    def n_players(self) -> int:
        """Number of players."""
        return int(self.values.shape[0])


@dataclass(frozen=True)
class Estimate:
    """What an estimator's :meth:`ShapleyEstimator._estimate` computes.

    :meth:`ShapleyEstimator.estimate` adds the evaluation count and the
    estimator's name to make a :class:`ShapleyResult` (see there for the fields).
    """

    values: np.ndarray
    empty_value: float
    grand_value: float
    n_samples: int = 0
    info: dict = field(default_factory=dict)


class ShapleyEstimator(ABC):
    """Base of every estimator that turns a coalition utility into Shapley values.

    :meth:`estimate` counts the utility evaluations an estimate uses and labels
    the result with the estimator's ``name``; a subclass sets ``name`` and
    implements :meth:`_estimate`, the estimation itself.

    Implementations: :class:`~flhet_strategies.weighting.contribution.exact.ExactShapley`,
    :class:`~flhet_strategies.weighting.contribution.permutation.PermutationShapley`,
    :class:`~flhet_strategies.weighting.contribution.gtg.GTGShapley`,
    :class:`~flhet_strategies.weighting.contribution.stratified.StratifiedSVARM`,
    :class:`~flhet_strategies.weighting.contribution.stratified.RegressionAdjustedSVARM`.
    """

    name: str

    def estimate(self, utility: CoalitionUtility, rng: RandomState = None) -> ShapleyResult:
        """Estimate the Shapley values of ``utility``'s game.

        Parameters
        ----------
        utility : CoalitionUtility
            The game; its ``n_players`` gives the number of players.
        rng : np.random.Generator or int or None
            Randomness for sampling estimators (ignored by exact ones).

        Returns
        -------
        ShapleyResult
            Values, the evaluations used (uncached coalitions), and the
            estimator-specific ``info`` its class documents.

        Raises
        ------
        ValueError
            If the estimator's budget cannot pay for its smallest estimate, or
            the game is too large for it (see the estimator's class).
        """
        start = utility.n_evaluations
        parts = self._estimate(utility, as_generator(rng))
        return ShapleyResult(
            values=parts.values,
            n_evaluations=utility.n_evaluations - start,
            estimator=self.name,
            empty_value=parts.empty_value,
            grand_value=parts.grand_value,
            n_samples=parts.n_samples,
            info=parts.info,
        )

    @abstractmethod
    def _estimate(self, utility: CoalitionUtility, generator: np.random.Generator) -> Estimate:
        """The estimation itself, on a utility whose evaluations :meth:`estimate` counts."""


def as_generator(rng: RandomState) -> np.random.Generator:
    """Return ``rng`` as a ``np.random.Generator`` (seeding it when an int or None)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def check_budget(budget: Optional[int], minimum: int, estimator: str) -> Optional[int]:
    """Validate an evaluation budget.

    Parameters
    ----------
    budget : int or None
        Maximum utility evaluations, or None for no limit.
    minimum : int
        Smallest budget the estimator can work with.
    estimator : str
        Estimator name, for the error message.

    Returns
    -------
    int or None
        The budget as an int.

    Raises
    ------
    ValueError
        If ``budget`` is below ``minimum``.
    """
    if budget is None:
        return None
    budget = int(budget)
    if budget < minimum:
        raise ValueError(
            f"{estimator} needs a budget of at least {minimum} utility evaluations for this "
            f"game, got {budget}."
        )
    return budget
