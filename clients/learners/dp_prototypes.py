"""Record-level DP of a class-prototype release: the Gaussian mechanism on clipped sums.

A DP-SGD client's model is DP, but class prototypes (per-class means of its private
records' features, FedProto / FedTGP / FedGH) are computed from the records directly.
Under DP-SGD they are released by the Gaussian mechanism (Dwork & Roth 2014, App. A;
accounted in RDP, Mironov 2017): every record's feature vector clipped to L2 norm ``C``,
summed per class, ``N(0, (z C)^2)`` on every entry of every class sum and ``N(0, z^2)``
on every class count. Adding or removing one record changes one class sum by at most
``C`` and one count by 1, so with each coordinate scaled by its noise std the release
has L2 sensitivity ``sqrt(2)``: a Gaussian mechanism of noise multiplier
``z / sqrt(2)`` at sensitivity 1, accounted at sample rate 1 in the learner's DP-SGD
accountant (docs/dp_sgd.md). Prototype ``noisy_sum / noisy_count`` and rounded counts
are post-processing.
"""

from __future__ import annotations

import math

import numpy as np

from flhet_strategies.algorithms.prototypes import RELEASE_STDS
from flhet_strategies.privacy.dp.clipping import clip_rows_by_l2_norm
from flhet_strategies.privacy.dp.gaussian import gaussian_noise

from .dpsgd import history_epsilon

PROTOTYPE_SENSITIVITY = math.sqrt(2.0)
"""L2 sensitivity of ``(class sums / C, class counts)`` to adding or removing one record."""


def release_noise_multiplier(noise_multiplier: float) -> float:
    """The accountant's noise multiplier of one release: ``z / sqrt(2)`` (noise std ``z``
    per scaled coordinate over the sensitivity ``sqrt(2)``)."""
    return float(noise_multiplier) / PROTOTYPE_SENSITIVITY


def release_threshold(noise_multiplier: float) -> float:
    """The least noisy count a class needs to be released: ``RELEASE_STDS`` count-noise
    stds, at least 1 (a class of no record passes with probability 3e-5)."""
    return max(1.0, RELEASE_STDS * float(noise_multiplier))


def planned_releases(noise_multiplier: float, releases: int) -> list[tuple[float, float, int]]:
    """The accountant rows of ``releases`` prototype releases (one per round), for
    :func:`~clients.learners.dpsgd.calibrate_noise_multiplier`'s ``fixed``."""
    if releases <= 0:
        return []
    return [(release_noise_multiplier(noise_multiplier), 1.0, int(releases))]


def releases_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon at ``delta`` of ``releases`` prototype releases alone."""
    return history_epsilon(planned_releases(noise_multiplier, releases), delta)


def clipped_class_sums(features: np.ndarray, labels: np.ndarray, num_classes: int,
                       clip_norm: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-class sums ``(K, d)`` of the feature vectors clipped to L2 ``clip_norm``, and
    the class counts ``(K,)`` (float64): what the mechanism noises."""
    labels = np.asarray(labels, dtype=np.int64)
    clipped = clip_rows_by_l2_norm(features, clip_norm)
    if len(clipped) != len(labels):
        raise ValueError(f"{len(clipped)} feature rows but {len(labels)} labels")
    sums = np.zeros((int(num_classes), clipped.shape[1]))
    np.add.at(sums, labels, clipped)
    return sums, np.bincount(labels, minlength=int(num_classes)).astype(np.float64)


def noisy_class_prototypes(features: np.ndarray, labels: np.ndarray, num_classes: int,
                           clip_norm: float, noise_multiplier: float,
                           rng: np.random.Generator | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian mechanism's class prototypes and counts.

    Parameters
    ----------
    features : np.ndarray
        ``(N, d)`` features of the private records.
    labels : np.ndarray
        ``(N,)`` their classes.
    num_classes : int
        Number of classes ``K`` (every class gets noise, held or not).
    clip_norm : float
        ``C``: each feature vector is scaled to L2 norm at most ``C``.
    noise_multiplier : float
        ``z``: noise std ``z * C`` on the sums, ``z`` on the counts (0: no noise).
    rng : numpy.random.Generator, optional
        Source of the noise; OS-seeded when omitted.

    Returns
    -------
    prototypes : np.ndarray
        ``(K, d)`` float32: ``noisy_sum / noisy_count`` for classes whose noisy count
        reaches :func:`release_threshold`, zero rows for the others.
    counts : np.ndarray
        ``(K,)`` int64: the noisy counts rounded, 0 where no prototype is released.
    """
    sums, counts = clipped_class_sums(features, labels, num_classes, clip_norm)
    noisy_sums = sums + gaussian_noise(sums.shape, noise_multiplier * clip_norm, rng)
    noisy_counts = counts + gaussian_noise(counts.shape, noise_multiplier, rng)
    threshold = release_threshold(noise_multiplier)
    released = noisy_counts >= threshold
    prototypes = noisy_sums / np.maximum(noisy_counts, threshold)[:, None]
    prototypes[~released] = 0.0
    return (prototypes.astype(np.float32),
            np.where(released, np.rint(noisy_counts), 0).astype(np.int64))


def private_class_prototypes(learner, x: np.ndarray, y: np.ndarray, num_classes: int,
                             rng: np.random.Generator | None = None
                             ) -> tuple[np.ndarray, np.ndarray]:
    """A DP-SGD learner's class prototypes of ``(x, y)``, released by
    :func:`noisy_class_prototypes` with its ``dp`` settings and accounted in its
    accountant (:meth:`~clients.learners.torch_learner.TorchLearner.account_release`).

    Returns
    -------
    prototypes, counts : np.ndarray
        As :func:`noisy_class_prototypes`; all zeros (no class released) once the
        release would exceed the learner's ``max_epsilon``.
    """
    settings = getattr(learner, "dp", None)
    if settings is None:
        raise ValueError("private_class_prototypes needs a learner trained with DP-SGD "
                         "(TorchLearner(..., dp=DPSGD(...)))")
    if not learner.account_release(release_noise_multiplier(settings.proto_noise_multiplier)):
        return (np.zeros((num_classes, learner.feature_dim), dtype=np.float32),
                np.zeros(num_classes, dtype=np.int64))
    return noisy_class_prototypes(learner.embed(x), y, num_classes, settings.proto_clip_norm,
                                  settings.proto_noise_multiplier, rng)


__all__ = ["PROTOTYPE_SENSITIVITY", "clipped_class_sums", "noisy_class_prototypes",
           "planned_releases", "private_class_prototypes", "release_noise_multiplier",
           "release_threshold", "releases_epsilon"]
