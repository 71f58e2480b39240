"""A privacy budget for a round-based strategy, on :class:`~.accounting.PrivacyLedger`.

:class:`RoundBudget` caps the rounds up front, guards each round and records its
epsilon, for either API face; :func:`mean_noise_multiplier` and
:func:`distributed_mean_noise_multiplier` give the noise multiplier a released weighted
mean really carries. See docs/dp_accounting.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from logging import INFO, WARNING
from typing import Any

from flwr.common.logger import log

from .accounting import SAMPLING_SCHEMES, PrivacyLedger

__all__ = [
    "PrivacyViews",
    "RoundBudget",
    "distributed_mean_noise_multiplier",
    "mean_noise_multiplier",
    "sampling_for_fraction",
]


def sampling_for_fraction(fraction: float) -> str:
    """The ledger's sampling scheme for a strategy that samples ``fraction`` of the clients.

    Parameters
    ----------
    fraction : float
        The strategy's training fraction (``fraction_train`` / ``fraction_fit``), in
        ``(0, 1]``.

    Returns
    -------
    str
        ``"full"`` for 1, else ``"fixed-size"`` (a cohort drawn without replacement).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
        math.isfinite(fraction) and 0.0 < fraction <= 1.0
    ):
        raise ValueError(f"the sampling fraction must be in (0, 1], got {fraction!r}")
    return "full" if fraction >= 1.0 else "fixed-size"


def mean_noise_multiplier(
    noise_multiplier: float, cohort_size: int, weights: Sequence[float]
) -> float:
    r"""Noise multiplier a weighted mean carries when its noise was set for ``m`` equal shares.

    Flower's fixed-clipping wrappers add ``N(0, (z S / m)^2)`` to the aggregated model,
    ``m`` being the declared ``num_sampled_clients``: for the uniform mean of ``m``
    clipped updates that is noise ``z S`` on their sum, i.e. noise multiplier ``z``. The
    mean the inner strategy really forms is :math:`\sum_i w_i x_i / W`; one client moves
    it by at most :math:`S \max_i w_i / W` (per unit of the relation's sensitivity
    factor), so it carries

    .. math:: z_\text{eff} = \frac{z S / m}{S \max_i w_i / W} = z \frac{W}{m \max_i w_i}.

    With ``n`` equal weights this is ``z n / m``: ``z`` when every sampled client
    replied, less when some dropped out. Unequal weights (FedAvg's ``num-examples``)
    lower it further. The weights are treated as public, as the cohort size is.

    Parameters
    ----------
    noise_multiplier : float
        ``z`` the noise was calibrated with, positive.
    cohort_size : int
        ``m``, the number of equal shares the noise was divided by.
    weights : Sequence[float]
        The aggregation weights of the replies in the mean (non-negative, finite, not
        all zero).

    Returns
    -------
    float
        ``z * sum(weights) / (m * max(weights))``; give this to the ledger.
    """
    values = _mean_weights(noise_multiplier, cohort_size, weights)
    return float(noise_multiplier) * sum(values) / (int(cohort_size) * max(values))


def _mean_weights(
    noise_multiplier: float, cohort_size: int, weights: Sequence[float]
) -> list[float]:
    """Validate the arguments of the ``*mean_noise_multiplier`` functions; the weights."""
    if isinstance(noise_multiplier, bool) or not (
        math.isfinite(noise_multiplier) and noise_multiplier > 0
    ):
        raise ValueError(f"noise_multiplier must be positive and finite, got {noise_multiplier!r}")
    if isinstance(cohort_size, bool) or int(cohort_size) != cohort_size or cohort_size < 1:
        raise ValueError(f"cohort_size must be a positive integer, got {cohort_size!r}")
    values = [float(w) for w in weights]
    if not values:
        raise ValueError("weights is empty: a mean of no replies releases nothing")
    if not all(math.isfinite(w) and w >= 0 for w in values) or max(values) == 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {values}")
    return values


