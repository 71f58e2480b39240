"""Contribution-weighted FedAvg: wrappers around Flower's FedAvg (both APIs).

:class:`ContributionWeightedFedAvg` (Message API) and
:class:`ContributionWeightedFedAvgCompat` (compat API) value each round's clients by
their Shapley values (:class:`~flhet_strategies.weighting.contribution.weight_average_round.WeightAverageContribution`)
and hand the inner strategy the replies with the aggregation weight replaced. See
docs/contribution.md.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from logging import INFO
from typing import Any, Optional, Union

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
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
from flwr.server import strategy as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy

from ..faces.driver import client_id_of
from .contribution.weight_average_round import (
    ContributionViews,
    EvalFn,
    WeightAverageContribution,
)

__all__ = ["WEIGHT_UNITS", "ContributionWeightedFedAvg", "ContributionWeightedFedAvgCompat"]


class _Valuation(ContributionViews):
    """What both faces do: remember the round's global model, value the clients."""

    def _start_valuation(self, eval_fn: EvalFn, options: dict[str, Any]) -> None:
        self.contribution = WeightAverageContribution(eval_fn, **options)
        self._round_start: tuple[int, list[np.ndarray]] | None = None

    def summary(self) -> None:
        """Log the contribution settings, then the inner strategy's summary."""
        c = self.contribution
        log(INFO, "\t├──> Contribution weighting (Shapley values):")
        log(INFO, "\t│\t├── Estimator: %s (budget %d evaluations)", c.method, c.budget)
        log(INFO, "\t│\t├── Mix: %s | decay: %s", c.mix, c.decay)
        log(INFO, "\t│\t└── Used for weights: %s", c.use_for_weights)
        if hasattr(self.strategy, "summary"):  # the compat API has none
            self.strategy.summary()

    def _value(
        self,
        server_round: int,
        ids: list[str],
        parameters: list[list[np.ndarray]],
        counts: list[float],
    ) -> np.ndarray:
        """Contribution weights (summing to one) of this round's clients, logged."""
        start = self._round_start
        global_parameters = start[1] if start is not None and start[0] == server_round else None
        weights = self.contribution(server_round, ids, parameters, counts, global_parameters)
        log(INFO, "contribution weights (round %d) %s", server_round,
            {c: round(float(w), 4) for c, w in zip(ids, weights)})
        return weights


