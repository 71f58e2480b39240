"""L2 clipping of one client's payload (pure numpy, no Flower import).

``"flat"`` scales the whole payload to norm at most ``S``; ``"per-row"`` scales every row
to at most ``r`` (``S = r sqrt(rows)``). Scaling keeps a non-negative payload
non-negative. See docs/dp_sensitivity.md.
"""

from __future__ import annotations

import numpy as np

CLIP_MODES = ("flat", "per-row")


def _checked(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{what} must be a numeric array, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{what} contains {bad} NaN/Inf values; clip only finite payloads")
    return array


def _checked_norm(clip_norm: float, name: str) -> float:
    if isinstance(clip_norm, bool) or not np.isfinite(clip_norm) or clip_norm <= 0:
        raise ValueError(f"{name} must be positive and finite, got {clip_norm!r}")
    return float(clip_norm)


def clip_by_l2_norm(values: np.ndarray, clip_norm: float) -> np.ndarray:
    """Scale ``values`` so that its L2 norm (over all entries) is at most ``clip_norm``.

    Parameters
    ----------
    values : np.ndarray
        A finite numeric payload of any shape.
    clip_norm : float
        The bound ``S``, positive.

    Returns
    -------
    np.ndarray
        float64 array of the same shape; ``values`` unchanged when its norm is already
        at most ``clip_norm``, otherwise ``values * clip_norm / ||values||``.

    Raises
    ------
    ValueError
        If ``values`` is not numeric or has NaN/Inf, or ``clip_norm`` is not positive.
    """
    array = _checked(values, "payload")
    bound = _checked_norm(clip_norm, "clip_norm")
    norm = float(np.linalg.norm(array.ravel()))
    if norm <= bound:
        return array.copy()
    return array * (bound / norm)


def clip_rows_by_l2_norm(values: np.ndarray, row_clip_norm: float) -> np.ndarray:
    """Scale every row of a 2-D payload to L2 norm at most ``row_clip_norm``.

    Parameters
    ----------
    values : np.ndarray
        Finite payload of shape ``(num_rows, row_length)``, e.g. predictions
        ``(num_proxy_samples, num_classes)``.
    row_clip_norm : float
        The per-row bound ``r``, positive. The whole payload then has L2 norm at most
        ``r * sqrt(num_rows)``.

    Returns
    -------
    np.ndarray
        float64 array of the same shape; rows already within the bound unchanged.

    Raises
    ------
    ValueError
        If ``values`` is not 2-D, not numeric, has NaN/Inf, or the bound is not positive.
    """
    array = _checked(values, "payload")
    if array.ndim != 2:
        raise ValueError(f"per-row clipping needs a 2-D payload, got shape {array.shape}")
    bound = _checked_norm(row_clip_norm, "row_clip_norm")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    over = norms > bound
    scale = np.divide(bound, norms, out=np.ones_like(norms), where=over)
    return array * scale


def clip_payload(values: np.ndarray, clip_norm: float, mode: str = "flat") -> np.ndarray:
    """Clip a payload in ``mode`` ``"flat"`` (whole payload) or ``"per-row"``.

    Parameters
    ----------
    values : np.ndarray
        The client's payload.
    clip_norm : float
        ``S`` for ``"flat"``; the per-row bound ``r`` for ``"per-row"``.
    mode : str (default: "flat")
        One of :data:`CLIP_MODES`.

    Returns
    -------
    np.ndarray
        The clipped float64 payload.
    """
    if mode == "flat":
        return clip_by_l2_norm(values, clip_norm)
    if mode == "per-row":
        return clip_rows_by_l2_norm(values, clip_norm)
    raise ValueError(f"clip mode must be one of {CLIP_MODES}, got {mode!r}")


def payload_norm_bound(clip_norm: float, mode: str = "flat", num_rows: int | None = None) -> float:
    """The L2 bound ``S`` on a whole payload after :func:`clip_payload`.

    Parameters
    ----------
    clip_norm : float
        The clipping parameter given to :func:`clip_payload`.
    mode : str (default: "flat")
        ``"flat"`` gives ``clip_norm``; ``"per-row"`` gives ``clip_norm * sqrt(num_rows)``.
    num_rows : int, optional
        Rows of the payload; required for ``"per-row"``.

    Returns
    -------
    float
        The bound that the sensitivity and the noise scale refer to.
    """
    bound = _checked_norm(clip_norm, "clip_norm")
    if mode == "flat":
        return bound
    if mode == "per-row":
        if num_rows is None or int(num_rows) < 1:
            raise ValueError(f"per-row clipping needs num_rows >= 1, got {num_rows!r}")
        return bound * float(np.sqrt(int(num_rows)))
    raise ValueError(f"clip mode must be one of {CLIP_MODES}, got {mode!r}")