def distributed_mean_noise_multiplier(
    noise_multiplier: float, cohort_size: int, weights: Sequence[float]
) -> float:
    r"""Noise multiplier of a weighted mean of replies that each carry a noise share.

    In distributed DP every one of the ``m`` clients told the cohort size adds
    ``N(0, sigma^2 / m)``, ``sigma = z S``, to its clipped update; the server adds
    nothing and forms :math:`\sum_i w_i (x_i + e_i) / W` over the ``n`` replies. That
    mean's noise has standard deviation :math:`\sigma \sqrt{\sum_i w_i^2 / m} / W`, and
    one client moves it by at most :math:`S \max_i w_i / W`, so it carries

    .. math:: z_\text{eff} = z \frac{\sqrt{\sum_i w_i^2 / m}}{\max_i w_i}.

    ``z`` for ``m`` equal weights; ``z sqrt(n / m)`` for ``n`` equal weights (dropouts,
    as :func:`flhet_strategies.privacy.dp.gaussian.realized_noise_multiplier`); less for
    unequal weights. The weights are treated as public, as the cohort size is.

    Parameters
    ----------
    noise_multiplier : float
        ``z`` the clients' shares were calibrated for, positive.
    cohort_size : int
        ``m``, the cohort size announced to the clients.
    weights : Sequence[float]
        The aggregation weights of the replies in the mean (non-negative, finite, not
        all zero).

    Returns
    -------
    float
        ``z * sqrt(sum(w_i^2) / m) / max(w_i)``; give this to the ledger.
    """
    values = _mean_weights(noise_multiplier, cohort_size, weights)
    return float(noise_multiplier) * math.sqrt(sum(w * w for w in values) / int(cohort_size)) \
        / max(values)


