"""Per-round privacy accounting on Flower's ``RdpAccountant`` (``flwr[dp]``).

:class:`PrivacyLedger` composes one sampled-Gaussian event per round with the client
sampling that really happened (``"poisson"``, ``"fixed-size"`` or ``"full"``);
:func:`noise_multiplier_for_epsilon` calibrates ``z`` for a target epsilon. See
docs/dp_accounting.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from logging import WARNING

from flwr.common.logger import log
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from scipy import optimize

from .sensitivity import accounting_noise_multiplier

SAMPLING_SCHEMES = ("poisson", "fixed-size", "full")
"""Client sampling schemes the ledger can account (see docs/dp_accounting.md)."""

_FLOWER_SAMPLING = {
    "poisson": (SamplingMethod.POISSON, NeighboringRelation.ADD_OR_REMOVE_ONE),
    "fixed-size": (SamplingMethod.WITHOUT_REPLACEMENT, NeighboringRelation.REPLACE_ONE),
    "full": (SamplingMethod.NO_AMPLIFICATION, NeighboringRelation.ADD_OR_REMOVE_ONE),
}


@contextlib.contextmanager
def _quiet_dp_accounting() -> Iterator[None]:
    """Silence dp-accounting's per-order convergence warnings during a computation.

    For small orders the Poisson-subsampled series may not converge; dp-accounting
    then logs a warning and leaves that order out of ``min over orders``, which keeps
    epsilon a valid (slightly looser) upper bound. The warning repeats on every compose.
    """
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class RoundPrivacy:
    """Privacy spent after one round.

    Parameters
    ----------
    server_round : int
        The round.
    epsilon : float
        Cumulative epsilon after this round, at ``delta``.
    delta : float
        The target delta.
    noise_multiplier : float
        ``z = sigma / S`` the round's sum carried.
    accounted_noise_multiplier : float
        ``sigma / Delta`` composed into the accountant.
    sampling : str
        One of :data:`SAMPLING_SCHEMES`.
    sampling_rate : float
        Rate composed into the accountant (Poisson ``q``, rounded up to a multiple of
        ``1 / population_size``; ``m / N`` for fixed-size; 1 for full participation).
    """

    server_round: int
    epsilon: float
    delta: float
    noise_multiplier: float
    accounted_noise_multiplier: float
    sampling: str
    sampling_rate: float

    def to_history(self) -> dict[str, float]:
        """The entries a round of ``results.json`` history carries."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
        }