class ContributionWeightedFedAvg(_Valuation, Strategy):
    """Shapley-value aggregation weights around a weight-averaging Message-API strategy.

    Each round, before the inner strategy aggregates, the wrapper takes every
    successful reply's parameters (its one ``ArrayRecord``) and sample count
    (the ``weighted_by_key`` entry of its one ``MetricRecord``), values the
    clients with :class:`WeightAverageContribution` (``v(S)`` = ``eval_fn`` of
    the sample-weighted average of coalition ``S``'s parameters; ``v(∅)`` = the
    round's incoming global model's accuracy), and passes the inner strategy
    copies of the replies whose ``weighted_by_key`` holds the contribution
    weight instead (a float; the weights sum to one). The originals are left
    untouched. A client with a non-positive discounted contribution gets weight
    0 when ``mix=1``.

    Works around any strategy that averages the replies' ArrayRecords weighted
    by a MetricRecord key: :class:`flwr.serverapp.strategy.FedAvg` and its
    subclasses (FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, ...). The
    inner strategy's train metrics are then averaged with the contribution
    weights too. Clients must share one architecture.

    A client is identified by the ``"client-id"`` entry of its MetricRecord
    when it sends one (e.g. its partition id), else by its node id.

    Parameters
    ----------
    strategy : Strategy
        The inner strategy, e.g. ``FedAvg(...)``.
    eval_fn : EvalFn
        ``eval_fn(parameters) -> accuracy in [0, 1]`` on the server's labeled
        validation data; ``parameters`` is a list of float64 arrays in the order
        of the ArrayRecord's keys (``ArrayRecord.to_numpy_ndarrays()``).
    weighted_by_key : str, optional
        The MetricRecord key the inner strategy weights by; default: the inner
        strategy's ``weighted_by_key`` attribute.
    **options
        Keyword arguments of :class:`WeightAverageContribution`: ``method``
        (default ``"auto"``: exact while ``2**n_clients <= budget``), ``budget``
        (1024 ``eval_fn`` calls a round), ``mix`` (1.0; 0 gives sample counts),
        ``decay`` (0.5), ``use_for_weights`` (True; False audits only),
        ``empty_value`` (``v(∅)``; default the incoming global model's
        accuracy), ``seed`` (0), ``estimator_options``.

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
        weighted_by_key: Optional[str] = None,
        **options: Any,
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise TypeError(
                "strategy must be a flwr.serverapp.strategy.Strategy (e.g. FedAvg()); for "
                "flwr.server.strategy strategies use ContributionWeightedFedAvgCompat."
            )
        key = weighted_by_key or getattr(strategy, "weighted_by_key", None)
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"{type(strategy).__name__} has no weighted_by_key attribute; pass the "
                "MetricRecord key it weights its average by as weighted_by_key=."
            )
        self.strategy = strategy
        self.weighted_by_key = key
        self._start_valuation(eval_fn, options)

    def __repr__(self) -> str:
        """Name the wrapper and its inner strategy."""
        return f"ContributionWeightedFedAvg({self.strategy!r})"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the round's global arrays (for ``v(∅)``), then delegate."""
        self._round_start = (server_round, arrays.to_numpy_ndarrays())
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Value the clients, re-weight copies of their replies, let the inner strategy aggregate.

        Parameters
        ----------
        server_round : int
            The round.
        replies : Iterable[Message]
            The clients' train replies; replies carrying an error are passed
            through unvalued.

        Returns
        -------
        tuple[ArrayRecord | None, MetricRecord | None]
            What the inner strategy's ``aggregate_train`` returns.

        Raises
        ------
        InconsistentMessageReplies
            If a reply lacks exactly one ArrayRecord and one MetricRecord with
            ``weighted_by_key``, or its ArrayRecord's keys differ from the others'.
        ValueError
            From the valuation: different parameter shapes, NaN parameters, or an
            ``eval_fn`` result outside ``[0, 1]``.
        """
        replies = list(replies)
        valid = [reply for reply in replies if not reply.has_error()]
        if not valid:
            return self.strategy.aggregate_train(server_round, replies)
        ids, parameters, counts = self._read_replies(valid)
        weights = self._value(server_round, ids, parameters, counts)
        reweighted = [self._with_weight(reply, float(w)) for reply, w in zip(valid, weights)]
        failed = [reply for reply in replies if reply.has_error()]
        return self.strategy.aggregate_train(server_round, reweighted + failed)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to the inner strategy."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate to the inner strategy."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def _read_replies(
        self, replies: list[Message]
    ) -> tuple[list[str], list[list[np.ndarray]], list[float]]:
        """Client ids, parameter arrays and sample counts of successful replies."""
        ids: list[str] = []
        parameters: list[list[np.ndarray]] = []
        counts: list[float] = []
        reference_keys: list[str] | None = None
        for reply in replies:
            node = reply.metadata.src_node_id
            content = reply.content
            if len(content.array_records) != 1 or len(content.metric_records) != 1:
                raise InconsistentMessageReplies(
                    reason=f"The train reply of node {node} has {len(content.array_records)} "
                    f"ArrayRecords and {len(content.metric_records)} MetricRecords; "
                    "contribution weighting needs exactly one of each."
                )
            arrays = next(iter(content.array_records.values()))
            metrics = next(iter(content.metric_records.values()))
            weight = metrics.get(self.weighted_by_key)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise InconsistentMessageReplies(
                    reason=f"The MetricRecord of node {node} holds {weight!r} under "
                    f"{self.weighted_by_key!r}; it must hold the client's number of "
                    "training examples."
                )
            keys = list(arrays.keys())
            if reference_keys is None:
                reference_keys = keys
            elif keys != reference_keys:
                raise InconsistentMessageReplies(
                    reason=f"Node {node} sends arrays {keys} but node "
                    f"{replies[0].metadata.src_node_id} sends {reference_keys}; "
                    "contribution-weighted averaging needs clients of one architecture."
                )
            ids.append(client_id_of(metrics, node))
            parameters.append(arrays.to_numpy_ndarrays())
            counts.append(float(weight))
        return ids, parameters, counts

    def _with_weight(self, reply: Message, weight: float) -> Message:
        """A copy of ``reply`` whose MetricRecord holds ``weight`` under ``weighted_by_key``."""
        content = RecordDict(dict(reply.content.items()))
        metrics_key = next(iter(reply.content.metric_records))
        metrics = reply.content.metric_records[metrics_key].copy()
        metrics[self.weighted_by_key] = weight
        content[metrics_key] = metrics
        return Message(content=content, metadata=copy.copy(reply.metadata))


WEIGHT_UNITS = 1_000_000
"""``FitRes.num_examples`` is an int: weights summing to one are sent as integers summing to
about this many (a resolution of one millionth)."""


class ContributionWeightedFedAvgCompat(_Valuation, compat.Strategy):
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
    **options
        Keyword arguments of :class:`WeightAverageContribution`: ``method``
        (default ``"auto"``: exact while ``2**n_clients <= budget``), ``budget``
        (1024 ``eval_fn`` calls a round), ``mix`` (1.0; 0 gives sample counts),
        ``decay`` (0.5), ``use_for_weights`` (True; False audits only),
        ``empty_value`` (``v(∅)``; default the incoming global model's
        accuracy), ``seed`` (0), ``estimator_options``.

    Attributes
    ----------
    contribution : WeightAverageContribution
        The valuation (its ``ledger`` and ``weight_history``).
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        strategy: compat.Strategy,
        eval_fn: EvalFn,
        **options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(strategy, compat.Strategy):
            raise TypeError(
                "strategy must be a flwr.server.strategy.Strategy (e.g. FedAvg()); for "
                "flwr.serverapp.strategy strategies use ContributionWeightedFedAvg."
            )
        self.strategy = strategy
        self._start_valuation(eval_fn, options)

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
        weights = self._value(server_round, ids, parameters, counts)
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
