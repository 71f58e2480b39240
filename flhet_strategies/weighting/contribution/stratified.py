"""Stratified SVARM: Shapley values without marginal contributions.

After Kolpaczki, Bengs, Muschalik and Hüllermeier, "Approximating the Shapley Value
without Marginal Contributions" (AAAI 2024, https://arxiv.org/abs/2302.00736), with an
optional Neyman size allocation and a regression-adjusted variant
(:class:`RegressionAdjustedSVARM`). See docs/contribution.md.
"""

from __future__ import annotations

import numpy as np

from flhet_strategies.weighting.contribution.estimator import (
    Estimate,
    ShapleyEstimator,
    check_budget,
)
from flhet_strategies.weighting.contribution.exact import enumerate_all_coalitions
from flhet_strategies.weighting.contribution.games import CoalitionUtility
from flhet_strategies.weighting.contribution.regression import fit_size_scaled_additive_model

__all__ = [
    "RegressionAdjustedSVARM",
    "StratifiedSVARM",
    "membership_effects",
    "neyman_size_distribution",
    "random_coalitions",
    "svarm_size_distribution",
    "warmup_coalitions",
]


def svarm_size_distribution(n_players: int) -> np.ndarray:
    """Stratified SVARM's sampling distribution over coalition sizes.

    Parameters
    ----------
    n_players : int
        Number of players, at least 4.

    Returns
    -------
    np.ndarray
        Shape ``(n_players + 1,)``; probability of each size, zero outside
        ``2..n-2``. Proportional to ``1/s`` below the middle and ``1/(n-s)``
        above it, with the paper's weight ``1/(n log n)`` on ``s = n/2`` for
        even ``n``.
    """
    if n_players < 4:
        raise ValueError(f"Sampled sizes 2..n-2 exist only for n >= 4, got n={n_players}.")
    sizes = np.arange(n_players + 1)
    probabilities = np.zeros(n_players + 1)
    inner = sizes[2 : n_players - 1]
    probabilities[inner] = 1.0 / np.minimum(inner, n_players - inner)
    if n_players % 2 == 0:
        half = n_players // 2
        side = probabilities[2:half].sum() * 2  # sizes below and above the middle
        n_log_n = n_players * np.log(n_players)
        if side > 0:
            probabilities[2:half] *= (1 - 1 / n_log_n) / side
            probabilities[half + 1 : n_players - 1] *= (1 - 1 / n_log_n) / side
            probabilities[half] = 1 / n_log_n
        else:
            probabilities[half] = 1.0
    return probabilities / probabilities.sum()


def neyman_size_distribution(
    masks: np.ndarray, values: np.ndarray, explore: float = 0.1
) -> np.ndarray:
    """Neyman allocation of samples over coalition sizes ``2..n-2``.

    The variance of the membership effect estimate at size ``s`` is about
    ``sd_s**2 * n**2 / (m_s * s * (n - s))`` for ``m_s`` samples, so the
    total is smallest with ``m_s`` proportional to ``sd_s / sqrt(s (n - s))``.

    Parameters
    ----------
    masks : np.ndarray
        Boolean ``(m, n)`` coalitions sampled so far.
    values : np.ndarray
        ``(m,)`` their values.
    explore : float, default=0.1
        Share of probability mixed in from :func:`svarm_size_distribution`,
        so no size is starved by a poor early spread estimate.

    Returns
    -------
    np.ndarray
        ``(n + 1,)`` probabilities, zero outside ``2..n-2``.
    """
    n_players = masks.shape[1]
    sample_sizes = masks.sum(axis=1)
    size_count = np.bincount(sample_sizes, minlength=n_players + 1).astype(np.float64)
    size_sum = np.bincount(sample_sizes, weights=values, minlength=n_players + 1)
    size_sq = np.bincount(sample_sizes, weights=values**2, minlength=n_players + 1)
    sizes = np.arange(2, n_players - 1)
    count = size_count[sizes]
    mean = np.divide(size_sum[sizes], count, out=np.zeros(sizes.size), where=count > 0)
    var = np.divide(
        size_sq[sizes] - count * mean**2,
        count - 1,
        out=np.full(sizes.size, np.nan),
        where=count > 1,
    )
    var = np.maximum(var, 0.0)
    sd = np.zeros(sizes.size)
    for k in range(sizes.size):  # pool the variance over sizes k-2..k+2
        window = slice(max(0, k - 2), k + 3)
        known = np.isfinite(var[window])
        dof = np.sum(count[window][known] - 1)
        if dof > 0:
            sd[k] = np.sqrt(np.sum(var[window][known] * (count[window][known] - 1)) / dof)
    weight = sd / np.sqrt(sizes * (n_players - sizes))
    probabilities = np.zeros(n_players + 1)
    if weight.sum() > 0:
        probabilities[sizes] = weight / weight.sum()
    probabilities = (1 - explore) * probabilities + explore * svarm_size_distribution(n_players)
    return probabilities / probabilities.sum()


