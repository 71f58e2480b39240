"""Synthetic non-IID logit games for tests and benchmarks of Shapley estimators."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flhet_strategies.weighting.contribution.logit_utility import LogitConsensusUtility

__all__ = ["SyntheticLogitGame", "make_synthetic_logit_game"]


@dataclass(frozen=True)
class SyntheticLogitGame:
    """Client predictions on a labeled validation slice, with their vote weights.

    Attributes
    ----------
    probabilities : np.ndarray
        ``(n_clients, n_samples, n_classes)`` predicted class probabilities.
    labels : np.ndarray
        ``(n_samples,)`` true labels.
    class_counts : np.ndarray
        ``(n_clients, n_classes)`` training samples per class of each client
        (label histograms, for per-class vote weighting).
    noise : np.ndarray
        ``(n_clients,)`` logit noise level of each client (higher is worse).
    """

    probabilities: np.ndarray
    labels: np.ndarray
    class_counts: np.ndarray
    noise: np.ndarray

    def consensus_utility(self, *, metric: str = "accuracy") -> LogitConsensusUtility:
        """The logit-consensus game: client weights = sample counts, per-class
        vote weighting by the label histograms."""
        return LogitConsensusUtility(
            self.probabilities,
            self.labels,
            self.class_counts.sum(axis=1),
            self.class_counts,
            metric=metric,
        )


def make_synthetic_logit_game(
    n_clients: int = 50,
    n_samples: int = 2000,
    n_classes: int = 10,
    *,
    dirichlet_alpha: float = 1.0,
    noise_range: tuple[float, float] = (0.5, 5.0),
    size_range: tuple[int, int] = (100, 1000),
    signal: float = 3.0,
    seed: int = 0,
) -> SyntheticLogitGame:
    """Make a non-IID game: skewed class coverage and varying noise per client.

    Client ``i`` holds ``n_i`` training samples (uniform in ``size_range``) spread
    over the classes by a Dirichlet(``dirichlet_alpha``) draw, so many clients
    know only a few classes. Its logits for sample ``x`` are
    ``signal * known(i, y_x) * onehot(y_x) + log(class prior of i) +
    noise_i * N(0, 1)``: a class it never saw gets no signal, and its
    predictions lean towards the classes it holds.

    Parameters
    ----------
    n_clients, n_samples, n_classes : int
        Game size.
    dirichlet_alpha : float, default=1.0
        Class-skew of the clients (smaller is more skewed).
    noise_range : tuple of float, default=(0.5, 5.0)
        Range of the per-client logit noise level.
    size_range : tuple of int, default=(100, 1000)
        Range of the per-client training-set size (the vote weights' scale).
    signal : float, default=3.0
        Logit bonus of the true class for classes the client knows.
    seed : int, default=0
        Random seed.

    Returns
    -------
    SyntheticLogitGame
        The game's data.
    """
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, n_classes, size=n_samples)
    sizes = generator.integers(size_range[0], size_range[1] + 1, size=n_clients)
    shares = generator.dirichlet(np.full(n_classes, dirichlet_alpha), size=n_clients)
    class_counts = np.floor(shares * sizes[:, None])
    class_counts[np.arange(n_clients), shares.argmax(axis=1)] += 1  # every client knows a class
    prior = class_counts / class_counts.sum(axis=1, keepdims=True)
    noise = generator.uniform(*noise_range, size=n_clients)

    known = class_counts[:, labels] > 0  # (n_clients, n_samples)
    logits = np.log(prior + 1e-3)[:, None, :] + noise[:, None, None] * generator.standard_normal(
        (n_clients, n_samples, n_classes)
    )
    logits[:, np.arange(n_samples), labels] += signal * known
    logits -= logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return SyntheticLogitGame(probabilities, labels, class_counts, noise)