class RoundBudget:
    """Rounds within ``max_epsilon``: cap, per-round guard and per-round epsilon history.

    API-neutral: it holds a :class:`~.accounting.PrivacyLedger` and knows rounds, noise
    multipliers and cohort sizes only, so the DP FedAvg wrappers of both Flower faces
    and the :class:`~flhet_strategies.privacy.dp.mechanism.DifferentialPrivacy` wrapper
    of any weighted-sum algorithm can share it.

    Parameters
    ----------
    population_size : int
        ``N``, the clients the cohorts are drawn from.
    target_delta : float (default: 1e-5)
        The delta epsilon is reported at, in ``(0, 1)``.
    max_epsilon : float, optional
        The budget; without it every round is allowed (epsilon is still recorded).
    fraction : float (default: 1.0)
        The strategy's sampling fraction; picks the scheme (:func:`sampling_for_fraction`)
        unless ``sampling`` is given.
    sampling : str, optional
        ``"poisson"``, ``"fixed-size"`` or ``"full"``, overriding ``fraction``.
    sampling_rate : float, optional
        Poisson rate ``q``; only with ``sampling="poisson"``.
    non_negative_payloads : bool (default: False)
        ``False`` for model updates (signed); ``True`` for prediction payloads.
    orders : tuple[float, ...], optional
        RDP orders for Flower's accountant.

    Attributes
    ----------
    ledger : PrivacyLedger
        The accounting.
    history : list[dict]
        One entry per recorded round: ``round``, ``epsilon`` (cumulative), ``delta``,
        ``noise_multiplier``, ``sampling_rate``.
    stopped_at : int or None
        The first round the budget refused (by :meth:`allows`, or planned by
        :meth:`cap`); ``None`` while the run is within budget.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        population_size: int,
        target_delta: float = 1e-5,
        max_epsilon: float | None = None,
        *,
        fraction: float = 1.0,
        sampling: str | None = None,
        sampling_rate: float | None = None,
        non_negative_payloads: bool = False,
        orders: tuple[float, ...] | None = None,
    ) -> None:
        if max_epsilon is not None and (
            isinstance(max_epsilon, bool) or not (math.isfinite(max_epsilon) and max_epsilon > 0)
        ):
            raise ValueError(f"max_epsilon must be positive and finite, got {max_epsilon!r}")
        if sampling is None:
            sampling = sampling_for_fraction(fraction)
        elif sampling not in SAMPLING_SCHEMES:
            raise ValueError(f"sampling must be one of {SAMPLING_SCHEMES}, got {sampling!r}")
        self.ledger = PrivacyLedger(
            population_size,
            target_delta,
            sampling,
            sampling_rate=sampling_rate,
            max_epsilon=max_epsilon,
            non_negative_payloads=non_negative_payloads,
            orders=orders,
        )
        self.history: list[dict[str, Any]] = []
        self.stopped_at: int | None = None

    def __repr__(self) -> str:
        """The scheme, population, budget and epsilon so far."""
        return (
            f"RoundBudget(sampling={self.sampling!r}, population_size={self.population_size}, "
            f"max_epsilon={self.max_epsilon}, epsilon={self.epsilon:.4g})"
        )

    @property
    def sampling(self) -> str:
        """The ledger's sampling scheme."""
        return self.ledger.sampling

    @property
    def population_size(self) -> int:
        """``N``."""
        return self.ledger.config.population_size

    @property
    def max_epsilon(self) -> float | None:
        """The budget, if any."""
        return self.ledger.max_epsilon

    @property
    def target_delta(self) -> float:
        """The delta epsilon is reported at."""
        return self.ledger.config.target_delta

    @property
    def epsilon(self) -> float:
        """Cumulative epsilon after the recorded rounds (0 before the first)."""
        return self.ledger.epsilon

    @property
    def exhausted(self) -> bool:
        """Whether the budget has stopped the run."""
        return self.stopped_at is not None

    def cap(
        self,
        num_rounds: int,
        noise_multiplier: float,
        cohort_size: int | None = None,
        *,
        first_round: int = 1,
    ) -> int:
        """How many of ``num_rounds`` rounds like this one fit in the budget; logs it.

        Parameters
        ----------
        num_rounds : int
            Rounds the run was asked for.
        noise_multiplier : float
            ``z`` every round is expected to carry.
        cohort_size : int, optional
            Expected cohort size (needed for ``"fixed-size"``).
        first_round : int (default: 1)
            Number of the first of these rounds; when fewer than ``num_rounds`` fit,
            :attr:`stopped_at` becomes ``first_round + rounds``.

        Returns
        -------
        int
            ``num_rounds`` without a budget (or if all fit), else the rounds that fit
            after the ones already recorded (possibly 0).
        """
        rounds = self.ledger.rounds_within_budget(noise_multiplier, num_rounds, cohort_size)
        if self.max_epsilon is None:
            return rounds
        log(
            INFO,
            "Privacy budget: %d of %d rounds fit in epsilon=%s at delta=%g "
            "(noise multiplier %s, %s sampling, %s clients)",
            rounds, num_rounds, self.max_epsilon, self.target_delta, noise_multiplier,
            self.sampling, self.population_size,
        )
        if rounds < num_rounds and self.stopped_at is None:
            self.stopped_at = int(first_round) + rounds
        return rounds

    def allows(
        self, server_round: int, noise_multiplier: float, cohort_size: int | None = None
    ) -> bool:
        """Per-round guard: whether ``server_round`` may release an aggregate.

        ``False`` once the budget has refused a round (the run stays stopped), or if
        this round would take epsilon past ``max_epsilon``; the refused round becomes
        :attr:`stopped_at`. Always ``True`` without a budget.

        Parameters
        ----------
        server_round : int
            The round about to be configured.
        noise_multiplier : float
            ``z`` the round's release is expected to carry.
        cohort_size : int, optional
            The round's cohort size (needed for ``"fixed-size"``).
        """
        if self.stopped_at is not None and server_round >= self.stopped_at:
            return False
        if not self.ledger.would_exceed(noise_multiplier, cohort_size):
            return True
        self.stopped_at = int(server_round)
        log(
            WARNING,
            "Privacy budget exhausted: round %d would take epsilon past %s "
            "(spent: epsilon=%.4f at delta=%g after %d rounds); stopping the run",
            server_round, self.max_epsilon, self.epsilon, self.target_delta, len(self.history),
        )
        return False

    def record(
        self, server_round: int, noise_multiplier: float, cohort_size: int | None = None
    ) -> dict[str, Any]:
        """Compose a released round and return its history entry.

        Parameters
        ----------
        server_round : int
            The round that released a noisy aggregate.
        noise_multiplier : float
            ``z`` the release really carried (e.g. :func:`mean_noise_multiplier`).
        cohort_size : int, optional
            The round's cohort size (needed for ``"fixed-size"``).

        Returns
        -------
        dict
            ``round``, ``epsilon`` (cumulative), ``delta``, ``noise_multiplier`` and
            ``sampling_rate``; also appended to :attr:`history`.
        """
        entry = self.ledger.record_round(server_round, noise_multiplier, cohort_size)
        item = {"round": int(server_round), **entry.to_history()}
        self.history.append(item)
        log(INFO, "Privacy spent after round %d: epsilon=%.4f at delta=%g",
            server_round, entry.epsilon, entry.delta)
        if self.max_epsilon is not None and entry.epsilon > self.max_epsilon:
            log(WARNING, "Round %d overshot the budget (epsilon %.4f > %s): it carried less "
                "noise than planned (dropouts or unequal weights)",
                server_round, entry.epsilon, self.max_epsilon)
        return item


class PrivacyViews:
    """Read-only privacy views for a strategy holding ``self.budget`` (a RoundBudget or None).

    ``budget`` may be created late (once the population is known); before that the
    views report an empty history and epsilon 0.
    """

    budget: RoundBudget | None = None

    @property
    def privacy_history(self) -> list[dict[str, Any]]:
        """Per released round: ``round``, ``epsilon`` (cumulative), ``delta``, ...."""
        return [] if self.budget is None else list(self.budget.history)

    @property
    def epsilon(self) -> float:
        """Cumulative epsilon at the target delta (0 before the first release)."""
        return 0.0 if self.budget is None else self.budget.epsilon

    @property
    def stopped_at(self) -> int | None:
        """The first round the privacy budget refused, if any."""
        return None if self.budget is None else self.budget.stopped_at
