"""Adaptive aggregation: scale client weights by how stable their predictions are.

:class:`AdaptiveWeighting` is a stateful
:data:`~flhet_strategies.weighting.base.WeightFn` that wraps any other weight
function (sample counts, :class:`~flhet_strategies.weighting.contribution.weighting.
ContributionWeighting`, ...) and multiplies each client's weight by a factor
measured from the *rate of change of its predictions across rounds*::

    weighting = AdaptiveWeighting(inner=sample_count_weights)
    strategy = FedConsensus(..., weight_fn=weighting)

Pure numpy, no Flower import.

The rule: test-retest reliability of each client's predictions
---------------------------------------------------------------
Let ``a_k`` be client ``i``'s class probabilities ``softmax(logits / T)`` on proxy
sample ``k`` at its previous participation and ``b_k`` the same client's at this
round, on the ``n`` proxy samples both rounds asked for (consecutive rounds
overlap; with ``always_include`` the labeled validation slice is in every round).
Subtract from each round's predictions their mean over the ``n`` samples (per
class) and take the Pearson correlation ``r_i`` of the two rounds' centred
predictions over all samples and classes: the classical *test-retest reliability*
of the client as a measuring instrument. Its *instability*, the normalised rate
of change of what the client says about individual samples, is ``u_i = 1 - r_i``.

Model a client's centred prediction as ``signal(k) + noise(k, t)``, with signal
variance ``s^2`` across samples and fresh noise of variance ``e^2`` every round:
then ``r = s^2 / (s^2 + e^2)``, the share of the client's variance that is signal
(an intraclass correlation), and ``u = e^2 / (s^2 + e^2)`` the noise share. ``r``
is also the Bayes-optimal shrinkage coefficient of a noisy measurement (the best
linear predictor of the signal from the observation scales it by ``r``), which is
why it is used as the weight factor::

    w_i = inner_i * clip(1 - u~_i, 0, 1) ** power      (then normalised)

with ``u~`` an exponential moving average of ``u`` over the rounds the client took
part in (``smoothing``; FedAdp smooths its angles over rounds in the same way).

What that gives:

- a random-predicting free-rider draws fresh logits every round: its predictions
  on a sample are unrelated to its previous ones, ``r ~ 0`` and ``u ~ 1``, and its
  weight goes to zero from the second round on, whatever the scale of its logits;
- a client that answers the same for every sample (constant, e.g. uniform
  predictions) carries no information about the samples: ``u`` is defined as 1
  and it gets no weight either;
- an honest client's predictions converge, ``u`` falls towards 0 and the factor
  rises towards 1. Centring and the correlation make the score blind to a drift
  of the client's class prior and to its predictions sharpening (a change of
  scale), so a weak model whose few sample-specific opinions are consistent is
  not mistaken for a random one, and a confident and a cautious model, or models
  of different architectures, are judged alike;
- each client is judged on its own predictions alone: no cohort statistic (mean
  update, median) that a majority of bad clients could move.

(A first version normalised the squared change on the same sample by the squared
difference between different samples, without centring. On digits it scored two
honest but still weak clients, whose outputs barely varied across samples while
their class prior drifted, as random (``u ~ 1``), and the adaptive run lost
accuracy; centring fixed that.)

Why not FedAdp
--------------
FedAdp (Wu & Wang, "Fast-Convergent Federated Learning with Adaptive Weighting",
IEEE TCCN 2021) weights node ``i`` by ``n_i exp(f(theta~_i))`` with ``theta~_i`` the
running mean of the angle between its update and the global (weighted-mean)
update and ``f`` a Gompertz map, ``f(x) = alpha (1 - exp(-exp(-alpha (x - 1))))``,
``alpha = 5``. Carried over to predictions, the "global update" would be the
weighted mean of the clients' prediction changes, which a free-rider's large
random changes dominate (its angle to a mean it dominates is small), and late in
training honest clients' small changes are mostly SGD noise, so all angles drift
to 90 degrees. The reliability ratio keeps FedAdp's structure (a per-client
similarity of successive updates, smoothed over rounds, mapped to a multiplicative
weight) but needs no global direction and has a scale-free null value (``u = 1``
for a random client). FedLAW (Li et al., "Revisiting Weighted Aggregation in
Federated Learning with Neural Networks", ICML 2023) learns the weights and a
shrinking factor on a proxy set by gradient descent; flhet's consensus weights
have no gradient path to a proxy loss, so it is not used.

Limits (stated so the rule is used knowingly): a client that replays the very
same predictions every round is perfectly "stable" and keeps its inner weight;
stability is not accuracy, so pair the rule with an inner weight that measures
value (``ContributionWeighting``) when that matters.

Clients and rounds
------------------
- First round, or a client seen for the first time: no history, no factor. A
  client without a measurement gets the median factor of this round's clients
  that have one (it counts as a typical client until measured); when nobody has
  one, the weights are the inner weights.
- A client that skipped rounds is compared with its last participation; its
  moving average is updated only in rounds it takes part in.
- Fewer than ``min_common`` proxy samples shared with the client's previous
  participation: no new measurement this round (the moving average is kept).
- If every factor is zero (all clients look random) the inner weights are used.
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

    A :data:`~flhet_strategies.weighting.base.WeightFn`; see the module notes for
    the rule and the literature behind it. Every call

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
