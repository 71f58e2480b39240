"""Both Flower faces drive every algorithm to the same outcome.

The same clients (same data, models and seeds) answer the Message-API strategy through
``flhet_client_app`` and Flower's own ``Strategy.start`` loop, and the compat strategy
through ``FlhetNumPyClient`` and Flower's compat ``Server``; every message is serialized
both ways. The two runs must agree on the result arrays and on the history: who was
accepted, the weights, the traffic, the per-client accuracies and the privacy spent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from uuid import uuid4

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.common import parameters_to_ndarrays
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.server.client_manager import SimpleClientManager
from flwr.server.server import Server
from flwr.supercore.task_identity import TaskIdentity
from inprocess_proxy import InProcessProxy

from clients.faces.client_app import flhet_client_app
from clients.faces.numpy_client import FlhetNumPyClient
from clients.faces.wrappers import PaillierMod, SecureSumNumPyClient
from clients.federated_client import FederatedClient
from clients.learners.torch_learner import TorchLearner
from clients.models.zoo import build_model
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig
from flhet_strategies.algorithms.recipes import (
    DistillationRecipe,
    PrototypeRecipe,
    SharedHeadRecipe,
)
from flhet_strategies.privacy.dp.settings import PrivateConsensus
from flhet_strategies.privacy.paillier import KeyHolder
from flhet_strategies.distill_settings import DistillSettings
from flhet_strategies.strategies import (
    FedConsensus,
    FedConsensusCompat,
    FedDF,
    FedDFCompat,
    FedGH,
    FedGHCompat,
    FedProto,
    FedProtoCompat,
    FedTGP,
    FedTGPCompat,
    LGFedAvg,
    LGFedAvgCompat,
    SecureConsensus,
    SecureConsensusCompat,
)

CLASSES, NUM_CLIENTS, ROUNDS, FEATURES = 4, 3, 2, 8
SHAPE = (1, 8, 8)
NODES = [11, 12, 13]
PROXY = np.random.default_rng(99).normal(size=(60, *SHAPE)).astype(np.float32)


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """The process identity Flower's runtime sets before app code builds Messages."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    torch.set_num_threads(1)
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def make_client(client_id: int, feature_dim: int | None) -> FederatedClient:
    """Client ``client_id``: its own class mix, a fresh seeded MLP."""
    rng = np.random.default_rng(client_id)
    y = rng.choice(CLASSES, size=48, p=np.roll([0.5, 0.3, 0.15, 0.05], client_id))
    x = (rng.normal(size=(48, *SHAPE)) + y[:, None, None, None]).astype(np.float32)
    model = build_model("mlp", SHAPE, CLASSES, seed=client_id, feature_dim=feature_dim)
    learner = TorchLearner(model, lr=0.05, batch_size=16, seed=client_id)
    return FederatedClient(learner, x[:36], y[:36], x[36:], y[36:], PROXY, CLASSES,
                           global_test=(x, y), seed=client_id)


def transported(msg: Message) -> Message:
    """The message as the other side receives it (serialized and parsed again)."""
    return message_from_proto(message_to_proto(msg))


class LocalGrid:
    """A Grid over in-process nodes: each runs the real ClientApp on serialized messages,
    with its own persistent Context (as a SuperNode keeps it)."""

    def __init__(self, make: Callable[[int], FederatedClient], mods: list | None = None) -> None:
        self.app = flhet_client_app(lambda context: make(NODES.index(context.node_id)), mods)
        self.contexts = {node: Context(run_id=1, node_id=node,
                                       node_config={"partition-id": NODES.index(node)},
                                       state=RecordDict(), run_config={}) for node in NODES}

    def get_node_ids(self) -> list[int]:
        return list(NODES)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            node = msg.metadata.dst_node_id
            replies.append(transported(self.app(transported(msg), self.contexts[node])))
        return replies


def run_message(strategy, make, holder: KeyHolder | None = None
                ) -> tuple[list[np.ndarray], list[dict]]:
    mods = None if holder is None else [PaillierMod(key_holder=holder)]
    result = strategy.start(grid=LocalGrid(make, mods), num_rounds=ROUNDS)
    return [a.numpy() for a in result.arrays.values()], strategy.history


def run_compat(strategy, make, holder: KeyHolder | None = None
               ) -> tuple[list[np.ndarray], list[dict]]:
    manager = SimpleClientManager()
    for cid in range(NUM_CLIENTS):
        context = Context(run_id=1, node_id=NODES[cid], node_config={"partition-id": cid},
                          state=RecordDict(), run_config={})
        client = FlhetNumPyClient(make(cid), cid, context)
        if holder is not None:
            client = SecureSumNumPyClient(client, key_holder=holder, context=context)
        manager.register(InProcessProxy(str(NODES[cid]), client))
    server = Server(client_manager=manager, strategy=strategy)
    server.fit(ROUNDS, timeout=None)
    return parameters_to_ndarrays(server.parameters), strategy.history


COMPARED = ("round", "sum_decryption", "bytes_up", "bytes_down", "accepted", "rejected", "num_failures",
            "weights", "client_accuracy_mean", "global_accuracy_mean", "per_client",
            "epsilon", "delta", "noise_multiplier", "released_rows")


