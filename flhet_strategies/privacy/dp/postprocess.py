"""Turn noisy probability rows back into distributions (post-processing, no Flower import).

Gaussian noise makes some entries of a probability payload negative and rows no longer
sum to one. Anything computed from a DP release alone is post-processing and costs no
privacy, so the server (on the noisy sum) or a client (on its own noisy reply) may clamp
and renormalise freely.
"""

from __future__ import annotations

import numpy as np


def noisy_rows_to_probabilities(noisy: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Clamp every entry to at least ``floor`` and renormalise each row to sum to one.

    Parameters
    ----------
    noisy : np.ndarray
        Noisy (mean or summed) probabilities, shape ``(num_rows, num_classes)``, finite.
    floor : float (default: 0.0)
        Smallest value kept, ``0 <= floor < 1 / num_classes``; use a positive floor
        when the result goes through a logarithm.

    Returns
    -------
    np.ndarray
        float64 rows on the probability simplex (every entry at least
        ``floor / (row sum)``). A row whose clamped entries are all zero becomes uniform.
    """
    array = np.asarray(noisy, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 1:
        raise ValueError(f"noisy probabilities must be (rows, classes), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("noisy probabilities contain NaN/Inf values")
    if not 0.0 <= floor < 1.0 / array.shape[1]:
        raise ValueError(f"floor must be in [0, 1/{array.shape[1]}), got {floor!r}")
    clamped = np.maximum(array, floor)
    sums = clamped.sum(axis=1, keepdims=True)
    uniform = np.full_like(clamped, 1.0 / array.shape[1])
    return np.where(sums > 0, clamped / np.where(sums > 0, sums, 1.0), uniform)
