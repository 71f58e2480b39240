"""One client's clipped contribution plus its share of the Gaussian noise (Flower-free).

The client step of distributed DP, and the server step of central DP, for any weighted
sum (:mod:`flhet_strategies.aggregation.weighted_sum`) and for FedAvg model updates: the
contribution becomes a matrix of rows, is clipped, and gets ``N(0, (z S)^2 / n)``. See
docs/dp_sensitivity.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import wire
from ...aggregation.weighted_sum import SumLayout, SumTerm, WeightedSums
from .clipping import CLIP_MODES, clip_by_l2_norm, clip_payload, payload_norm_bound
from .gaussian import add_noise_share, noise_share_std


def noisy_name(term: str) -> str:
    """Reply array of a term's noisy weighted values."""
    return f"noisy_{term}"


def noisy_weight_name(term: str) -> str:
    """Reply array of a term's noisy weights (per-class weights that are not public)."""
    return f"noisy_{term}_weights"


def _positive_number(value: Any, key: str) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"'{key}' must be a positive finite number, got {value!r}")
    return float(value)


def _positive_count(value: Any, key: str) -> int:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or int(value) != value or value < 1:
        raise ValueError(f"'{key}' must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class NoiseShareSettings:
    """What a client needs to clip its contribution and add its share of the noise.

    Parameters
    ----------
    noise_multiplier : float
        ``z``: the noise on the *sum* of the cohort's clipped contributions is ``z S``.
    clip_norm : float
        ``S`` with ``"flat"``, the row bound ``r`` with ``"per-row"``.
    num_clients : int (default: 1)
        ``n``, the shares in the sum (1 is local DP).
    clip_mode : str (default: "flat")
        ``"flat"`` or ``"per-row"``.

    Raises
    ------
    ValueError
        Naming the config key whose value is bad.
    """

    noise_multiplier: float
    clip_norm: float
    num_clients: int = 1
    clip_mode: str = "flat"

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier",
                           _positive_number(self.noise_multiplier, wire.DP_NOISE_MULTIPLIER))
        object.__setattr__(self, "clip_norm",
                           _positive_number(self.clip_norm, wire.DP_CLIP_NORM))
        object.__setattr__(self, "num_clients",
                           _positive_count(self.num_clients, wire.DP_NUM_CLIENTS))
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"'{wire.DP_CLIP_MODE}' must be one of {CLIP_MODES}, "
                             f"got {self.clip_mode!r}")

    def norm_bound(self, num_rows: int) -> float:
        """``S`` of a contribution of ``num_rows`` rows."""
        return payload_norm_bound(self.clip_norm, self.clip_mode, num_rows)

    def share_std(self, num_rows: int) -> float:
        """Standard deviation ``z S / sqrt(n)`` of this client's share per entry."""
        return noise_share_std(self.noise_multiplier, self.norm_bound(num_rows), self.num_clients)

    def to_config(self) -> dict[str, object]:
        """The config entries a server sends (inverse of :meth:`from_config`)."""
        return {wire.DP_NOISE_MULTIPLIER: self.noise_multiplier,
                wire.DP_CLIP_NORM: self.clip_norm, wire.DP_NUM_CLIENTS: self.num_clients,
                wire.DP_CLIP_MODE: self.clip_mode}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], noise_multiplier: float | None = None,
                    clip_norm: float | None = None, num_clients: int | None = 1,
                    clip_mode: str = "flat", owner: str = "the client") -> "NoiseShareSettings":
        """Read the settings from a config, falling back to the given defaults.

        Raises
        ------
        ValueError
            Naming the key that is missing from both or has a bad value.
        """
        values = []
        for key, default in ((wire.DP_NOISE_MULTIPLIER, noise_multiplier),
                             (wire.DP_CLIP_NORM, clip_norm), (wire.DP_NUM_CLIENTS, num_clients),
                             (wire.DP_CLIP_MODE, clip_mode)):
            value = config.get(key, default)
            if value is None:
                raise ValueError(f"'{key}' is neither in the config nor given to {owner}; the "
                                 "server sends it with distributed differential privacy")
            values.append(value)
        return cls(*values)


@dataclass(frozen=True)
class RowLayout:
    """How a contribution matrix splits back into terms (see :func:`contribution_rows`)."""

    pieces: tuple[tuple[str, tuple[int, ...], int, bool], ...]
    """Per term: name, shape, rows, whether a weight column follows its values."""


