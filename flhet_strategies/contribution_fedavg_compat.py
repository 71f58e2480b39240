"""Contribution-weighted FedAvg for Flower's compat API (``flwr.server.strategy``).

The compat face of :class:`~flhet_strategies.contribution_fedavg.ContributionWeightedFedAvg`,
for ``ServerApp(server_fn=...)`` / ``NumPyClient`` deployments::

    strategy = ContributionWeightedFedAvgCompat(FedAvg(initial_parameters=...), eval_fn)
    ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=10))

Same valuation
(:class:`~flhet_strategies.core.contribution.weight_average_round.WeightAverageContribution`);
the weights reach the inner strategy as ``FitRes.num_examples``.
"""

from __future__ import annotations

import dataclasses
from logging import INFO
from typing import Any, Optional, Union

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from .consensus_server import client_id_of
from .core.contribution.weight_average_round import (
    ContributionViews,
    EvalFn,
    WeightAverageContribution,
)

__all__ = ["WEIGHT_UNITS", "ContributionWeightedFedAvgCompat"]

WEIGHT_UNITS = 1_000_000
"""``FitRes.num_examples`` is an int: weights summing to one are sent as integers summing to
about this many (a resolution of one millionth)."""


class ContributionWeightedFedAvgCompat(ContributionViews, Strategy):
    """Shapley-value aggregation weights around a weight-averaging compat strategy.

    Each round, before the inner strategy aggregates, the wrapper values the
    clients of the successful fit results with :class:`WeightAverageContribution`
    (``v(S)`` = ``eval_fn`` of the ``num_examples``-weighted average of
    coalition ``S``'s parameters; ``v(∅)`` = the round's incoming global
    model's accuracy), and passes the inner strategy copies of the results
    whose ``num_examples`` holds the contribution weight instead, in units of
    :data:`WEIGHT_UNITS` (so they stay integers). The originals are left
    untouched. A client with a non-positive discounted contribution gets
    ``num_examples=0`` when ``mix=1``.

    Works around any strategy that averages by ``FitRes.num_examples``:
    :class:`flwr.server.strategy.FedAvg` and its subclasses (FedProx, FedAvgM,
    FedAdam, ...); the inner ``fit_metrics_aggregation_fn`` then sees the
    contribution weights too. Clients must share one architecture.

    A client is identified by the ``"client-id"`` entry of its fit metrics
    when it sends one (e.g. its partition id), else by ``ClientProxy.cid``.

    Parameters
    ----------
    strategy : Strategy
        The inner strategy, e.g. ``FedAvg(...)``.
    eval_fn : EvalFn
        ``eval_fn(parameters) -> accuracy in [0, 1]`` on the server's labeled
        validation data; ``parameters`` is a list of float64 arrays in the order
        the clients send them (``parameters_to_ndarrays``).
    method : str (default: "auto")
        Shapley estimator (exact while ``2**n_clients <= budget``).
    budget : int (default: 1024)
        ``eval_fn`` calls per round for the sampling estimators.
    mix : float (default: 1.0)
        Share of the contribution part of the weights; 0 gives sample counts.
    decay : float (default: 0.5)
        Discount of older rounds in a client's score (0: this round only).
    use_for_weights : bool (default: True)
        False: audit only (record contributions, keep the sample counts).
    empty_value : float, optional
        ``v(∅)``; default: accuracy of the round's incoming global model.
    seed : int (default: 0)
        Seed of the sampling estimators.
    estimator_options : dict, optional
        Passed to the estimator's constructor.

    Attributes
    ----------
    contribution : WeightAverageContribution
        The valuation (its ``ledger`` and ``weight_history``).
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        strategy: Strategy,
        eval_fn: EvalFn,
        *,
        method: str = "auto",
        budget: int = 1024,
        mix: float = 1.0,
        decay: float = 0.5,
        use_for_weights: bool = True,
        empty_value: Optional[float] = None,
        seed: int = 0,
        estimator_options: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise TypeError(
                "strategy must be a flwr.server.strategy.Strategy (e.g. FedAvg()); for "
                "flwr.serverapp.strategy strategies use ContributionWeightedFedAvg."
            )
        self.strategy = strategy
        self.contribution = WeightAverageContribution(
            eval_fn,
            method=method,
            budget=budget,
            mix=mix,
            decay=decay,
            use_for_weights=use_for_weights,
            empty_value=empty_value,
            seed=seed,
            estimator_options=estimator_options,
        )
        self._round_start: tuple[int, list[np.ndarray]] | None = None

    def __repr__(self) -> str:
        """Name the wrapper and its inner strategy."""
        return f"ContributionWeightedFedAvgCompat({self.strategy!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Delegate to the inner strategy."""
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Remember the round's global parameters (for ``v(∅)``), then delegate."""
        self._round_start = (server_round, parameters_to_ndarrays(parameters))
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Union[tuple[ClientProxy, FitRes], BaseException]],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Value the clients, re-weight copies of their results, let the inner strategy aggregate.

        Parameters
        ----------
        server_round : int
            The round.
        results : list[tuple[ClientProxy, FitRes]]
            Successful fit results.
        failures : list
            Failures, passed through.

        Returns
        -------
        tuple[Parameters | None, dict[str, Scalar]]
            What the inner strategy's ``aggregate_fit`` returns.

        Raises
        ------
        ValueError
            From the valuation: different parameter shapes, NaN parameters, a
            non-positive ``num_examples``, or an ``eval_fn`` result outside ``[0, 1]``.
        """
        if not results:
            return self.strategy.aggregate_fit(server_round, results, failures)
        ids = [client_id_of(res.metrics, proxy.cid) for proxy, res in results]
        parameters = [parameters_to_ndarrays(res.parameters) for _, res in results]
        counts = [res.num_examples for _, res in results]
        start = self._round_start
        global_parameters = start[1] if start is not None and start[0] == server_round else None
        weights = self.contribution(server_round, ids, parameters, counts, global_parameters)
        log(
            INFO,
            "aggregate_fit: contribution weights %s",
            {c: round(float(w), 4) for c, w in zip(ids, weights)},
        )
        units = np.rint(weights * WEIGHT_UNITS).astype(np.int64)
        reweighted = [
            (proxy, dataclasses.replace(res, num_examples=int(unit)))
            for (proxy, res), unit in zip(results, units)
        ]
        return self.strategy.aggregate_fit(server_round, reweighted, failures)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Delegate to the inner strategy."""
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[Union[tuple[ClientProxy, EvaluateRes], BaseException]],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Delegate to the inner strategy."""
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Delegate to the inner strategy (centralized evaluation)."""
        return self.strategy.evaluate(server_round, parameters)
