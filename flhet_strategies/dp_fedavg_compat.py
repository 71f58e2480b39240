"""Differentially private FedAvg with an epsilon budget, compat API (``flwr.server.strategy``).

The compat face of :class:`~flhet_strategies.dp_fedavg.DpFedAvg`, for
``ServerApp(server_fn=...)`` / ``NumPyClient`` deployments::

    inner = FedAvg(fraction_fit=0.5, initial_parameters=...)
    strategy = DpFedAvgCompat(inner, noise_multiplier=1.0, clipping_norm=1.0,
                              num_sampled_clients=5, max_epsilon=8.0)
    ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=100))

Clipping and noising are Flower's
(:class:`flwr.server.strategy.DifferentialPrivacyServerSideFixedClipping` /
``...ClientSideFixedClipping``, which add ``N(0, (z S / m)^2)`` to the aggregated
parameters like the Message-API wrappers; see :mod:`flhet_strategies.dp_fedavg` for the
noise convention). The accounting is the same
:class:`~flhet_strategies.privacy.round_budget.RoundBudget`; the aggregation weights are
the results' ``FitRes.num_examples``.

The compat ``Server`` runs ``ServerConfig.num_rounds`` rounds and the strategy cannot
shorten them, so only the per-round guard applies: once a round would exceed
``max_epsilon``, ``configure_fit`` and ``configure_evaluate`` return no clients and
``evaluate`` returns ``None`` for the remaining rounds (Flower skips them; the last
released parameters stay the global model). Size ``num_rounds`` beforehand with
``RoundBudget(...).cap``.

Client-side clipping needs Flower's ``fixedclipping_mod``:
``ClientApp(client_fn=..., mods=[flwr.client.mod.fixedclipping_mod])``.

Distributed noise (``clipping="distributed"``): no Flower wrapper; every ``FitIns``
config gets ``z``, ``S`` and the round's cohort size ``m``, the clients are wrapped in
:class:`clients.dp_update_numpy_client.DpUpdateNumPyClient` (clipping plus a noise share
``N(0, (z S)^2 / m)``) and the inner strategy averages their replies (see
:mod:`flhet_strategies.dp_fedavg`).
"""

from __future__ import annotations

from logging import WARNING
from typing import Optional, Union

from flwr.common import EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Scalar
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from .dp_fedavg import DpBudgetSettings

__all__ = ["DpFedAvgCompat"]


class DpFedAvgCompat(DpBudgetSettings, Strategy):
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
        :class:`clients.dp_update_numpy_client.DpUpdateNumPyClient`).
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
    ) -> None:
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise TypeError(
                "strategy must be a flwr.server.strategy.Strategy (e.g. FedAvg()); for "
                "flwr.serverapp.strategy strategies use DpFedAvg."
            )
        self._init_budget_settings(
            noise_multiplier, clipping_norm, num_sampled_clients, target_delta, max_epsilon,
            clipping, population_size, fraction, getattr(strategy, "fraction_fit", None),
        )
        self._wrap_inner(strategy, DifferentialPrivacyServerSideFixedClipping,
                         DifferentialPrivacyClientSideFixedClipping)

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
