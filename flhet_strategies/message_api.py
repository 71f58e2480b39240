"""Message-API face of logit-consensus distillation (``flwr.serverapp.strategy``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from .consensus_server import (
    ClientResult,
    ConsensusServer,
    client_id_of,
    default_budget,
    expected_cohort,
    sample_fraction,
)
from .core.consensus import ConsensusConfig
from .core.distillation import ConsensusDistillation
from .core.dp.private_consensus import PrivateConsensus
from .core.recipe import DistillationRecipe
from .core.weighting import WeightFn, sample_count_weights
from .privacy.round_budget import PrivacyViews, RoundBudget
from .records import arrays_to_record, record_to_arrays

PLAN_KEY = "plan"
"""RecordDict key of the round plan's ArrayRecord in train messages."""

REPLY_KEY = "reply"
"""RecordDict key of the client's reply ArrayRecord (logits, class_counts)."""

METRICS_KEY = "metrics"
CONFIG_KEY = "config"


class FedConsensus(PrivacyViews, Strategy):
    """Logit-consensus distillation over a public proxy set (FedMD / DS-FL).

    Clients of any architecture train on their private data and share only their
    predictions on public proxy samples. Each round the server forms a weighted
    consensus of those predictions (FedMD: mean logits; DS-FL: mean probabilities
    sharpened by entropy reduction; optionally per-class vote weights) and sends it
    back for the clients to distill on. Pair it with
    :func:`clients.client_app.distillation_client_app` on the client side.

    Parameters
    ----------
    num_proxy : int
        Size of the public proxy set the clients hold.
    num_classes : int
        Number of classes.
    proxy_per_round : int (default: 2000)
        Proxy samples per round (a fresh seeded subset each round).
    consensus : ConsensusConfig, optional
        The consensus rule (DS-FL + ERA 0.1 + per-class votes by default).
    recipe : DistillationRecipe, optional
        The client recipe (epochs, KD weight/temperature, schedule, final epochs).
    weight_fn : WeightFn (default: sample_count_weights)
        Client weights; swap in contribution-based weights here.
    fraction_train : float (default: 1.0)
        Fraction of connected nodes sampled for training each round.
    fraction_evaluate : float (default: 1.0)
        Fraction of connected nodes sampled for evaluation.
    min_available_nodes : int (default: 2)
        Wait until this many nodes are connected.
    evaluate_every : int (default: 1)
        Clients evaluate every this many rounds (and always after the last one).
    seed : int (default: 0)
        Seed of the proxy-subset sampler.
    phase : str (default: "main")
        Name of this run, sent with every message; clients keep one model per phase,
        so one federation can host several runs (e.g. a local-only baseline).
    always_include : np.ndarray, optional
        Proxy indices requested in every round (part of ``proxy_per_round``), e.g. the
        server's labeled validation slice for
        :class:`~flhet_strategies.core.contribution.weighting.ContributionWeighting`.
    privacy : PrivateConsensus, optional
        Client-level differential privacy of every released consensus, central or
        distributed (clients then run
        :class:`~clients.mods.dp_predictions.DpPredictionsMod` with
        ``encoding="probabilities"``). Needs DS-FL without per-class votes; clients are
        weighted equally.
    privacy_budget : RoundBudget, optional
        Accounting of ``privacy`` (Flower's ``RdpAccountant``): ``epsilon`` and
        ``delta`` in every history entry; with ``max_epsilon`` the run stops cleanly
        after the last round that fits (that round is the clients' final round).
        Default with ``privacy``: full or fixed-size sampling of
        ``min_available_nodes`` clients, delta 1e-5, no budget.

    Examples
    --------
    Central DP at epsilon 8 over 10 rounds of 10 clients::

        z = noise_multiplier_for_epsilon(8.0, 1e-5, rounds=10, population_size=10,
                                         sampling="full", non_negative_payloads=True)
        strategy = FedConsensus(
            num_proxy=5000, num_classes=10, proxy_per_round=50,
            consensus=ConsensusConfig(class_vote_weighting=False),
            privacy=PrivateConsensus(noise_multiplier=z),
            privacy_budget=RoundBudget(10, 1e-5, max_epsilon=8.0, non_negative_payloads=True),
            min_available_nodes=10)
    """

    def __init__(
        self,
        num_proxy: int,
        num_classes: int,
        proxy_per_round: int = 2000,
        consensus: ConsensusConfig | None = None,
        recipe: DistillationRecipe | None = None,
        weight_fn: WeightFn = sample_count_weights,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_available_nodes: int = 2,
        evaluate_every: int = 1,
        seed: int = 0,
        phase: str = "main",
        always_include: np.ndarray | None = None,
        privacy: PrivateConsensus | None = None,
        privacy_budget: RoundBudget | None = None,
    ) -> None:
        if not 0.0 < fraction_train <= 1.0 or not 0.0 <= fraction_evaluate <= 1.0:
            raise ValueError("fraction_train must be in (0, 1], fraction_evaluate in [0, 1]")
        protocol = ConsensusDistillation(num_proxy, num_classes, proxy_per_round,
                                         consensus, weight_fn, seed, always_include, privacy)
        budget = default_budget(privacy, privacy_budget, min_available_nodes, fraction_train)
        self.server = ConsensusServer(protocol, recipe, evaluate_every=evaluate_every,
                                      phase=phase, budget=budget)
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_available_nodes = min_available_nodes

    @property
    def budget(self) -> RoundBudget | None:
        """The privacy accounting (``None`` without ``privacy``)."""
        return self.server.budget

    @property
    def history(self) -> list[dict]:
        """Per-round history (traffic, timing, accuracy summaries, rejections)."""
        return self.server.history.rounds

    def summary(self) -> None:
        """Log the strategy's configuration."""
        p = self.server.protocol
        log(INFO, "\t├── Proxy set: %s samples, %s per round", p.num_proxy, p.proxy_per_round)
        log(INFO, "\t├── Consensus: %s", p.consensus_config)
        log(INFO, "\t└── Client recipe: %s", self.server.recipe)

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              ) -> Result:
        """Run ``num_rounds`` rounds (see ``flwr.serverapp.strategy.Strategy.start``).

        ``initial_arrays`` may be omitted: there is no global model, the protocol's
        state is the consensus. The result's ``arrays`` is the final consensus.
        """
        num_rounds = self.server.cap_rounds(
            num_rounds, expected_cohort(self.min_available_nodes, self.fraction_train))
        return super().start(grid, initial_arrays or ArrayRecord(), num_rounds, timeout,
                             train_config, evaluate_config, evaluate_fn)

    def _sample(self, grid: Grid, fraction: float, server_round: int) -> list[int]:
        # Wait for min_available_nodes first, then sample a fraction of all connected.
        _, all_nodes = sample_nodes(grid, self.min_available_nodes, self.min_available_nodes)
        return sample_fraction(sorted(all_nodes), fraction, self.server.protocol.seed, server_round)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send the round plan (proxy indices + previous consensus) to sampled nodes."""
        node_ids = self._sample(grid, self.fraction_train, server_round)
        if not self.server.round_allowed(server_round, len(node_ids)):
            return []
        plan_arrays, plan_config = self.server.train_instructions(server_round, dict(config))
        self.server.start_round(server_round, len(node_ids), plan_arrays)
        content = RecordDict({PLAN_KEY: arrays_to_record(plan_arrays),
                              CONFIG_KEY: ConfigRecord(plan_config)})
        log(INFO, "configure_train: round %s, %s nodes", server_round, len(node_ids))
        return [Message(content=content, dst_node_id=nid, message_type=MessageType.TRAIN)
                for nid in node_ids]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies and form the new consensus; bad replies count as failures."""
        results, failures = client_results(server_round, replies)
        consensus, metrics = self.server.aggregate_train(server_round, results, failures)
        record = None if consensus is None else arrays_to_record(consensus)
        return record, MetricRecord(metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Ask sampled nodes to evaluate their own models."""
        if self.fraction_evaluate == 0.0 or not self.server.should_evaluate(server_round):
            return []
        node_ids = self._sample(grid, self.fraction_evaluate, server_round)
        cfg = {**dict(config), **self.server.evaluate_config(server_round)}
        content = RecordDict({CONFIG_KEY: ConfigRecord(cfg)})
        return [Message(content=content, dst_node_id=nid, message_type=MessageType.EVALUATE)
                for nid in node_ids]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Summarise per-client accuracy (own test split and global test set)."""
        results = []
        for msg in replies:
            if msg.has_error():
                continue
            metrics = dict(msg.content.metric_records.get(METRICS_KEY, MetricRecord()))
            results.append((client_id_of(metrics, msg.metadata.src_node_id), metrics))
        summary = self.server.aggregate_evaluate(server_round, results)
        return MetricRecord(summary) if summary else None


def split_failed_replies(server_round: int, replies: Iterable[Message]
                         ) -> tuple[list[Message], int]:
    """The replies without an error, and how many had one (each logged).

    Parameters
    ----------
    server_round : int
        The round, for the log lines.
    replies : Iterable[Message]
        A round's replies.

    Returns
    -------
    tuple[list[Message], int]
        The successful replies, in order, and the number of failed ones.
    """
    successful, failures = [], 0
    for msg in replies:
        if msg.has_error():
            log(INFO, "round %s: node %s failed: %s", server_round,
                msg.metadata.src_node_id, msg.error.reason)
            failures += 1
        else:
            successful.append(msg)
    return successful, failures


def client_results(server_round: int, replies: Iterable[Message]
                   ) -> tuple[list[ClientResult], int]:
    """The distillation replies of a round as :class:`ClientResult` s, and the failures.

    Parameters
    ----------
    server_round : int
        The round, for the log lines.
    replies : Iterable[Message]
        Replies carrying ``REPLY_KEY`` arrays and ``METRICS_KEY`` metrics.

    Returns
    -------
    tuple[list[ClientResult], int]
        One result per successful reply (its arrays and metrics, not yet validated),
        and the number of failed replies.
    """
    successful, failures = split_failed_replies(server_round, replies)
    results = []
    for msg in successful:
        metrics = dict(msg.content.metric_records.get(METRICS_KEY, MetricRecord()))
        reply = msg.content.array_records.get(REPLY_KEY, ArrayRecord())
        results.append(ClientResult(client_id_of(metrics, msg.metadata.src_node_id),
                                    record_to_arrays(reply), metrics))
    return results, failures


__all__ = ["FedConsensus", "PLAN_KEY", "REPLY_KEY", "client_results", "split_failed_replies"]
