"""Adaptive aggregation: scale client weights by how stable their predictions are.

:class:`AdaptiveWeighting` wraps any weight function and multiplies each client's weight
by the test-retest reliability of its predictions across rounds (pure numpy, no Flower
import). See docs/adaptive_weighting.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..aggregation.logit_consensus import softmax
from ..aggregation.payload import ClientPayload
from .base import WeightFn, sample_count_weights

__all__ = ["AdaptiveWeighting", "prediction_instability"]


def prediction_instability(previous: np.ndarray, current: np.ndarray) -> float:
    """One minus the test-retest correlation of a client's predictions on the same samples.

    Parameters
    ----------
    previous : np.ndarray
        Class probabilities ``(n, C)`` at the earlier round.
    current : np.ndarray
        Class probabilities ``(n, C)`` of the same ``n`` samples, in the same
        order, at the later round; ``n >= 2``.

    Returns
    -------
    float
        ``1 - r`` with ``r`` the Pearson correlation, over all samples and classes,
        of the two rounds' predictions after subtracting each class's mean over the
        samples: 0 for predictions that repeat themselves (up to a change of
        scale or of the class means), about 1 for predictions unrelated to the
        sample (random), up to 2 for predictions that invert. Defined as 1.0 when
        either round's predictions do not vary across samples.

    Raises
    ------
    ValueError
        If the shapes differ, fewer than two samples are given, or a value is not
        finite.

    Examples
    --------
    >>> p = np.eye(3)
    >>> prediction_instability(p, p)
    0.0
    >>> prediction_instability(p, p[[1, 2, 0]])
    1.5
    """
    a = np.asarray(previous, dtype=np.float64)
    b = np.asarray(current, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"previous {a.shape} and current {b.shape} must both be (n, C)")
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 common samples, got {a.shape[0]}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("predictions must be finite")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    scale = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    if scale <= 1e-24:
        return 1.0
    correlation = min(max(float(np.sum(a * b)) / scale, -1.0), 1.0)
    return 1.0 - correlation


@dataclass
class _ClientTrack:
    """What the server remembers of one client between its participations."""

    round: int
    indices: np.ndarray
    probabilities: np.ndarray
    smoothed: float | None = None
    measurements: int = 0


class AdaptiveWeighting:
    """Client weights scaled by the test-retest reliability of their predictions.

    A :data:`~flhet_strategies.weighting.base.WeightFn`; see docs/adaptive_weighting.md
    for the rule and the literature behind it. Every call

    1. asks ``inner`` for the round's base weights;
    2. for every client seen before, measures :func:`prediction_instability`
       between its probabilities at its previous participation and now, on the
       proxy samples both rounds share, and updates its moving average
       ``u~ <- smoothing * u~ + (1 - smoothing) * u`` (the first measurement is
       taken as is);
    3. returns ``inner * clip(1 - u~, 0, 1) ** power`` (at least ``min_factor``),
       normalised to sum to one, or the normalised inner weights when
       ``use_for_weights`` is False (audit only).

    Parameters
    ----------
    inner : WeightFn (default: sample_count_weights)
        The weights to adapt.
    smoothing : float (default: 0.5)
        Weight of the past in the moving average of the instability, in ``[0, 1)``;
        0 uses the latest measurement alone.
    power : float (default: 1.0)
        Exponent of the reliability factor, ``>= 0``; 0 disables the adaptation,
        larger values separate clients of different stability more sharply.
    min_factor : float (default: 0.0)
        Lower bound of the factor, in ``[0, 1]``; above 0 no client is silenced.
    temperature : float (default: 1.0)
        Softmax temperature turning logits into probabilities (use the
        consensus rule's ``temperature``).
    min_common : int (default: 10)
        Fewest proxy samples shared with the client's previous participation for
        a measurement, ``>= 2``.
    use_for_weights : bool (default: True)
        False: measure and record, but return the inner weights.

    Attributes
    ----------
    history : list[dict]
        One entry per call: ``round``, ``instability`` (this round's measurement
        per client, ``None`` where there was none), ``smoothed`` (moving average,
        ``None`` before the first measurement), ``factors`` (the factor applied, or
        that would be applied when auditing), ``common`` (shared proxy samples)
        and ``fallback`` (True when the inner weights were returned because every
        factor was zero).
    """

    def __init__(
        self,
        inner: WeightFn = sample_count_weights,
        *,
        smoothing: float = 0.5,
        power: float = 1.0,
        min_factor: float = 0.0,
        temperature: float = 1.0,
        min_common: int = 10,
        use_for_weights: bool = True,
    ) -> None:
        if not callable(inner):
            raise ValueError(f"inner must be a weight function, got {inner!r}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
        if not (np.isfinite(power) and power >= 0.0):
            raise ValueError(f"power must be finite and >= 0, got {power}")
        if not 0.0 <= min_factor <= 1.0:
            raise ValueError(f"min_factor must lie in [0, 1], got {min_factor}")
        if not (np.isfinite(temperature) and temperature > 0.0):
            raise ValueError(f"temperature must be positive, got {temperature}")
        if isinstance(min_common, bool) or int(min_common) != min_common or min_common < 2:
            raise ValueError(f"min_common must be an integer >= 2, got {min_common!r}")
        self.inner = inner
        self.smoothing = float(smoothing)
        self.power = float(power)
        self.min_factor = float(min_factor)
        self.temperature = float(temperature)
        self.min_common = int(min_common)
        self.use_for_weights = bool(use_for_weights)
        self.history: list[dict] = []
        self._tracks: dict[str, _ClientTrack] = {}
        self._last_round: int | None = None

    def instability(self) -> dict[str, float]:
        """The current moving-average instability of every client measured so far."""
        return {cid: t.smoothed for cid, t in self._tracks.items() if t.smoothed is not None}

    def __call__(
        self, payloads: Sequence[ClientPayload], server_round: int, proxy_indices: np.ndarray
    ) -> np.ndarray:
        """Adapt the inner weights of the round's clients to their prediction stability.

        Parameters
        ----------
        payloads : Sequence[ClientPayload]
            The round's validated payloads (logits on ``proxy_indices``).
        server_round : int
            The round; must increase from call to call.
        proxy_indices : np.ndarray
            Proxy index of each row of the payloads' logits (unique).

        Returns
        -------
        np.ndarray
            One non-negative weight per payload, summing to one.

        Raises
        ------
        ValueError
            For an empty or repeated cohort, a round that does not increase,
            indices that do not match the logits, or inner weights that are not
            non-negative, finite and not all zero.
        """
        server_round = int(server_round)
        indices = self._check_inputs(payloads, server_round, proxy_indices)
        base = np.asarray(self.inner(payloads, server_round, proxy_indices), dtype=np.float64)
        if base.shape != (len(payloads),) or not np.all(np.isfinite(base)) \
                or np.any(base < 0) or base.sum() <= 0:
            raise ValueError(
                f"inner weight function must return {len(payloads)} finite non-negative "
                f"weights, not all zero; got {base}"
            )
        self._last_round = server_round
        ids = [str(p.client_id) for p in payloads]
        order = np.argsort(indices, kind="stable")
        sorted_indices = indices[order]
        raw: dict[str, float | None] = {}
        common: dict[str, int] = {}
        for cid, payload in zip(ids, payloads):
            probabilities = softmax(np.asarray(payload.logits)[order], self.temperature)
            raw[cid], common[cid] = self._measure(cid, sorted_indices, probabilities)
            self._remember(cid, server_round, sorted_indices, probabilities, raw[cid])
        smoothed = {cid: self._tracks[cid].smoothed for cid in ids}
        factors = self._factors(smoothed)
        weights = base * np.array([factors[cid] for cid in ids])
        fallback = bool(weights.sum() <= 0)
        self.history.append({"round": server_round, "instability": raw, "smoothed": smoothed,
                             "factors": factors, "common": common, "fallback": fallback})
        if fallback or not self.use_for_weights:
            return base / base.sum()
        return weights / weights.sum()

    def _check_inputs(self, payloads, server_round: int, proxy_indices) -> np.ndarray:
        if not payloads:
            raise ValueError("no payloads to weight")
        ids = [str(p.client_id) for p in payloads]
        if len(set(ids)) != len(ids):
            raise ValueError(f"client ids repeat within the round: {ids}")
        if self._last_round is not None and server_round <= self._last_round:
            raise ValueError(
                f"round {server_round} is not after the last weighted round {self._last_round}"
            )
        indices = np.asarray(proxy_indices)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"proxy_indices must be a 1-D integer array, got {indices!r}")
        if np.unique(indices).size != indices.size:
            raise ValueError("proxy_indices must be unique")
        for payload in payloads:
            shape = np.shape(payload.logits)
            if len(shape) != 2 or shape[0] != indices.size:
                raise ValueError(
                    f"client {payload.client_id}: logits of shape {shape} do not match "
                    f"{indices.size} proxy indices"
                )
        return indices.astype(np.int64)

    def _measure(self, cid: str, indices: np.ndarray, probabilities: np.ndarray
                 ) -> tuple[float | None, int]:
        """This round's instability of a known client, on the shared proxy samples."""
        track = self._tracks.get(cid)
        if track is None or track.probabilities.shape[1] != probabilities.shape[1]:
            return None, 0
        _, now, before = np.intersect1d(indices, track.indices, assume_unique=True,
                                        return_indices=True)
        if now.size < self.min_common:
            return None, int(now.size)
        value = prediction_instability(track.probabilities[before], probabilities[now])
        return value, int(now.size)

    def _remember(self, cid: str, server_round: int, indices: np.ndarray,
                  probabilities: np.ndarray, value: float | None) -> None:
        track = self._tracks.get(cid)
        smoothed, count = (None, 0) if track is None else (track.smoothed, track.measurements)
        if track is not None and track.probabilities.shape[1] != probabilities.shape[1]:
            smoothed, count = None, 0  # another label space: start afresh
        if value is not None:
            smoothed = value if smoothed is None else (
                self.smoothing * smoothed + (1.0 - self.smoothing) * value)
            count += 1
        self._tracks[cid] = _ClientTrack(server_round, indices, probabilities, smoothed, count)

    def _factors(self, smoothed: dict[str, float | None]) -> dict[str, float]:
        measured = {cid: max(min(1.0 - u, 1.0), 0.0) ** self.power
                    for cid, u in smoothed.items() if u is not None}
        measured = {cid: max(f, self.min_factor) for cid, f in measured.items()}
        typical = float(np.median(list(measured.values()))) if measured else 1.0
        return {cid: measured.get(cid, typical) for cid in smoothed}