def warmup_coalitions(n_players: int, generator: np.random.Generator) -> np.ndarray:
    """Coalitions that give every stratum of sizes ``2..n-2`` one sample.

    For each size ``s``, a random permutation is cut into blocks of
    ``k = min(s, n - s)`` players (the last block padded with random other
    players); each block, or its complement when ``s > n/2``, is one
    coalition. Every player is then inside at least one size-``s``
    coalition and outside at least one (there are at least two blocks).
    Each coalition is uniformly distributed over the size-``s`` coalitions,
    so using it for every stratum it touches keeps the strata unbiased.

    Parameters
    ----------
    n_players : int
        Number of players, at least 4.
    generator : np.random.Generator
        Randomness.

    Returns
    -------
    np.ndarray
        Boolean masks of shape ``(m, n_players)``.
    """
    masks = []
    for size in range(2, n_players - 1):
        block = min(size, n_players - size)
        order = generator.permutation(n_players)
        for first in range(0, n_players, block):
            members = order[first : first + block]
            if members.size < block:
                others = np.setdiff1d(order, members)
                members = np.concatenate(
                    (members, generator.choice(others, block - members.size, replace=False))
                )
            mask = np.zeros(n_players, dtype=bool)
            mask[members] = True
            masks.append(mask if block == size else ~mask)
    return np.array(masks, dtype=bool)


def random_coalitions(
    sizes: np.ndarray, n_players: int, generator: np.random.Generator
) -> np.ndarray:
    """Uniformly random coalitions of the given sizes.

    Parameters
    ----------
    sizes : np.ndarray
        Shape ``(m,)``, each in ``0..n_players``.
    n_players : int
        Number of players.
    generator : np.random.Generator
        Randomness.

    Returns
    -------
    np.ndarray
        Boolean masks of shape ``(m, n_players)``; row ``k`` has ``sizes[k]``
        members chosen uniformly without replacement.
    """
    ranks = np.argsort(generator.random((sizes.shape[0], n_players)), axis=1)
    return ranks < sizes[:, None]


