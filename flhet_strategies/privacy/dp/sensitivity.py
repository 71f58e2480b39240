r"""L2 sensitivity of a sum of clipped client payloads (pure numpy, no Flower import).

The private release is the sum over the round's cohort of clipped payloads plus
Gaussian noise, :math:`\sum_i x_i + \mathcal N(0, \sigma^2 I)`, with
:math:`\|x_i\|_2 \le S` (see :mod:`.clipping`). The guarantee is *client-level*: two
federations are neighbours if they differ in one client's whole data set, which covers
any change of one of its records too.

Derivation
----------
**add-or-remove-one** (one client more or less). The sum changes by one clipped payload,
so :math:`\Delta = S`.

**replace-one** (one client's data swapped). The sum changes by :math:`x - x'`.
For signed payloads (model updates) :math:`\|x - x'\| \le \|x\| + \|x'\| \le 2S`,
attained at :math:`x' = -x`. Prediction payloads are non-negative (probabilities,
clipped by scaling, which keeps signs), so :math:`\langle x, x'\rangle \ge 0` and

.. math:: \|x - x'\|^2 = \|x\|^2 + \|x'\|^2 - 2\langle x, x'\rangle \le 2S^2,
          \qquad \Delta = \sqrt 2\, S,

attained by payloads with disjoint supports (e.g. one-hot predictions of different
classes on every row).

Unclipped probability payloads are already bounded: a probability row :math:`p` has
:math:`\|p\|_2^2 = \sum_c p_c^2 \le (\sum_c p_c)^2 = 1`, and two rows differ by at most
:math:`\sqrt 2` (two different one-hot rows). An ``(m, C)`` payload therefore has
:math:`\|P\|_F \le \sqrt m`, and clipping to :math:`S \ge \sqrt m` changes nothing.

Which relation
--------------
The relation is fixed by the client sampling that the accountant can amplify
(dp-accounting, behind Flower's ``RdpAccountant``): Poisson sampling and full
participation are accounted under add-or-remove-one; fixed-size sampling without
replacement (flhet's default cohort sampler) only under replace-one. Use the matching
:math:`\Delta`; :func:`accounting_noise_multiplier` converts the usual noise multiplier
:math:`z = \sigma / S` into the accountant's :math:`\sigma / \Delta`.
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