def contribution_rows(layout: SumLayout, values: Mapping[str, np.ndarray],
                      weights: Mapping[str, np.ndarray] | None = None
                      ) -> tuple[np.ndarray, RowLayout]:
    """A client's contribution as one matrix of rows (float64) and how to split it.

    With public weights (``layout.public_weights``) a term contributes its values; with
    private per-class weights along axis 0 it contributes ``[w_c x_c, w_c]`` per row
    ``c``, so clipping a row scales a value and its weight alike (the mean stays a
    weighted mean). Rows of different widths are zero-padded to the widest.

    Raises
    ------
    ValueError
        If a value has the wrong shape or is not finite, or private weights do not run
        along axis 0.
    """
    blocks, pieces = [], []
    for term in layout.terms:
        x = np.asarray(values[term.name], dtype=np.float64)
        if x.shape != term.shape or not np.all(np.isfinite(x)):
            raise ValueError(f"term {term.name!r} must be finite of shape {term.shape}, "
                             f"got {x.shape}")
        rows = x.reshape(term.shape[0] if term.shape else 1, -1)
        with_weights = not layout.public_weights
        if with_weights:
            if term.weight_axis != 0:
                raise ValueError(f"differential privacy with {layout.weighting!r} weights "
                                 f"needs them along axis 0 of term {term.name!r}")
            w = np.asarray((weights or {})[term.name], dtype=np.float64).reshape(-1, 1)
            rows = np.hstack([rows * w, w])
        blocks.append(rows)
        pieces.append((term.name, term.shape, rows.shape[0], with_weights))
    width = max(b.shape[1] for b in blocks)
    matrix = np.vstack([np.pad(b, ((0, 0), (0, width - b.shape[1]))) for b in blocks])
    return matrix, RowLayout(tuple(pieces))


def split_rows(matrix: np.ndarray, rows: RowLayout) -> dict[str, np.ndarray]:
    """Inverse of :func:`contribution_rows`, by reply names: :func:`noisy_name` of every
    term (its weighted values) and, with private weights, :func:`noisy_weight_name`."""
    out, start = {}, 0
    for name, shape, count, with_weights in rows.pieces:
        block = matrix[start:start + count]
        start += count
        width = int(math.prod(shape[1:])) if len(shape) > 1 else 1
        out[noisy_name(name)] = block[:, :width].reshape(shape)
        if with_weights:
            out[noisy_weight_name(name)] = block[:, width].copy()
    return out


def noisy_layout(layout: SumLayout, clip_norm: float, clip_mode: str, norm_bound: float,
                 share_std: float, bound_stds: float = 8.0) -> SumLayout:
    """The layout of noisy contributions (what a client sends under distributed DP).

    Its terms are the reply arrays of :func:`split_rows`, weighted uniformly, within the
    public range ``[-B, B]``, ``B = E + k sigma``: ``E`` bounds a clipped entry (the
    term's own range, the row bound, or ``S``), ``sigma`` the share's noise std and
    ``k = bound_stds``. A value leaves the range with probability ``2 Phi(-k)`` (a
    secure sum clips it there). ``params`` keep the original layout (``"base"``).
    """
    entry = clip_norm if clip_mode == "per-row" else norm_bound
    terms = []
    for term in layout.terms:
        own = max(abs(term.low), abs(term.high))
        bound = min(own, entry) + bound_stds * share_std
        terms.append(SumTerm(noisy_name(term.name), term.shape, None, -bound, bound))
        if not layout.public_weights:
            wbound = min(1.0, entry) + bound_stds * share_std
            terms.append(SumTerm(noisy_weight_name(term.name), (term.weight_size,), None,
                                 -wbound, wbound))
    return SumLayout(layout.algorithm, tuple(terms), "uniform",
                     {**layout.params, "base": layout.to_dict()})


def sums_from_noisy(layout: SumLayout, totals: Mapping[str, np.ndarray],
                    received: int) -> WeightedSums:
    """The weighted sums of ``layout`` from the summed noisy reply arrays of ``received``
    clients (denominators: the count with public weights, else the noisy weights)."""
    nums, dens = {}, {}
    for term in layout.terms:
        nums[term.name] = np.asarray(totals[noisy_name(term.name)], dtype=np.float64)
        dens[term.name] = (np.full(term.weight_size, float(received)) if layout.public_weights
                           else np.asarray(totals[noisy_weight_name(term.name)], dtype=np.float64))
    return WeightedSums(nums, dens, int(received))


