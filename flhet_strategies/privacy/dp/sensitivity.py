r"""L2 sensitivity of a sum of clipped client payloads (pure numpy, no Flower import).

``S`` under add-or-remove-one; under replace-one ``sqrt(2) S`` for non-negative payloads
(probabilities) and ``2 S`` for signed ones. :func:`accounting_noise_multiplier` turns
``z = sigma / S`` into the accountant's ``sigma / Delta``. Derivation:
docs/dp_sensitivity.md.
"""

from __future__ import annotations

import math

from .clipping import payload_norm_bound

ADD_OR_REMOVE_ONE = "add-or-remove-one"
REPLACE_ONE = "replace-one"
NEIGHBOURING_RELATIONS = (ADD_OR_REMOVE_ONE, REPLACE_ONE)
"""Neighbouring relations, spelled as Flower's ``NeighboringRelation`` values."""


def sensitivity_factor(relation: str, non_negative: bool = False) -> float:
    """``Delta / S``: the sum's L2 sensitivity per unit of the clipping bound.

    Parameters
    ----------
    relation : str
        ``"add-or-remove-one"`` or ``"replace-one"``.
    non_negative : bool (default: False)
        Whether every clipped payload is entry-wise non-negative (prediction payloads).

    Returns
    -------
    float
        1 for add-or-remove-one; for replace-one ``sqrt(2)`` when non-negative, else 2.
    """
    if relation == ADD_OR_REMOVE_ONE:
        return 1.0
    if relation == REPLACE_ONE:
        return math.sqrt(2.0) if non_negative else 2.0
    raise ValueError(f"relation must be one of {NEIGHBOURING_RELATIONS}, got {relation!r}")


def sum_sensitivity(norm_bound: float, relation: str, non_negative: bool = False) -> float:
    """L2 sensitivity of a sum of payloads each of L2 norm at most ``norm_bound``.

    Parameters
    ----------
    norm_bound : float
        ``S``, the bound on every clipped payload (see
        :func:`~.clipping.payload_norm_bound`).
    relation : str
        ``"add-or-remove-one"`` or ``"replace-one"``.
    non_negative : bool (default: False)
        Whether the payloads are entry-wise non-negative.

    Returns
    -------
    float
        ``Delta = sensitivity_factor(relation, non_negative) * S``.
    """
    if not math.isfinite(norm_bound) or norm_bound <= 0:
        raise ValueError(f"norm_bound must be positive and finite, got {norm_bound!r}")
    return sensitivity_factor(relation, non_negative) * float(norm_bound)


def prediction_payload_sensitivity(
    num_rows: int, relation: str, clip_norm: float | None = None, clip_mode: str = "flat"
) -> float:
    """Sensitivity of a sum of probability payloads of shape ``(num_rows, C)``.

    Parameters
    ----------
    num_rows : int
        Proxy samples per payload, ``m``.
    relation : str
        ``"add-or-remove-one"`` or ``"replace-one"``.
    clip_norm : float, optional
        The clipping parameter (``S`` for ``"flat"``, the row bound ``r`` for
        ``"per-row"``); ``None`` for unclipped probabilities.
    clip_mode : str (default: "flat")
        ``"flat"`` or ``"per-row"`` (see :mod:`.clipping`).

    Returns
    -------
    float
        ``sqrt(m)`` (add/remove) or ``sqrt(2 m)`` (replace-one) unclipped; with clipping
        the smaller of that and the clipped bound times :func:`sensitivity_factor`
        (non-negative payloads).
    """
    if isinstance(num_rows, bool) or int(num_rows) != num_rows or num_rows < 1:
        raise ValueError(f"num_rows must be a positive integer, got {num_rows!r}")
    natural = math.sqrt(int(num_rows))  # ||P||_F <= sqrt(m) for probability rows
    bound = natural
    if clip_norm is not None:
        bound = min(natural, payload_norm_bound(clip_norm, clip_mode, int(num_rows)))
    return sum_sensitivity(bound, relation, non_negative=True)


def accounting_noise_multiplier(
    noise_multiplier: float, relation: str, non_negative: bool = False
) -> float:
    """The accountant's noise multiplier ``sigma / Delta`` from ``z = sigma / S``.

    Parameters
    ----------
    noise_multiplier : float
        ``z``: noise standard deviation on the clipped sum divided by the clipping bound
        ``S`` (Flower's convention, e.g. in its DP strategy wrappers).
    relation : str
        The neighbouring relation the accountant uses.
    non_negative : bool (default: False)
        Whether the payloads are non-negative (prediction payloads).

    Returns
    -------
    float
        ``z / sensitivity_factor(relation, non_negative)``.
    """
    if not math.isfinite(noise_multiplier) or noise_multiplier <= 0:
        raise ValueError(
            f"noise_multiplier must be positive and finite, got {noise_multiplier!r}"
        )
    return float(noise_multiplier) / sensitivity_factor(relation, non_negative)
