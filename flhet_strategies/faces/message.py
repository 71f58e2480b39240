"""One Message-API strategy (``flwr.serverapp.strategy``) for any flhet server half."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from ..aggregation.claims import ClaimCheck
from ..protocol import ServerAlgorithm
from .views import FaceViews
from .driver import RoundDriver
from .records import arrays_to_record, instruction_content, reply_of


class MessageStrategy(FaceViews, Strategy):
    """Drive a flhet :class:`~flhet_strategies.protocol.ServerAlgorithm` in the Message API.

    Pair it with :func:`clients.faces.client_app.flhet_client_app` on the nodes.

    Parameters
    ----------
    algorithm : ServerAlgorithm
        The server half (e.g. a consensus or prototype algorithm, possibly wrapped in
        differential privacy or a Paillier secure sum).
    fraction_train : float (default: 1.0)
        Fraction of connected nodes sampled for training each round.
    fraction_evaluate : float (default: 1.0)
        Fraction of connected nodes sampled for evaluation.
    min_available_nodes : int (default: 2)
        Wait until this many nodes are connected.
    evaluate_every : int (default: 1)
        Clients evaluate every this many rounds (and always after the last one).
    seed : int (default: 0)
        Seed of the node sampler.
    phase : str (default: "main")
        Name of this run, sent with every message; clients keep one model per phase,
        so one federation can host several runs (e.g. a local-only baseline).
    claims : ClaimCheck, optional
        Screens the training replies' client ids, example counts and label histograms
        before the algorithm sees them (default: duplicate ids and histograms that
        disagree with the count are rejected; caps and enrollment are opt-in).
    checkpoint : str or Path, optional
        File the round state is written to, atomically, after every finished round;
        :meth:`resume` continues from it (docs/resume.md).
    """

    def __init__(self, algorithm: ServerAlgorithm, *, fraction_train: float = 1.0,
                 fraction_evaluate: float = 1.0, min_available_nodes: int = 2,
                 evaluate_every: int = 1, seed: int = 0, phase: str = "main",
                 claims: ClaimCheck | None = None,
                 checkpoint: str | Path | None = None) -> None:
        self.driver = RoundDriver(
            algorithm, checkpoint=checkpoint, fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate, min_available=min_available_nodes,
            evaluate_every=evaluate_every, seed=seed, phase=phase, claims=claims)

    init_face = __init__
    """The face's own constructor (for named strategies that build their server half first)."""

    @staticmethod
    def population(face: dict) -> dict:
        """Clients and sampling fraction a privacy budget of these face options assumes."""
        return {"population": face.get("min_available_nodes", 2),
                "fraction": face.get("fraction_train", 1.0)}

    def face_settings(self) -> dict:
        """The options that rebuild this face around another server half."""
        d = self.driver
        return {"fraction_train": d.fraction_train, "fraction_evaluate": d.fraction_evaluate,
                "min_available_nodes": d.min_available, "evaluate_every": d.evaluate_every,
                "seed": d.seed, "phase": d.phase, "claims": d.claims,
                "checkpoint": d.checkpoint}

    @property
    def fraction_train(self) -> float:
        """Fraction of nodes sampled for training."""
        return self.driver.fraction_train

    @property
    def fraction_evaluate(self) -> float:
        """Fraction of nodes sampled for evaluation."""
        return self.driver.fraction_evaluate

    @property
    def min_available_nodes(self) -> int:
        """Nodes to wait for."""
        return self.driver.min_available

    def summary(self) -> None:
        """Log the algorithm's settings."""
        lines = self.algorithm.describe()
        for i, line in enumerate(lines):
            log(INFO, "\t%s── %s", "└" if i == len(lines) - 1 else "├", line)

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              ) -> Result:
        """Run ``num_rounds`` rounds (see ``flwr.serverapp.strategy.Strategy.start``).

        ``initial_arrays`` may be omitted (flhet's algorithms hold their own state). A
        privacy budget may run fewer rounds: the last one that fits is the clients'
        final round. The result's ``arrays`` are the algorithm's last aggregate. A
        resumed strategy runs only the rounds its checkpoint had not finished.
        """
        if not self.driver.planned:
            self.driver.plan(num_rounds)
        rounds = self.driver.remaining_rounds
        if self.driver.offset:
            log(INFO, "resuming %s after round %s: %s rounds to go", self.driver.phase,
                self.driver.offset, rounds)
        return super().start(grid, initial_arrays or ArrayRecord(), rounds, timeout,
                             train_config, evaluate_config, evaluate_fn)

    def _nodes(self, grid: Grid, fraction: float, server_round: int) -> list[str]:
        # Wait for min_available_nodes first, then sample a fraction of all connected.
        _, all_nodes = sample_nodes(grid, self.driver.min_available, self.driver.min_available)
        return [str(n) for n in self.driver.sample(sorted(all_nodes), fraction, server_round)]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One message per sampled node with that node's instruction."""
        server_round = self.driver.absolute(server_round)
        nodes = self._nodes(grid, self.driver.fraction_train, server_round)
        instructions = self.driver.train(server_round, nodes, dict(config))
        return [Message(content=instruction_content(ins), dst_node_id=int(node),
                        message_type=MessageType.TRAIN) for node, ins in instructions.items()]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies; failed, invalid and missing replies count as failures.

        A node whose reply did not come back within ``start``'s ``timeout`` (Flower's
        grid returns what arrived by then) is a failure of this round; it takes part
        again in the next one.
        """
        server_round = self.driver.absolute(server_round)
        successful, failures = split_failed_replies(server_round, replies)
        outcome, metrics = self.driver.aggregate_train(
            server_round, [reply_of(m) for m in successful], failures)
        arrays = self.algorithm.result_arrays() if outcome is not None and outcome.released \
            else {}
        return (arrays_to_record(arrays) if arrays else None), MetricRecord(metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Evaluation requests (and any task the algorithm attaches to them)."""
        server_round = self.driver.absolute(server_round)
        nodes = []
        if self.driver.fraction_evaluate > 0 and self.driver.should_evaluate(server_round):
            nodes = self._nodes(grid, self.driver.fraction_evaluate, server_round)
        instructions = self.driver.evaluate(server_round, nodes, dict(config))
        return [Message(content=instruction_content(ins), dst_node_id=int(node),
                        message_type=MessageType.EVALUATE) for node, ins in instructions.items()]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Summarise per-client accuracy (own test split and global test set)."""
        server_round = self.driver.absolute(server_round)
        successful, _ = split_failed_replies(server_round, replies)
        summary = self.driver.aggregate_evaluate(server_round, [reply_of(m) for m in successful])
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


__all__ = ["MessageStrategy", "split_failed_replies"]