def clip_rows(matrix: np.ndarray, clip_norm: float, clip_mode: str) -> tuple[np.ndarray, float]:
    """Clip a contribution matrix; return it and its bound ``S``."""
    return (clip_payload(matrix, clip_norm, clip_mode),
            payload_norm_bound(clip_norm, clip_mode, matrix.shape[0]))


@dataclass(frozen=True)
class NoisyContribution:
    """A client's privatized contribution.

    Parameters
    ----------
    arrays : dict[str, np.ndarray]
        float32 reply arrays: :func:`noisy_name` of every term (its weighted values) and,
        with private weights, :func:`noisy_weight_name` (its weights).
    norm_bound : float
        ``S``.
    noise_std : float
        Standard deviation of the added share per entry.
    """

    arrays: dict[str, np.ndarray]
    norm_bound: float
    noise_std: float


def noise_share(layout: SumLayout, values: Mapping[str, np.ndarray],
                weights: Mapping[str, np.ndarray] | None, settings: NoiseShareSettings,
                rng: np.random.Generator | None = None) -> NoisyContribution:
    """Clip a contribution and add this client's noise share ``N(0, (z S)^2 / n)``.

    Parameters
    ----------
    layout : SumLayout
        The weighted sum (its terms and whether weights are public).
    values, weights : Mapping
        The client's term values and (private weightings) its weights.
    settings : NoiseShareSettings
        ``z``, the clip, the clip mode and ``n``.
    rng : numpy.random.Generator, optional
        For tests; by default a fresh OS-seeded generator per call.
    """
    matrix, rows = contribution_rows(layout, values, weights)
    clipped, bound = clip_rows(matrix, settings.clip_norm, settings.clip_mode)
    noisy = add_noise_share(clipped, settings.noise_multiplier, bound, settings.num_clients, rng)
    arrays = {name: np.asarray(value, dtype=np.float32)
              for name, value in split_rows(noisy, rows).items()}
    return NoisyContribution(arrays, bound, noise_share_std(settings.noise_multiplier, bound,
                                                            settings.num_clients))


def _float_arrays(arrays: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    out = []
    for i, array in enumerate(arrays):
        array = np.asarray(array)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{what} array {i} has dtype {array.dtype}: noise can only be "
                             "added to floating-point parameters")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{what} array {i} contains NaN/Inf values")
        out.append(array)
    return out


def model_update(received: Sequence[np.ndarray],
                 returned: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``returned - received`` array by array (float64), after checking they match.

    Raises
    ------
    ValueError
        If the lists differ in length or shapes, or hold non-float or non-finite arrays.
    """
    sent = _float_arrays(received, "received")
    trained = _float_arrays(returned, "returned")
    if len(sent) != len(trained):
        raise ValueError(f"the client returned {len(trained)} arrays for the {len(sent)} it "
                         "received")
    for i, (a, b) in enumerate(zip(sent, trained)):
        if a.shape != b.shape:
            raise ValueError(f"array {i}: returned shape {b.shape} != received shape {a.shape}")
    return [b.astype(np.float64) - a.astype(np.float64) for a, b in zip(sent, trained)]


def privatize_update(received: Sequence[np.ndarray], returned: Sequence[np.ndarray],
                     settings: NoiseShareSettings,
                     rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """FedAvg: received + the flat-clipped update + this client's noise share.

    Returns the arrays to send, each in the dtype and shape of ``returned``.
    """
    update = model_update(received, returned)
    flat = np.concatenate([u.ravel() for u in update]) if update else np.zeros(0)
    clipped = clip_by_l2_norm(flat, settings.clip_norm)
    noisy = add_noise_share(clipped, settings.noise_multiplier, settings.clip_norm,
                            settings.num_clients, rng)
    out, start = [], 0
    for base, trained in zip(received, returned):
        size = int(np.asarray(base).size)
        piece = noisy[start:start + size].reshape(np.shape(base))
        start += size
        out.append((np.asarray(base, dtype=np.float64) + piece).astype(np.asarray(trained).dtype))
    return out


__all__ = ["NoiseShareSettings", "NoisyContribution", "RowLayout", "clip_rows",
           "contribution_rows", "model_update", "noise_share", "noisy_layout", "noisy_name",
           "noisy_weight_name", "privatize_update", "split_rows", "sums_from_noisy"]
