"""Per-round bookkeeping shared by both Flower faces of every flhet algorithm."""

from __future__ import annotations

import time
from logging import WARNING

from flwr.common.logger import log

from .evaluation import summarize_client_metrics
from .protocol import Outcome


class RoundHistory:
    """Collects, per round, traffic, timing, accepted/rejected clients and accuracy.

    ``rounds`` is a list of dicts, one per round, with ``round``, ``bytes_up``,
    ``bytes_down``, ``seconds``, ``accepted``, ``rejected`` (id -> reason), ``weights``,
    ``num_failures``, the round's privacy entry (``epsilon``, ``delta``, ...) and, after
    evaluation, the keys of :func:`~flhet_strategies.evaluation.summarize_client_metrics`.
    """

    def __init__(self) -> None:
        self.rounds: list[dict] = []
        self._started: dict[int, float] = {}

    def entry(self, server_round: int) -> dict:
        """The history entry of ``server_round`` (created if missing)."""
        for entry in self.rounds:
            if entry["round"] == server_round:
                return entry
        entry = {"round": server_round, "bytes_up": 0, "bytes_down": 0, "seconds": 0.0}
        self.rounds.append(entry)
        return entry

    def start_round(self, server_round: int, bytes_down: int) -> None:
        """Mark the start of a round and the bytes sent to clients for training."""
        self._started[server_round] = time.perf_counter()
        self.entry(server_round)["bytes_down"] += int(bytes_down)

    def add_bytes(self, server_round: int, bytes_up: int = 0, bytes_down: int = 0) -> None:
        """Count extra traffic of a round (e.g. a delegated decryption)."""
        entry = self.entry(server_round)
        entry["bytes_up"] += int(bytes_up)
        entry["bytes_down"] += int(bytes_down)

    def record_train(self, server_round: int, outcome: Outcome, failures: int,
                     bytes_up: int) -> None:
        """Store the aggregation outcome; log every rejected reply with its reason."""
        for client_id, reason in outcome.rejected.items():
            log(WARNING, "round %s: rejected reply of client %s: %s",
                server_round, client_id, reason)
        entry = self.entry(server_round)
        entry["bytes_up"] += int(bytes_up)
        entry["accepted"] = list(outcome.accepted)
        entry["rejected"] = dict(outcome.rejected)
        entry["num_failures"] = int(failures) + len(outcome.rejected)
        entry["weights"] = dict(outcome.weights)
        entry.update({k: v for k, v in outcome.privacy.items() if k != "round"})
        entry.update(outcome.history)
        self._tick(server_round)

    def record_evaluate(self, server_round: int, per_client: dict[str, dict[str, float]],
                        bytes_down: int = 0) -> dict | None:
        """Store the round's evaluation summary (``None`` if no client reported)."""
        entry = self.entry(server_round)
        entry["bytes_down"] += int(bytes_down)
        summary = summarize_client_metrics(per_client) if per_client else None
        if summary is not None:
            entry.update(summary)
        self._tick(server_round)
        return summary

    def _tick(self, server_round: int) -> None:
        if server_round in self._started:
            self.entry(server_round)["seconds"] = time.perf_counter() - self._started[server_round]
