"""Differentially private FedAvg with an epsilon budget, around Flower's FedAvg (both APIs).

:class:`DpFedAvg` (Message API) and :class:`DpFedAvgCompat` (compat API) build Flower's
fixed-clipping DP wrapper (or none, with distributed noise) and add per-round epsilon
with the real sampling and a budget that stops the run cleanly. See
docs/privacy_fedavg.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any, Optional, Union

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Scalar
from flwr.common.logger import log
from flwr.server import strategy as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Result,
    Strategy,
)

from .budget import (
    PrivacyViews,
    RoundBudget,
    distributed_mean_noise_multiplier,
    mean_noise_multiplier,
)
from .noise_share import NoiseShareSettings

__all__ = ["CLIPPING_MODES", "DpFedAvg", "DpFedAvgCompat"]

CLIPPING_MODES = ("server", "client", "distributed")
"""Where updates are clipped: by Flower's server-side wrapper, by the clients'
``fixedclipping_mod`` (both with server noise), or by the clients together with their
noise shares (``DpUpdateNoiseMod`` / ``DpUpdateNumPyClient``)."""


class DpBudgetSettings(PrivacyViews):
    """DP settings and the :class:`RoundBudget` shared by both faces of DP FedAvg.

    A mixin, not a strategy: :class:`DpFedAvg` and
    :class:`~flhet_strategies.privacy.dp.fedavg.DpFedAvgCompat` call
    ``_init_budget_settings`` (their parameters, plus the inner strategy's sampling
    fraction used when ``fraction`` is None) and ``_wrap_inner`` (Flower's DP wrapper of
    the face's API), then ``_admit_round`` / ``_record_release`` from their own hooks.
    """

    # pylint: disable=too-many-arguments
    def _init_budget_settings(
        self,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        target_delta: float,
        max_epsilon: Optional[float],
        clipping: str,
        population_size: Optional[int],
        fraction: Optional[float],
        inner_fraction: Optional[float],
    ) -> None:
        if isinstance(noise_multiplier, bool) or not (
            isinstance(noise_multiplier, (int, float))
            and math.isfinite(noise_multiplier) and noise_multiplier > 0
        ):
            raise ValueError(
                f"noise_multiplier must be positive and finite (0 means no privacy to "
                f"account), got {noise_multiplier!r}"
            )
        if clipping not in CLIPPING_MODES:
            raise ValueError(f"clipping must be one of {CLIPPING_MODES}, got {clipping!r}")
        if isinstance(num_sampled_clients, bool) or not isinstance(num_sampled_clients, int) \
                or num_sampled_clients < 1:
            raise ValueError(
                f"num_sampled_clients must be a positive integer, got {num_sampled_clients!r}"
            )
        fraction = inner_fraction if fraction is None else fraction
        if fraction is None:
            raise ValueError(
                "the inner strategy has no sampling fraction attribute; pass fraction= "
                "(1.0 when every client trains every round)"
            )
        self.noise_multiplier = float(noise_multiplier)
        self.clipping_norm = float(clipping_norm)
        self.num_sampled_clients = int(num_sampled_clients)
        self.clipping = clipping
        self.fraction = float(fraction)
        self.population_size = population_size
        self.budget: RoundBudget | None = None
        self._budget_args = {"target_delta": target_delta, "max_epsilon": max_epsilon,
                             "fraction": self.fraction}
        # Validate delta, budget and fraction now rather than at the first round.
        RoundBudget(max(self.num_sampled_clients, population_size or 1), **self._budget_args)
        if population_size is not None:
            self.budget = self._new_budget(population_size)

    def _wrap_inner(self, strategy: Any, server_side: type, client_side: type) -> None:
        """Keep ``strategy`` and Flower's fixed-clipping wrapper around it.

        ``server_side`` / ``client_side`` are the face's
        ``DifferentialPrivacy{Server,Client}SideFixedClipping`` classes; ``clipping``
        picks one. With ``"distributed"`` there is no wrapper: ``dp_strategy`` is the
        inner strategy itself.
        """
        self.strategy = strategy
        self._cohorts: dict[int, int] = {}
        if self.clipping == "distributed":
            self._noise_config(self.num_sampled_clients)  # validates clipping_norm now
            self.dp_strategy = strategy
            return
        wrapper = server_side if self.clipping == "server" else client_side
        self.dp_strategy = wrapper(strategy, self.noise_multiplier, self.clipping_norm,
                                   self.num_sampled_clients)

    def _noise_config(self, cohort: int) -> dict[str, float | int]:
        """Train-config entries asking each of ``cohort`` clients for its noise share."""
        return NoiseShareSettings(self.noise_multiplier, self.clipping_norm,
                                   cohort).to_config()

    def _admit_round(self, server_round: int, cohort: int, num_connected: int) -> bool:
        """Whether the budget allows a round of ``cohort`` clients (then it is remembered).

        ``num_connected`` sizes the population if none was given.
        """
        budget = self._ensure_budget(num_connected)
        self._check_cohort(server_round, cohort)
        if not budget.allows(server_round, self.noise_multiplier, cohort):
            return False
        self._cohorts[server_round] = cohort
        return True

    def _new_budget(self, population_size: int) -> RoundBudget:
        if population_size < self.num_sampled_clients:
            raise ValueError(
                f"population_size {population_size} is smaller than num_sampled_clients "
                f"{self.num_sampled_clients}"
            )
        return RoundBudget(population_size, **self._budget_args)

    def _ensure_budget(self, num_connected: int) -> RoundBudget:
        """The budget; created for ``num_connected`` clients if no population was given."""
        if self.budget is None:
            self.budget = self._new_budget(num_connected)
        elif num_connected < self.budget.population_size and self.budget.sampling != "full":
            log(WARNING, "Only %d of the %d clients accounted for are connected: cohorts are "
                "a larger share than accounted (epsilon may be underestimated)",
                num_connected, self.budget.population_size)
        return self.budget

    def _stopped(self, server_round: int) -> bool:
        return self.stopped_at is not None and server_round >= self.stopped_at

    def _expected_cohort(self, budget: RoundBudget) -> int | None:
        if budget.sampling == "full":
            return None
        return min(self.num_sampled_clients, budget.population_size)

    def _check_cohort(self, server_round: int, cohort: int) -> None:
        if cohort != self.num_sampled_clients and self.clipping != "distributed":
            log(WARNING, "Round %d sampled %d clients but the noise is calibrated for "
                "num_sampled_clients=%d; epsilon is accounted for what the mean carries",
                server_round, cohort, self.num_sampled_clients)

    def _record_release(self, server_round: int, cohort: int, weights: list[float]) -> None:
        """Account a released aggregate of replies with these aggregation weights."""
        if self.clipping == "distributed":
            z_eff = distributed_mean_noise_multiplier(self.noise_multiplier, cohort, weights)
        else:
            z_eff = mean_noise_multiplier(self.noise_multiplier, self.num_sampled_clients,
                                          weights)
        if len(set(weights)) > 1:
            log(WARNING, "Round %d: unequal aggregation weights lower the effective noise "
                "multiplier from %s to %.4f", server_round, self.noise_multiplier, z_eff)
        self.budget.record(server_round, z_eff, cohort)

    def _log_budget_summary(self) -> None:
        args = self._budget_args
        log(INFO, "\t├──> Privacy accounting (RDP, client level):")
        log(INFO, "\t│\t├── Budget: epsilon=%s at delta=%g", args["max_epsilon"],
            args["target_delta"])
        log(INFO, "\t│\t└── Sampling: fraction %s (%s)", self.fraction,
            "full" if self.fraction >= 1.0 else "fixed-size cohorts")


class DpFedAvg(DpBudgetSettings, Strategy):
    """Flower's fixed-clipping DP wrapper around a Message-API strategy, with an epsilon budget.

    Parameters
    ----------
    strategy : Strategy
        The inner strategy, e.g. ``flwr.serverapp.strategy.FedAvg(...)``; it samples
        the clients (``fraction_train``) and averages the clipped updates.
    noise_multiplier : float
        ``z``, positive: the noise on the clipped updates' sum is ``z * clipping_norm``.
    clipping_norm : float
        ``S``, the L2 bound on every client's model update.
    num_sampled_clients : int
        ``m``, the clients sampled per round; Flower divides the noise by it.
    target_delta : float (default: 1e-5)
        The delta epsilon is reported at (below ``1 / N``).
    max_epsilon : float, optional
        The budget. ``start`` runs only the rounds that fit; without it every round
        runs and epsilon is still recorded.
    clipping : str (default: "server")
        ``"server"`` (:class:`~flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping`),
        ``"client"`` (``...ClientSideFixedClipping``; the ClientApp needs
        ``fixedclipping_mod``) or ``"distributed"`` (no wrapper; the ClientApp needs
        :class:`clients.fedavg.dp.DpUpdateNoiseMod`, which clips and adds
        each client's noise share).
    population_size : int, optional
        ``N``; by default the nodes connected when ``start`` runs (at least ``m`` and
        the inner strategy's ``min_available_nodes``).
    fraction : float, optional
        Sampling fraction; by default the inner strategy's ``fraction_train``. 1 means
        full participation, less fixed-size cohorts without replacement.
    weighted_by_key : str, optional
        MetricRecord key the inner strategy averages by; by default its
        ``weighted_by_key``.

    Attributes
    ----------
    strategy : Strategy
        The inner strategy.
    dp_strategy : Strategy
        Flower's DP wrapper around it, which does the clipping and noising (the inner
        strategy itself with ``clipping="distributed"``).
    budget : RoundBudget or None
        The accounting (created when the population is known).
    privacy_history : list[dict]
        Per released round: ``round``, ``epsilon`` (cumulative), ``delta``,
        ``noise_multiplier`` (effective), ``sampling_rate``.
    epsilon : float
        Cumulative epsilon so far.
    stopped_at : int or None
        First round the budget refused, if any.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        *,
        target_delta: float = 1e-5,
        max_epsilon: Optional[float] = None,
        clipping: str = "server",
        population_size: Optional[int] = None,
        fraction: Optional[float] = None,
        weighted_by_key: Optional[str] = None,
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise TypeError(
                "strategy must be a flwr.serverapp.strategy.Strategy (e.g. FedAvg()); for "
                "flwr.server.strategy strategies use DpFedAvgCompat."
            )
        self._init_budget_settings(
            noise_multiplier, clipping_norm, num_sampled_clients, target_delta, max_epsilon,
            clipping, population_size, fraction, getattr(strategy, "fraction_train", None),
        )
        key = weighted_by_key or getattr(strategy, "weighted_by_key", None)
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"{type(strategy).__name__} has no weighted_by_key attribute; pass the "
                "MetricRecord key it weights its average by as weighted_by_key=."
            )
        self.weighted_by_key = key
        self._wrap_inner(strategy, DifferentialPrivacyServerSideFixedClipping,
                         DifferentialPrivacyClientSideFixedClipping)

    def __repr__(self) -> str:
        """Name the wrapper, its clipping and its inner strategy."""
        return f"DpFedAvg({self.strategy!r}, clipping={self.clipping!r})"

    def summary(self) -> None:
        """Log the accounting settings, then Flower's DP wrapper's summary."""
        self._log_budget_summary()
        self.dp_strategy.summary()

    # pylint: disable=too-many-arguments,too-many-positional-arguments
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run the rounds of ``num_rounds`` that fit in the budget (Flower's ``start``).

        Waits until ``num_sampled_clients`` (and the inner strategy's
        ``min_available_nodes``) nodes are connected when no ``population_size`` was
        given, takes them as the population, caps ``num_rounds`` with
        :meth:`RoundBudget.cap`, and runs Flower's ``Strategy.start`` for that many
        rounds. ``evaluate_fn`` is not called for rounds the per-round guard refused.

        Returns
        -------
        Result
            Flower's result; ``arrays`` is the last released model (``initial_arrays``
            if no round fit the budget).
        """
        if self.budget is None:
            needed = max(self.num_sampled_clients,
                         int(getattr(self.strategy, "min_available_nodes", 0) or 0))
            while len(list(grid.get_node_ids())) < needed:
                log(INFO, "Waiting for %d nodes to connect (privacy accounting)", needed)
                time.sleep(1)
        budget = self._ensure_budget(len(list(grid.get_node_ids())))
        rounds = budget.cap(num_rounds, self.noise_multiplier, self._expected_cohort(budget))
        def guarded_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if self._stopped(server_round):
                return None
            return evaluate_fn(server_round, arrays)

        result = super().start(grid, initial_arrays, rounds, timeout, train_config,
                               evaluate_config, None if evaluate_fn is None else guarded_fn)
        if len(result.arrays) == 0:
            result.arrays = initial_arrays
        return result

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Let Flower's wrapper sample the round; no messages if the budget refuses it.

        With ``clipping="distributed"`` the inner strategy samples, and every message's
        config gets ``z``, ``S`` and the round's cohort size.
        """
        if self._stopped(server_round):
            return []
        messages = list(self.dp_strategy.configure_train(server_round, arrays, config, grid))
        if messages and not self._admit_round(server_round, len(messages),
                                              len(list(grid.get_node_ids()))):
            return []
        if self.clipping == "distributed":
            noise_config = self._noise_config(len(messages))
            for message in messages:
                records = message.content.config_records
                if not records:
                    message.content["config"] = ConfigRecord(noise_config)
                for record in records.values():
                    record.update(noise_config)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Let Flower's wrapper clip, aggregate and noise; account the release.

        With ``clipping="distributed"`` the inner strategy averages the clients' noisy
        replies.

        Returns
        -------
        tuple[ArrayRecord | None, MetricRecord | None]
            What Flower's wrapper returns; ``(None, None)`` for a round the budget
            refused. A round is accounted only when noisy arrays were released.
        """
        cohort = self._cohorts.pop(server_round, None)
        if cohort is None:
            return None, None
        replies = list(replies)
        arrays, metrics = self.dp_strategy.aggregate_train(server_round, replies)
        if arrays is not None:
            self._record_release(server_round, cohort, self._weights(replies))
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate, or no messages once the budget has stopped the run."""
        if self._stopped(server_round):
            return []
        return self.dp_strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate (``None`` once the budget has stopped the run)."""
        if self._stopped(server_round):
            return None
        return self.dp_strategy.aggregate_evaluate(server_round, replies)

    def _weights(self, replies: list[Message]) -> list[float]:
        """The aggregation weights of the successful replies (all of them, after Flower)."""
        weights: list[float] = []
        for reply in replies:
            if reply.has_error():
                continue
            metrics: Any = next(iter(reply.content.metric_records.values()))
            weights.append(float(metrics[self.weighted_by_key]))
        return weights

class DpFedAvgCompat(DpBudgetSettings, compat.Strategy):
    """Flower's fixed-clipping DP wrapper around a compat strategy, with an epsilon budget.

    Parameters
    ----------
    strategy : Strategy
        The inner strategy, e.g. ``flwr.server.strategy.FedAvg(...)``; it samples the
        clients (``fraction_fit``) and averages by ``num_examples``.
    noise_multiplier : float
        ``z``, positive: the noise on the clipped updates' sum is ``z * clipping_norm``.
    clipping_norm : float
        ``S``, the L2 bound on every client's model update.
    num_sampled_clients : int
        ``m``, the clients sampled per round; Flower divides the noise by it.
    target_delta : float (default: 1e-5)
        The delta epsilon is reported at.
    max_epsilon : float, optional
        The budget; rounds past it are skipped (no clients configured).
    clipping : str (default: "server")
        ``"server"``, ``"client"`` (the ClientApp then needs ``fixedclipping_mod``) or
        ``"distributed"`` (no Flower wrapper; the clients are wrapped in
        :class:`clients.fedavg.dp.DpUpdateNumPyClient`).
    population_size : int, optional
        ``N``; by default the clients available at the first ``configure_fit``.
    fraction : float, optional
        Sampling fraction; by default the inner strategy's ``fraction_fit``.

    Attributes
    ----------
    strategy : Strategy
        The inner strategy.
    dp_strategy : Strategy
        Flower's DP wrapper around it (the inner strategy with ``"distributed"``).
    budget : RoundBudget or None
        The accounting (created when the population is known).
    privacy_history : list[dict]
        Per released round: ``round``, ``epsilon`` (cumulative), ``delta``,
        ``noise_multiplier`` (effective), ``sampling_rate``.
    epsilon : float
        Cumulative epsilon so far.
    stopped_at : int or None
        First round the budget refused, if any.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        strategy: compat.Strategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        *,
        target_delta: float = 1e-5,
        max_epsilon: Optional[float] = None,
        clipping: str = "server",
        population_size: Optional[int] = None,
        fraction: Optional[float] = None,
    ) -> None:
        super().__init__()
        if not isinstance(strategy, compat.Strategy):
            raise TypeError(
                "strategy must be a flwr.server.strategy.Strategy (e.g. FedAvg()); for "
                "flwr.serverapp.strategy strategies use DpFedAvg."
            )
        self._init_budget_settings(
            noise_multiplier, clipping_norm, num_sampled_clients, target_delta, max_epsilon,
            clipping, population_size, fraction, getattr(strategy, "fraction_fit", None),
        )
        self._wrap_inner(strategy, compat.DifferentialPrivacyServerSideFixedClipping,
                         compat.DifferentialPrivacyClientSideFixedClipping)

    def __repr__(self) -> str:
        """Name the wrapper, its clipping and its inner strategy."""
        return f"DpFedAvgCompat({self.strategy!r}, clipping={self.clipping!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Delegate to Flower's wrapper (the inner strategy's initial parameters)."""
        return self.dp_strategy.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Let Flower's wrapper sample the round; ``[]`` if the budget refuses it.

        With ``clipping="distributed"`` every ``FitIns`` config (a copy) also gets ``z``,
        ``S`` and the round's cohort size.
        """
        if self._stopped(server_round):
            return []
        instructions = self.dp_strategy.configure_fit(server_round, parameters, client_manager)
        if instructions and not self._admit_round(server_round, len(instructions),
                                                  client_manager.num_available()):
            return []
        if self.clipping == "distributed":
            noise_config = self._noise_config(len(instructions))
            instructions = [(proxy, FitIns(ins.parameters, {**ins.config, **noise_config}))
                            for proxy, ins in instructions]
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Union[tuple[ClientProxy, FitRes], BaseException]],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Let Flower's wrapper clip, aggregate and noise; account the release.

        Returns
        -------
        tuple[Parameters | None, dict[str, Scalar]]
            What Flower's wrapper returns (``None, {}`` if any client failed, which
            releases nothing and is not accounted).
        """
        cohort = self._cohorts.pop(server_round, None)
        if cohort is None:
            log(WARNING, "aggregate_fit: round %d was not configured by this strategy",
                server_round)
            return None, {}
        parameters, metrics = self.dp_strategy.aggregate_fit(server_round, results, failures)
        if parameters is not None:
            self._record_release(server_round, cohort,
                                 [float(res.num_examples) for _, res in results])
        return parameters, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Delegate, or ``[]`` once the budget has stopped the run."""
        if self._stopped(server_round):
            return []
        return self.dp_strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[Union[tuple[ClientProxy, EvaluateRes], BaseException]],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Delegate to Flower's wrapper."""
        return self.dp_strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Centralized evaluation by the inner strategy; ``None`` once the run has stopped."""
        if self._stopped(server_round):
            return None
        return self.dp_strategy.evaluate(server_round, parameters)
