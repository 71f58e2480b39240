"""Exact Shapley values by enumerating all ``2**n`` coalitions."""

from __future__ import annotations

from math import comb

import numpy as np

from flhet_strategies.weighting.contribution.estimator import Estimate, ShapleyEstimator
from flhet_strategies.weighting.contribution.games import CoalitionUtility

__all__ = [
    "ExactShapley",
    "all_coalition_masks",
    "enumerate_all_coalitions",
    "shapley_from_all_values",
]


_CHUNK_ROWS = 2**16


def all_coalition_masks(n_players: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Return all ``2**n_players`` coalitions (or the rows ``start:stop``) as boolean masks.

    Row ``k`` is the coalition whose members are the set bits of ``k``
    (player ``i`` <-> bit ``i``), so row 0 is empty and the last row is the
    grand coalition.

    Parameters
    ----------
    n_players : int
        Number of players.
    start, stop : int, optional
        Row range to return (default: all rows).

    Returns
    -------
    np.ndarray
        Boolean array of shape ``(stop - start, n_players)``.
    """
    stop = 2**n_players if stop is None else stop
    codes = np.arange(start, stop, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n_players, dtype=np.int64)) & 1).astype(bool)


def shapley_from_all_values(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Shapley values from the values of every coalition.

    Uses ``phi_i = sum_{S ∋ i} w(|S|-1) v(S) - sum_{S ∌ i} w(|S|) v(S)`` with
    ``w(s) = s! (n-s-1)! / n! = 1 / (n * C(n-1, s))``: two matrix products.

    Parameters
    ----------
    values : np.ndarray
        Shape ``(m,)``; value of each coalition in ``masks``.
    masks : np.ndarray
        Shape ``(m, n)``. With every coalition exactly once the result is the
        Shapley value; with a subset of rows it is that subset's share of the
        sum (so chunks can be added up).

    Returns
    -------
    np.ndarray
        Float64 Shapley values of shape ``(n,)``.
    """
    n_players = masks.shape[1]
    sizes = masks.sum(axis=1)
    weight = np.array([1.0 / (n_players * comb(n_players - 1, s)) for s in range(n_players)])
    with_weight = np.where(sizes > 0, weight[np.clip(sizes - 1, 0, n_players - 1)], 0.0)
    without_weight = np.where(sizes < n_players, weight[np.clip(sizes, 0, n_players - 1)], 0.0)
    members = masks.astype(np.float64)
    return members.T @ (with_weight * values) - (1.0 - members).T @ (without_weight * values)


class ExactShapley(ShapleyEstimator):
    """Exact Shapley values: evaluates every one of the ``2**n`` coalitions.

    The utility sees all coalitions in one batched call, so vectorized
    utilities (e.g. :class:`.LogitConsensusUtility`)
    compute the whole game with a few matrix products.

    Parameters
    ----------
    max_players : int, default=20
        Refuse games with more players (``2**20`` coalitions is already about
        a million evaluations). Use a sampling estimator beyond that.

    Examples
    --------
    >>> import numpy as np
    >>> from flhet_strategies.weighting.contribution.games import CoalitionUtility
    >>> glove = CoalitionUtility(lambda m: np.minimum(m[:, 0], m[:, 1:].sum(1)), 3)
    >>> ExactShapley().estimate(glove).values.round(4)
    array([0.6667, 0.1667, 0.1667])
    """

    name = "exact"

    def __init__(self, max_players: int = 20) -> None:
        if int(max_players) < 1:
            raise ValueError(f"max_players must be at least 1, got {max_players}.")
        self.max_players = int(max_players)

    def _estimate(self, utility: CoalitionUtility, generator: np.random.Generator) -> Estimate:
        n_players = utility.n_players
        if n_players > self.max_players:
            raise ValueError(
                f"Exact Shapley enumerates 2**n coalitions; n={n_players} exceeds the limit "
                f"max_players={self.max_players}. Use PermutationShapley, GTGShapley or "
                "StratifiedSVARM for large cohorts, or raise max_players knowingly."
            )
        return enumerate_all_coalitions(utility)


def enumerate_all_coalitions(utility: CoalitionUtility) -> Estimate:
    """Exact Shapley values of a game from the values of all ``2**n`` coalitions.

    Coalitions go to the utility in chunks of ``2**16`` without being cached
    (each is needed once).

    Parameters
    ----------
    utility : CoalitionUtility
        The game.

    Returns
    -------
    Estimate
        Exact values, ``v(∅)``, ``v(N)``; ``n_samples`` is ``2**n``.
    """
    n_players = utility.n_players
    n_coalitions = 2**n_players
    shapley = np.zeros(n_players, dtype=np.float64)
    empty_value = grand_value = 0.0
    for first in range(0, n_coalitions, _CHUNK_ROWS):
        masks = all_coalition_masks(n_players, first, min(first + _CHUNK_ROWS, n_coalitions))
        values = utility.evaluate(masks, store=False)
        shapley += shapley_from_all_values(values, masks)
        if first == 0:
            empty_value = float(values[0])
        grand_value = float(values[-1])
    return Estimate(shapley, empty_value, grand_value, n_samples=n_coalitions)
