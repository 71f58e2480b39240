"""A node that does not answer within the round timeout fails that round, not the run.

Flower's grid returns the replies that arrived before ``timeout``; the round driver
counts every sampled node it got nothing back from as a failure. The compat face gets
the failure from Flower itself (its client proxy raises when the message's time to live
runs out). Both faces must then record the same history: the silent node missing from
round 2's aggregate, counted as a failure, back in round 3. A real hung process is not
tested (docs/deployment.md says why).
"""

from __future__ import annotations

import logging

from flwr.app import Context, MessageType, RecordDict
from flwr.server.client_manager import SimpleClientManager
from flwr.server.server import Server
from inprocess_proxy import InProcessProxy
from test_face_parity import (  # noqa: F401  (task_identity: autouse fixture)
    CONSENSUS,
    NODES,
    NUM_CLIENTS,
    LocalGrid,
    comparable,
    make_client,
    task_identity,
)

from clients.faces.numpy_client import FlhetNumPyClient
from flhet_strategies.strategies import FedConsensus, FedConsensusCompat

ROUNDS = 3
SILENT_ROUND = 2
SILENT_CLIENT = 1


class SilentNodeGrid(LocalGrid):
    """Node ``SILENT_CLIENT`` never answers round ``SILENT_ROUND``'s training message."""

    def __init__(self, make) -> None:
        super().__init__(make)
        self.train_batches = 0
        self.timeouts: list[float | None] = []

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        self.timeouts.append(timeout)
        if messages and messages[0].metadata.message_type == MessageType.TRAIN:
            self.train_batches += 1
            if self.train_batches == SILENT_ROUND:
                messages = [m for m in messages
                            if m.metadata.dst_node_id != NODES[SILENT_CLIENT]]
        return super().send_and_receive(messages, timeout)


class ExpiringProxy(InProcessProxy):
    """Client ``SILENT_CLIENT``'s training message of round ``SILENT_ROUND`` expires."""

    def __init__(self, cid: str, client, index: int) -> None:
        super().__init__(cid, client)
        self.index, self.fits = index, 0

    def fit(self, ins, timeout, group_id):
        self.fits += 1
        if self.index == SILENT_CLIENT and self.fits == SILENT_ROUND:
            # What flwr.server.compat.GridClientProxy raises for an expired message
            raise ValueError("Message contains an Error (reason: message expired)")
        return super().fit(ins, timeout, group_id)


def _check(history: list[dict]) -> None:
    assert [e["round"] for e in history] == list(range(1, ROUNDS + 1))
    silent, after = history[SILENT_ROUND - 1], history[SILENT_ROUND]
    assert silent["num_failures"] == 1
    assert sorted(silent["accepted"]) == [str(c) for c in range(NUM_CLIENTS)
                                        if c != SILENT_CLIENT]
    assert after["num_failures"] == 0 and sorted(after["accepted"]) == [str(c) for c in range(NUM_CLIENTS)]
    assert str(SILENT_CLIENT) in after["per_client"]


def test_a_silent_node_fails_its_round_and_returns_on_both_faces(caplog) -> None:
    make = lambda cid: make_client(cid, None)  # noqa: E731
    message = FedConsensus(**CONSENSUS, min_available_nodes=NUM_CLIENTS)
    grid = SilentNodeGrid(make)
    flwr_logger = logging.getLogger("flwr")  # Flower's logger does not propagate
    flwr_logger.addHandler(caplog.handler)
    try:
        message.start(grid=grid, num_rounds=ROUNDS, timeout=42.0)
    finally:
        flwr_logger.removeHandler(caplog.handler)
    assert set(grid.timeouts) == {42.0}  # the round timeout reaches Flower's grid
    assert (f"round {SILENT_ROUND}: 1 node(s) failed: no reply within the round timeout "
            f"(among nodes {NODES[SILENT_CLIENT]})") in caplog.text
    _check(message.history)

    compat = FedConsensusCompat(**CONSENSUS, num_rounds=ROUNDS,
                                min_available_clients=NUM_CLIENTS)
    manager = SimpleClientManager()
    for cid in range(NUM_CLIENTS):
        context = Context(run_id=1, node_id=NODES[cid], node_config={"partition-id": cid},
                          state=RecordDict(), run_config={})
        manager.register(ExpiringProxy(str(NODES[cid]), FlhetNumPyClient(make(cid), cid,
                                                                           context), cid))
    Server(client_manager=manager, strategy=compat).fit(ROUNDS, timeout=42.0)
    _check(compat.history)
    assert comparable(message.history) == comparable(compat.history)
