"""Gaussian noise for central and distributed DP on a sum of clipped payloads.

Pure numpy, no Flower import. ``z`` is Flower's noise multiplier: the noise on the
*sum* has standard deviation ``z * S``; a distributed-DP client adds a share
``N(0, (z S)^2 / n)``, and :func:`realized_noise_multiplier` accounts missing shares.
See docs/dp_sensitivity.md.
"""

from __future__ import annotations

import math

import numpy as np


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _finite_array(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN/Inf values")
    return array


def gaussian_noise(
    shape: tuple[int, ...], std: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``N(0, std^2)`` noise of ``shape`` (float64).

    Parameters
    ----------
    shape : tuple[int, ...]
        Shape of the noise array.
    std : float
        Standard deviation, non-negative (0 gives zeros).
    rng : numpy.random.Generator, optional
        Source of randomness; OS-seeded when omitted.
    """
    if not math.isfinite(std) or std < 0:
        raise ValueError(f"std must be non-negative and finite, got {std!r}")
    generator = rng if rng is not None else np.random.default_rng()
    return generator.normal(0.0, float(std), size=shape)


def central_noise_std(noise_multiplier: float, norm_bound: float) -> float:
    """Standard deviation ``z * S`` of the noise on the clipped sum.

    Parameters
    ----------
    noise_multiplier : float
        ``z``, positive.
    norm_bound : float
        ``S``, the bound on every clipped payload.
    """
    return _positive(noise_multiplier, "noise_multiplier") * _positive(norm_bound, "norm_bound")


def add_central_noise(
    clipped_sum: np.ndarray,
    noise_multiplier: float,
    norm_bound: float,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Central DP: the sum of clipped payloads plus ``N(0, (z S)^2)`` on every entry.

    Parameters
    ----------
    clipped_sum : np.ndarray
        Sum of the cohort's clipped payloads (any shape), finite.
    noise_multiplier : float
        ``z``.
    norm_bound : float
        ``S``.
    rng : numpy.random.Generator, optional
        Source of randomness; OS-seeded when omitted.

    Returns
    -------
    np.ndarray
        float64 noisy sum, same shape. Divide by the (public) cohort size afterwards
        for a mean; that is post-processing.
    """
    total = _finite_array(clipped_sum, "clipped_sum")
    std = central_noise_std(noise_multiplier, norm_bound)
    return total + gaussian_noise(total.shape, std, rng)


def noise_share_std(noise_multiplier: float, norm_bound: float, num_clients: int) -> float:
    """Standard deviation ``z S / sqrt(n)`` of one client's share of distributed noise.

    Parameters
    ----------
    noise_multiplier : float
        ``z`` that the *sum* of ``num_clients`` shares must carry.
    norm_bound : float
        ``S``.
    num_clients : int
        ``n``, the number of clients whose shares enter the sum.
    """
    n = _count(num_clients, "num_clients")
    return central_noise_std(noise_multiplier, norm_bound) / math.sqrt(n)


def add_noise_share(
    clipped_payload: np.ndarray,
    noise_multiplier: float,
    norm_bound: float,
    num_clients: int,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Distributed DP: one client's clipped payload plus its ``N(0, (z S)^2 / n)`` share.

    Parameters
    ----------
    clipped_payload : np.ndarray
        The client's payload after clipping to ``norm_bound``, finite.
    noise_multiplier : float
        ``z`` of the sum.
    norm_bound : float
        ``S``.
    num_clients : int
        ``n``, clients expected in the sum.
    rng : numpy.random.Generator, optional
        Source of randomness; OS-seeded when omitted.

    Returns
    -------
    np.ndarray
        float64 noisy payload, same shape.
    """
    payload = _finite_array(clipped_payload, "clipped_payload")
    std = noise_share_std(noise_multiplier, norm_bound, num_clients)
    return payload + gaussian_noise(payload.shape, std, rng)


def realized_noise_multiplier(
    noise_multiplier: float, cohort_size: int, num_received: int
) -> float:
    """Noise multiplier the sum really carries when only some shares arrived.

    Each of ``cohort_size`` clients added variance ``sigma^2 / cohort_size``; a sum of
    ``num_received`` shares carries ``sigma^2 * num_received / cohort_size``.

    Parameters
    ----------
    noise_multiplier : float
        ``z`` the shares were calibrated for.
    cohort_size : int
        ``n`` the clients divided the noise by.
    num_received : int
        Shares that entered the sum (at least 1, at most ``cohort_size``).

    Returns
    -------
    float
        ``z * sqrt(num_received / cohort_size)``; give this to the accountant.
    """
    expected = _count(cohort_size, "cohort_size")
    received = _count(num_received, "num_received")
    if received > expected:
        raise ValueError(
            f"{received} noise shares arrived but the clients split the noise for "
            f"{expected}; tell the clients the real cohort size (dp-num-clients)"
        )
    return _positive(noise_multiplier, "noise_multiplier") * math.sqrt(received / expected)