class PrivacyLedger:
    """Client-level (epsilon, delta) of a federated run, one Gaussian event per round.

    Parameters
    ----------
    population_size : int
        ``N``, the clients that may be sampled.
    target_delta : float
        The delta epsilon is reported at, in ``(0, 1)`` (e.g. 1e-5, below ``1 / N``).
    sampling : str (default: "full")
        ``"poisson"``, ``"fixed-size"`` or ``"full"`` (see docs/dp_accounting.md).
    sampling_rate : float, optional
        Poisson rate ``q`` in ``(0, 1]``; required for, and only used by, ``"poisson"``.
        Flower's events carry ``q`` as ``sample_size / N``; a ``q`` that is not a
        multiple of ``1 / N`` is accounted at the next multiple up (a larger rate only
        raises epsilon, so the report stays an upper bound) with a warning.
    max_epsilon : float, optional
        Budget; :meth:`would_exceed` says whether a round would go past it.
    non_negative_payloads : bool (default: False)
        ``True`` for prediction (probability) payloads: their replace-one sensitivity
        is ``sqrt(2) S`` instead of ``2 S``.
    orders : tuple[float, ...], optional
        RDP orders for Flower's accountant (dp-accounting's defaults when omitted).

    Examples
    --------
    In a strategy, per round::

        ledger = PrivacyLedger(100, 1e-5, "poisson", sampling_rate=0.1, max_epsilon=8.0)
        if ledger.would_exceed(noise_multiplier=1.0):   # before sampling the round
            ...                                         # stop: save results and models
        entry = ledger.record_round(server_round, noise_multiplier=1.0)  # after release
        history_entry.update(entry.to_history())        # epsilon, delta, ...
    """

    def __init__(
        self,
        population_size: int,
        target_delta: float,
        sampling: str = "full",
        sampling_rate: float | None = None,
        max_epsilon: float | None = None,
        non_negative_payloads: bool = False,
        orders: tuple[float, ...] | None = None,
    ) -> None:
        if sampling not in SAMPLING_SCHEMES:
            raise ValueError(f"sampling must be one of {SAMPLING_SCHEMES}, got {sampling!r}")
        if isinstance(population_size, bool) or int(population_size) != population_size:
            raise ValueError(f"population_size must be a positive integer, got {population_size!r}")
        population_size = int(population_size)
        method, relation = _FLOWER_SAMPLING[sampling]
        self.sampling = sampling
        self.non_negative_payloads = bool(non_negative_payloads)
        self.config = PrivacyConfig(
            target_delta=target_delta,
            population_size=population_size,
            neighboring_relation=relation,
            sampling_method=method,
            max_epsilon=max_epsilon,
        )
        self._poisson_size = None
        if sampling == "poisson":
            self._poisson_size = _poisson_sample_size(sampling_rate, population_size)
        elif sampling_rate is not None:
            raise ValueError(
                f"sampling_rate is only used with sampling='poisson'; for {sampling!r} "
                "give the real cohort size to record_round (fixed-size) or nothing (full)"
            )
        self._orders = orders
        with _quiet_dp_accounting():
            self._accountant = RdpAccountant(self.config, orders=orders)
        self.rounds: list[RoundPrivacy] = []

    def __getstate__(self) -> dict:
        # Flower's accountant holds modules: pickle its state_dict and rebuild it
        state = dict(self.__dict__)
        state["_accountant"] = self._accountant.state_dict()
        return state

    def __setstate__(self, state: dict) -> None:
        accountant = state.pop("_accountant")
        self.__dict__.update(state)
        with _quiet_dp_accounting():
            self._accountant = RdpAccountant(self.config, orders=self._orders)
            self._accountant.load_state_dict(dict(accountant))

    @property
    def relation(self) -> str:
        """The neighbouring relation (``"add-or-remove-one"`` or ``"replace-one"``)."""
        return self.config.neighboring_relation.value

    @property
    def max_epsilon(self) -> float | None:
        """The budget, if any."""
        return self.config.max_epsilon

    @property
    def epsilon(self) -> float:
        """Cumulative epsilon at the target delta (0 before the first round)."""
        if not self.rounds:
            return 0.0
        return self.rounds[-1].epsilon

    def accounted_noise_multiplier(self, noise_multiplier: float) -> float:
        """``sigma / Delta`` for this ledger's relation and payload kind."""
        return accounting_noise_multiplier(
            noise_multiplier, self.relation, self.non_negative_payloads
        )

    def event(
        self, noise_multiplier: float, cohort_size: int | None = None
    ) -> GaussianPrivacyEvent:
        """Flower's Gaussian event for one round.

        Parameters
        ----------
        noise_multiplier : float
            ``z = sigma / S`` the round's sum carries (after dropouts, see
            :func:`~flhet_strategies.privacy.dp.gaussian.realized_noise_multiplier`).
        cohort_size : int, optional
            Clients sampled this round; required for ``"fixed-size"``, ignored otherwise
            (Poisson amplification depends on the rate, not on the draw).
        """
        size = self.config.population_size
        if self.sampling == "poisson":
            size = self._poisson_size
        elif self.sampling == "fixed-size":
            if cohort_size is None:
                raise ValueError("fixed-size sampling needs cohort_size, the round's cohort size")
            size = int(cohort_size)
            if not 1 <= size <= self.config.population_size:
                raise ValueError(
                    f"cohort_size must be in [1, {self.config.population_size}], got {cohort_size}"
                )
        return GaussianPrivacyEvent(
            noise_multiplier=self.accounted_noise_multiplier(noise_multiplier),
            sample_size=size,
            population_size=self.config.population_size,
        )

    def projected_epsilon(
        self, noise_multiplier: float, cohort_size: int | None = None, rounds: int = 1
    ) -> float:
        """Epsilon after ``rounds`` more rounds like this one; the ledger is unchanged.

        Flower's accountant replays every composed event for a projection; the ledger
        gives it the history with runs of identical rounds merged into one composition
        of ``count`` events (the same RDP), so a projection costs one RDP evaluation
        per distinct round setting instead of one per past round.
        """
        if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        event = self.event(noise_multiplier, cohort_size)
        state = self._accountant.state_dict()
        upcoming = {"event": asdict(event), "count": int(rounds)}
        state["compositions"] = _merge_runs([*state["compositions"], upcoming])
        with _quiet_dp_accounting():
            projected = RdpAccountant(self.config, orders=tuple(state["orders"]))
            projected.load_state_dict(state)
            return float(projected.get_epsilon(self.config.target_delta))

    def would_exceed(self, noise_multiplier: float, cohort_size: int | None = None) -> bool:
        """Whether one more such round would take epsilon past ``max_epsilon``.

        Call it before sampling a round; when it is ``True`` stop the run (save results
        and models) instead of releasing anything. Always ``False`` without a budget.
        """
        if self.max_epsilon is None:
            return False
        return self.projected_epsilon(noise_multiplier, cohort_size) > self.max_epsilon

    def rounds_within_budget(
        self, noise_multiplier: float, max_rounds: int, cohort_size: int | None = None
    ) -> int:
        """How many more rounds like this one fit in ``max_epsilon`` (at most ``max_rounds``).

        Flower's ``Strategy.start`` runs a fixed number of rounds and has no early exit,
        so a strategy can cap ``num_rounds`` with this before it starts, and keep
        :meth:`would_exceed` as the per-round guard (dropouts change the noise).
        Binary search over :meth:`projected_epsilon`; ``max_rounds`` without a budget.
        """
        if isinstance(max_rounds, bool) or int(max_rounds) != max_rounds or max_rounds < 0:
            raise ValueError(f"max_rounds must be a non-negative integer, got {max_rounds!r}")
        if self.max_epsilon is None:
            return int(max_rounds)
        low, high = 0, int(max_rounds)   # low rounds fit; find the largest that does
        while low < high:
            middle = (low + high + 1) // 2
            if self.projected_epsilon(noise_multiplier, cohort_size, middle) <= self.max_epsilon:
                low = middle
            else:
                high = middle - 1
        return low

    def record_round(
        self, server_round: int, noise_multiplier: float, cohort_size: int | None = None
    ) -> RoundPrivacy:
        """Compose the round's release and return the cumulative privacy spent.

        Parameters
        ----------
        server_round : int
            The round that released a noisy sum.
        noise_multiplier : float
            ``z`` the released sum really carried.
        cohort_size : int, optional
            Cohort size, for ``"fixed-size"`` sampling.
        """
        event = self.event(noise_multiplier, cohort_size)
        with _quiet_dp_accounting():
            self._accountant.compose(event)
            spent = self._accountant.get_privacy_spent()
        entry = RoundPrivacy(
            server_round=int(server_round),
            epsilon=float(spent.epsilon),
            delta=float(spent.delta),
            noise_multiplier=float(noise_multiplier),
            accounted_noise_multiplier=float(event.noise_multiplier),
            sampling=self.sampling,
            sampling_rate=event.sample_size / event.population_size,
        )
        self.rounds.append(entry)
        return entry

    def state_dict(self) -> dict[str, object]:
        """JSON-serializable state (Flower's accountant state plus the round log)."""
        return {"accountant": self._accountant.state_dict(),
                "rounds": [asdict(entry) for entry in self.rounds]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict` output; the configuration must be the same."""
        with _quiet_dp_accounting():
            self._accountant.load_state_dict(dict(state["accountant"]))
        self.rounds = [RoundPrivacy(**entry) for entry in state["rounds"]]


def _poisson_sample_size(sampling_rate: float | None, population_size: int) -> int:
    if sampling_rate is None or isinstance(sampling_rate, bool):
        raise ValueError("sampling='poisson' needs sampling_rate, the per-client probability q")
    if not math.isfinite(sampling_rate) or not 0.0 < sampling_rate <= 1.0:
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
    exact = sampling_rate * population_size
    size = min(population_size, max(1, math.ceil(exact - 1e-9)))
    if abs(size - exact) > 1e-9:
        log(WARNING, "Poisson rate %s is not a multiple of 1/%s; accounting at the larger "
            "rate %s (epsilon stays an upper bound)", sampling_rate, population_size,
            size / population_size)
    return size


def _merge_runs(compositions: list[dict]) -> list[dict]:
    merged: list[dict] = []
    for item in compositions:
        if merged and merged[-1]["event"] == item["event"]:
            merged[-1] = {"event": merged[-1]["event"],
                          "count": merged[-1]["count"] + item["count"]}
        else:
            merged.append({"event": dict(item["event"]), "count": int(item["count"])})
    return merged


def noise_multiplier_for_epsilon(
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling_rate: float = 1.0,
    population_size: int | None = None,
    sampling: str | None = None,
    non_negative_payloads: bool = False,
    rel_tol: float = 1e-3,
) -> float:
    """The smallest noise multiplier ``z`` whose run stays within ``target_epsilon``.

    Parameters
    ----------
    target_epsilon : float
        Budget after ``rounds`` rounds, positive.
    delta : float
        Target delta in ``(0, 1)``.
    rounds : int
        Number of rounds, each one release of the noisy sum.
    sampling_rate : float (default: 1.0)
        Per-round client sampling rate: Poisson ``q``, or ``m / N`` for fixed-size
        cohorts; 1 means full participation.
    population_size : int, optional
        ``N``. Needed for ``"fixed-size"``; for Poisson and full participation the
        smallest ``N`` that makes ``sampling_rate`` exact is used when omitted.
    sampling : str, optional
        ``"poisson"``, ``"fixed-size"`` or ``"full"``; by default ``"full"`` when
        ``sampling_rate`` is 1 and ``"poisson"`` otherwise.
    non_negative_payloads : bool (default: False)
        Prediction payloads (see :class:`PrivacyLedger`); only matters for fixed-size.
    rel_tol : float (default: 1e-3)
        Relative precision of ``z``.

    Returns
    -------
    float
        ``z = sigma / S`` with epsilon(z) <= ``target_epsilon``, within ``rel_tol`` of the
        smallest such value. Searched in ``[2**-10, 2**20]``; if even ``2**-10`` meets
        the target, that is returned.

    Raises
    ------
    ValueError
        For bad arguments, or if no ``z`` up to ``2**20`` meets the target.
    """
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be positive and finite, got {target_epsilon!r}")
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if not math.isfinite(sampling_rate) or not 0.0 < sampling_rate <= 1.0:
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
    if not 0.0 < rel_tol < 0.1:
        raise ValueError(f"rel_tol must be in (0, 0.1), got {rel_tol!r}")
    sampling = sampling or ("full" if sampling_rate >= 1.0 else "poisson")
    if population_size is None:
        if sampling == "fixed-size":
            raise ValueError("fixed-size sampling needs population_size")
        population_size = Fraction(sampling_rate).limit_denominator(10**6).denominator
    cohort_size = None
    if sampling == "fixed-size":
        cohort_size = round(sampling_rate * population_size)
        if abs(cohort_size - sampling_rate * population_size) > 1e-9:
            raise ValueError(
                f"fixed-size sampling_rate {sampling_rate} times population_size "
                f"{population_size} is not a whole cohort size"
            )
    ledger = PrivacyLedger(
        population_size, delta, sampling,
        sampling_rate=sampling_rate if sampling == "poisson" else None,
        non_negative_payloads=non_negative_payloads,
    )

    def gap(z: float) -> float:
        return ledger.projected_epsilon(z, cohort_size, rounds=int(rounds)) - target_epsilon

    low, high = 1.0, 1.0
    if gap(high) > 0:
        while gap(high) > 0:
            low, high = high, high * 2.0
            if high > 2.0**20:
                raise ValueError(
                    f"no noise multiplier up to 2**20 keeps epsilon <= {target_epsilon} "
                    f"over {rounds} rounds at delta={delta}"
                )
    else:
        while gap(low) <= 0:
            high, low = low, low / 2.0
            if low < 2.0**-10:
                return high
    z = optimize.brentq(gap, low, high, xtol=rel_tol * low, rtol=rel_tol / 4)
    step = rel_tol * low
    while gap(z) > 0:  # brentq may land just below the root
        z += step
    return float(z)


__all__ = [
    "SAMPLING_SCHEMES",
    "PrivacyLedger",
    "RoundPrivacy",
    "noise_multiplier_for_epsilon",
]