def comparable(history: list[dict]) -> list[dict]:
    return [{k: entry[k] for k in COMPARED if k in entry} for entry in history]


CONSENSUS = dict(num_proxy=len(PROXY), num_classes=CLASSES, proxy_per_round=20,
                 recipe=DistillationRecipe(warmup_epochs=1, final_private_epochs=1))
PRIVATE = dict(CONSENSUS, consensus=ConsensusConfig(class_vote_weighting=False),
               privacy=PrivateConsensus(0.5, seed=3, min_margin=None))
PROTO = dict(num_classes=CLASSES, feature_dim=FEATURES,
             recipe=PrototypeRecipe(warmup_epochs=1, proto_weight=1.0, inference="prototype"))
TGP = dict(PROTO, server_epochs=5, server_batch_size=4)
HEAD = dict(num_classes=CLASSES, feature_dim=FEATURES, recipe=SharedHeadRecipe(warmup_epochs=1))
GH = dict(HEAD, server_epochs=5, server_batch_size=4)
DF = dict(models={"mlp": partial(build_model, "mlp", SHAPE, CLASSES)}, proxy_x=PROXY,
          num_classes=CLASSES, validation_indices=np.arange(50, 60),
          distillation=DistillSettings(max_steps=20, batch_size=16, eval_every=5, patience=10))

CASES = {
    "consensus": (FedConsensus, FedConsensusCompat, CONSENSUS, None),
    "consensus-central-dp": (FedConsensus, FedConsensusCompat, PRIVATE, None),
    "fedproto": (FedProto, FedProtoCompat, PROTO, FEATURES),
    "fedtgp": (FedTGP, FedTGPCompat, TGP, FEATURES),
    "lgfedavg": (LGFedAvg, LGFedAvgCompat, HEAD, FEATURES),
    "fedgh": (FedGH, FedGHCompat, GH, FEATURES),
    "feddf": (FedDF, FedDFCompat, DF, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_faces_reach_the_same_outcome(case: str) -> None:
    message_type, compat_type, options, feature_dim = CASES[case]
    make = lambda cid: make_client(cid, feature_dim)  # noqa: E731
    message = message_type(**options, min_available_nodes=NUM_CLIENTS)
    compat = compat_type(**options, num_rounds=ROUNDS, min_available_clients=NUM_CLIENTS)
    m_arrays, m_history = run_message(message, make)
    c_arrays, c_history = run_compat(compat, make)
    assert len(m_history) == ROUNDS and comparable(m_history) == comparable(c_history)
    assert all(len(e["accepted"]) == NUM_CLIENTS for e in m_history)
    assert len(m_arrays) == len(c_arrays) >= 1
    for a, b in zip(m_arrays, c_arrays):
        np.testing.assert_array_equal(a, b)
    # the runs learned something and are not trivially equal (e.g. both empty)
    assert any(np.asarray(a).size for a in m_arrays)
    assert m_history[-1]["client_accuracy_mean"] > 0.25


@pytest.mark.parametrize("case", ["consensus", "fedproto", "lgfedavg"])
def test_secure_sums_reach_the_same_outcome_on_both_faces(case: str) -> None:
    """Paillier: different ciphertexts, the same decrypted aggregates and history."""
    message_type, compat_type, options, feature_dim = CASES[case]
    make = lambda cid: make_client(cid, feature_dim)  # noqa: E731
    holder = KeyHolder.generate()
    public = holder.public_key
    message = SecureConsensus(message_type(**options, min_available_nodes=NUM_CLIENTS), public,
                              max_examples=64)
    compat = SecureConsensusCompat(compat_type(**options, num_rounds=ROUNDS,
                                               min_available_clients=NUM_CLIENTS), public,
                                   max_examples=64)
    _, m_history = run_message(message, make, holder)
    _, c_history = run_compat(compat, make, holder)
    assert comparable(m_history) == comparable(c_history)
    assert [e["sum_decryption"] for e in m_history] == [None, "delegated"]
    plain_type = CASES[case][0]
    _, plain = run_message(plain_type(**options, min_available_nodes=NUM_CLIENTS), make)
    # within the quantization, the secure run learns what the plaintext run learns
    assert abs(m_history[-1]["client_accuracy_mean"] - plain[-1]["client_accuracy_mean"]) < 0.15


def test_a_changed_reply_changes_the_outcome() -> None:
    """The comparison can fail: one face with a differently seeded client diverges."""
    make = lambda cid: make_client(cid, None)  # noqa: E731
    other = lambda cid: make_client(cid + (7 if cid == 0 else 0), None)  # noqa: E731
    m_arrays, m_history = run_message(FedConsensus(**CONSENSUS, min_available_nodes=3), make)
    c_arrays, c_history = run_compat(
        FedConsensusCompat(**CONSENSUS, num_rounds=ROUNDS, min_available_clients=3), other)
    assert comparable(m_history) != comparable(c_history)
    assert not all(np.array_equal(a, b) for a, b in zip(m_arrays, c_arrays))
