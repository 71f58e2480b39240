"""A size-scaled additive surrogate of a game, for regression-adjusted estimates.

``f(S) = alpha[|S|] + kappa[|S|] * sum_{j in S} beta[j]`` has closed-form membership
effects, so a stratified estimator samples only the residual ``v - f`` (after Witter et
al., 2025, https://arxiv.org/abs/2506.11849). See docs/contribution.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SizeScaledAdditiveModel", "fit_size_scaled_additive_model"]


@dataclass(frozen=True)
class SizeScaledAdditiveModel:
    """Fitted surrogate ``f(S) = alpha[|S|] + kappa[|S|] * sum_{j in S} beta[j]``.

    Attributes
    ----------
    alpha : np.ndarray
        ``(n + 1,)`` per-size intercepts (0 for sizes without samples).
    kappa : np.ndarray
        ``(n + 1,)`` per-size scales of the player strengths.
    beta : np.ndarray
        ``(n,)`` player strengths.
    """

    alpha: np.ndarray
    kappa: np.ndarray
    beta: np.ndarray

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """Surrogate values of coalitions given as boolean masks ``(m, n)``."""
        sizes = masks.sum(axis=1)
        return self.alpha[sizes] + self.kappa[sizes] * (masks @ self.beta)

    def membership_effects(self) -> np.ndarray:
        """Exact membership effects of the surrogate, shape ``(n, n + 1)``.

        Entry ``[i, s]`` is the mean of ``f`` over size-``s`` coalitions that
        contain ``i`` minus the mean over those that do not, for
        ``1 <= s <= n - 1`` (0 elsewhere).
        """
        n_players = self.beta.shape[0]
        effects = np.zeros((n_players, n_players + 1))
        if n_players < 2:
            return effects
        strength = (n_players * self.beta - self.beta.sum()) / (n_players - 1)
        effects[:, 1:n_players] = strength[:, None] * self.kappa[None, 1:n_players]
        return effects


def fit_size_scaled_additive_model(
    masks: np.ndarray, values: np.ndarray, *, iterations: int = 5
) -> SizeScaledAdditiveModel:
    """Fit the surrogate by alternating least squares.

    Step 1 fits ``alpha`` and ``beta`` with ``kappa`` fixed (one least-squares
    problem with size dummies, minimum-norm where under-determined); step 2
    fits ``alpha[s]``, ``kappa[s]`` per size by a line through the points
    ``(sum_{j in S} beta[j], v(S))``. Sizes with fewer than three samples (or
    no spread) take ``kappa`` interpolated from the others.
    The empty and grand coalitions carry no information on ``beta`` and are
    left out.

    Parameters
    ----------
    masks : np.ndarray
        Boolean ``(m, n)`` sampled coalitions (repeats allowed).
    values : np.ndarray
        ``(m,)`` their utilities.
    iterations : int, default=5
        Alternating rounds.

    Returns
    -------
    SizeScaledAdditiveModel
        The fitted surrogate.
    """
    masks = np.asarray(masks, dtype=bool)
    values = np.asarray(values, dtype=np.float64)
    n_players = masks.shape[1]
    sizes = masks.sum(axis=1)
    inner = (sizes > 0) & (sizes < n_players)
    members = masks[inner].astype(np.float64)
    targets, inner_sizes = values[inner], sizes[inner]
    alpha = np.zeros(n_players + 1)
    kappa = np.ones(n_players + 1)
    beta = np.zeros(n_players)
    if targets.size == 0:
        return SizeScaledAdditiveModel(alpha, kappa, beta)
    dummies = np.zeros((targets.size, n_players + 1))
    dummies[np.arange(targets.size), inner_sizes] = 1.0
    present = np.flatnonzero(dummies.sum(axis=0) > 0)
    dummies = dummies[:, present]
    size_range = np.arange(1, n_players)
    for _ in range(max(1, int(iterations))):
        design = np.concatenate((dummies, kappa[inner_sizes, None] * members), axis=1)
        coefficients = np.linalg.lstsq(design, targets, rcond=None)[0]
        alpha[:] = 0.0
        alpha[present] = coefficients[: present.size]
        beta = coefficients[present.size :]
        strength = members @ beta
        fitted = np.full(n_players + 1, np.nan)
        for size in np.unique(inner_sizes):
            rows = inner_sizes == size
            if rows.sum() >= 3 and np.ptp(strength[rows]) > 0:
                fitted[size] = np.polyfit(strength[rows], targets[rows], 1)[0]
        known = np.isfinite(fitted[size_range])
        if not known.any():
            break
        kappa[size_range] = np.interp(size_range, size_range[known], fitted[size_range][known])
    # final intercepts for the last kappa
    strength = members @ beta
    for size in np.unique(inner_sizes):
        rows = inner_sizes == size
        alpha[size] = np.mean(targets[rows] - kappa[size] * strength[rows])
    return SizeScaledAdditiveModel(alpha, kappa, beta)