def membership_effects(masks: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-size membership effects estimated from sampled coalitions.

    Parameters
    ----------
    masks : np.ndarray
        Boolean ``(m, n)`` coalitions (repeats allowed).
    values : np.ndarray
        ``(m,)`` their values.

    Returns
    -------
    effects : np.ndarray
        ``(n, n + 1)``; ``[i, s]`` is the mean value of sampled size-``s``
        coalitions containing ``i`` minus that of those without ``i``. When
        one side has no sample, that side's mean is replaced by the mean of
        all sampled size-``s`` coalitions; 0 when size ``s`` has no sample.
    both_sides : np.ndarray
        ``(n, n + 1)`` boolean; True where both sides had samples.
    """
    n_players = masks.shape[1]
    sizes = masks.sum(axis=1)
    by_size = np.zeros((masks.shape[0], n_players + 1))
    by_size[np.arange(masks.shape[0]), sizes] = 1.0
    members = masks.astype(np.float64)
    outsiders = 1.0 - members
    weighted = by_size * values[:, None]
    in_sum, in_count = members.T @ weighted, members.T @ by_size
    out_sum, out_count = outsiders.T @ weighted, outsiders.T @ by_size
    size_mean = np.divide(
        weighted.sum(axis=0), by_size.sum(axis=0), out=np.zeros(n_players + 1),
        where=by_size.sum(axis=0) > 0,
    )
    in_mean = np.where(in_count > 0, in_sum / np.maximum(in_count, 1), size_mean[None, :])
    out_mean = np.where(out_count > 0, out_sum / np.maximum(out_count, 1), size_mean[None, :])
    return in_mean - out_mean, (in_count > 0) & (out_count > 0)


class StratifiedSVARM(ShapleyEstimator):
    """Stratified SVARM estimator of Shapley values for large cohorts.

    Parameters
    ----------
    budget : int
        Maximum utility evaluations; at least ``2n + 2`` plus the warm-up
        (about ``2 n ln(n/2)`` coalitions; 302 for 50 players).
    warmup : bool, default=True
        Give every stratum one sample before size-distributed sampling. With
        False, a stratum still empty at the end borrows the mean value of all
        sampled coalitions of its size (a small bias instead of a gap).
    allocation : {"svarm", "neyman"}, default="svarm"
        Size distribution of the sampled coalitions: the paper's fixed one, or
        the Neyman allocation re-estimated from the samples in stages.
    regression_adjusted : bool, default=False
        Estimate only the residual of a fitted size-scaled additive surrogate
        from the samples (see docs/contribution.md).
    n_stages : int, default=3
        Stages of Neyman re-allocation (``allocation="neyman"`` only).

    Notes
    -----
    Games with ``n <= 3`` players have no sampled sizes: the estimate is exact
    (``2**n`` evaluations). Efficiency holds only approximately. The result's
    ``n_samples`` counts the sampled coalitions (warm-up included, the exact
    border sizes excluded); ``estimate`` raises ValueError when the budget does
    not cover the exact sizes and the warm-up.

    Examples
    --------
    >>> import numpy as np
    >>> from flhet_strategies.weighting.contribution.games import CoalitionUtility
    >>> additive = CoalitionUtility(lambda m: m @ np.arange(8.0), 8)
    >>> result = StratifiedSVARM(budget=200).estimate(additive, rng=0)
    >>> bool(np.abs(result.values - np.arange(8.0)).max() < 0.5)
    True
    """

    name = "stratified_svarm"

    def __init__(
        self,
        budget: int,
        *,
        warmup: bool = True,
        allocation: str = "svarm",
        regression_adjusted: bool = False,
        n_stages: int = 3,
    ) -> None:
        if allocation not in ("svarm", "neyman"):
            raise ValueError(f'allocation must be "svarm" or "neyman", got {allocation!r}.')
        if int(n_stages) < 1:
            raise ValueError(f"n_stages must be at least 1, got {n_stages}.")
        self.budget = int(budget)
        self.warmup = bool(warmup)
        self.allocation = allocation
        self.regression_adjusted = bool(regression_adjusted)
        self.n_stages = int(n_stages)

    def _estimate(self, utility: CoalitionUtility, generator: np.random.Generator) -> Estimate:
        n_players = utility.n_players
        if n_players <= 3:
            return enumerate_all_coalitions(utility)
        start = utility.n_evaluations
        if self.warmup:
            warm = warmup_coalitions(n_players, generator)
        else:
            warm = np.zeros((0, n_players), dtype=bool)
        check_budget(self.budget, 2 * n_players + 2 + warm.shape[0], self.name)

        border = np.concatenate(
            (
                np.zeros((1, n_players), bool),
                np.eye(n_players, dtype=bool),
                ~np.eye(n_players, dtype=bool),
                np.ones((1, n_players), bool),
            )
        )
        border_values = utility.evaluate(border)
        empty_value, grand_value = float(border_values[0]), float(border_values[-1])
        sampled_masks = [warm]
        sampled_values = [utility.evaluate(warm)]

        size_probabilities = svarm_size_distribution(n_players)
        for stage in range(100):  # memo hits are free: refill until the budget is spent
            remaining = self.budget - (utility.n_evaluations - start)
            if remaining <= 0:
                break
            if self.allocation == "neyman":
                size_probabilities = neyman_size_distribution(
                    np.concatenate(sampled_masks), np.concatenate(sampled_values)
                )
                if stage < self.n_stages - 1:
                    remaining = max(1, remaining // (self.n_stages - stage))
            sizes = generator.choice(n_players + 1, size=remaining, p=size_probabilities)
            masks = random_coalitions(sizes, n_players, generator)
            sampled_masks.append(masks)
            sampled_values.append(utility.evaluate(masks))

        samples = np.concatenate(sampled_masks)
        masks = np.concatenate((border, samples))
        values = np.concatenate([border_values] + sampled_values)
        effects, both_sides = membership_effects(masks, values)
        if self.regression_adjusted:
            model = fit_size_scaled_additive_model(masks, values)
            residual_effects, _ = membership_effects(masks, values - model.predict(masks))
            effects = model.membership_effects() + np.where(both_sides, residual_effects, 0.0)
        shapley = (grand_value - empty_value) / n_players + effects[:, 1:n_players].sum(
            axis=1
        ) / n_players
        return Estimate(shapley, empty_value, grand_value, n_samples=samples.shape[0])


class RegressionAdjustedSVARM(StratifiedSVARM):
    """Stratified SVARM with Neyman size allocation and regression adjustment.

    The most accurate estimator here per utility evaluation for large
    cohorts: :class:`StratifiedSVARM` with ``allocation="neyman"`` and
    ``regression_adjusted=True`` (see docs/contribution.md). Exact on additive
    games.

    Parameters
    ----------
    budget : int
        Maximum utility evaluations (see :class:`StratifiedSVARM`).
    warmup : bool, default=True
        See :class:`StratifiedSVARM`.
    n_stages : int, default=3
        Stages of Neyman re-allocation.

    Examples
    --------
    >>> import numpy as np
    >>> from flhet_strategies.weighting.contribution.games import CoalitionUtility
    >>> additive = CoalitionUtility(lambda m: m @ np.arange(8.0), 8)
    >>> RegressionAdjustedSVARM(budget=200).estimate(additive, rng=0).values.round(6)
    array([0., 1., 2., 3., 4., 5., 6., 7.])
    """

    name = "regression_adjusted_svarm"

    def __init__(self, budget: int, *, warmup: bool = True, n_stages: int = 3) -> None:
        super().__init__(
            budget,
            warmup=warmup,
            allocation="neyman",
            regression_adjusted=True,
            n_stages=n_stages,
        )
