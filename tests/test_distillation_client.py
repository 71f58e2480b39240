"""The API-neutral client: one round of the protocol on real data."""

import numpy as np
import pytest
import torch

from clients.distillation_client import DistillationClient
from clients.learners.torch_learner import TorchLearner
from clients.models.zoo import build_model
from flhet_strategies.core.distillation import ConsensusDistillation
from flhet_strategies.aggregation.payload import ClientPayload
from flhet_strategies.algorithms.recipes import DistillationRecipe
from simulations.data.loaders import load_dataset


@pytest.fixture(scope="module")
def data():
    train, test, _ = load_dataset("digits")
    return train, test


def _client(data, seed=0, arch="cnn_small"):
    torch.set_num_threads(1)
    train, test = data
    learner = TorchLearner(build_model(arch, (1, 8, 8), 10, seed=seed), lr=0.05, seed=seed)
    mask, tmask = train.y[:900] < 6, test.y < 6  # a client that only has digits 0..5
    return DistillationClient(learner, train.x[:900][mask], train.y[:900][mask],
                              test.x[tmask], test.y[tmask], proxy_x=train.x[900:],
                              num_classes=10, global_test=(test.x, test.y), seed=seed)


def test_round_one_trains_privately_and_answers_on_requested_proxy(data):
    client = _client(data)
    proto = ConsensusDistillation(num_proxy=len(client.proxy_x), num_classes=10, proxy_per_round=100)
    reply = client.train(proto.plan(1), DistillationRecipe(warmup_epochs=1))
    assert reply.logits.shape == (100, 10) and reply.logits.dtype == np.float32
    assert reply.num_examples == len(client.x_train)
    np.testing.assert_array_equal(reply.class_counts[6:], 0)
    assert reply.class_counts.sum() == len(client.x_train)
    assert reply.metrics["kd_loss"] == 0.0
    m = client.evaluate()
    assert 0 <= m["global_accuracy"] < m["client_accuracy"] <= 1  # global has unseen classes


def test_consensus_from_a_client_that_knows_other_classes_raises_global_accuracy(data):
    train, _ = data
    learner_client = _client(data, seed=1)
    proto = ConsensusDistillation(num_proxy=len(learner_client.proxy_x), num_classes=10,
                                  proxy_per_round=len(learner_client.proxy_x))
    recipe = DistillationRecipe(warmup_epochs=2, kd_weight=1.0)
    learner_client.train(proto.plan(1), recipe)
    alone = learner_client.evaluate()["global_accuracy"]
    # An oracle peer that knows all ten classes (its logits are the true labels).
    oracle = np.eye(10, dtype=np.float32)[train.y[900:]] * 10
    for r in (1, 2, 3):
        idx = proto.proxy_indices(r)
        mine = learner_client.train(proto.plan(r), recipe) if r > 1 else None
        payloads = [ClientPayload("oracle", oracle[idx], 5000, np.full(10, 500))]
        if mine is not None:
            payloads.append(ClientPayload("me", mine.logits, mine.num_examples, mine.class_counts))
        proto.aggregate(r, payloads)
    learner_client.train(proto.plan(4), recipe)
    assert learner_client.evaluate()["global_accuracy"] > alone + 0.2


def test_sequential_schedule_and_final_private_epochs_run(data):
    client = _client(data, arch="mlp")
    proto = ConsensusDistillation(num_proxy=len(client.proxy_x), num_classes=10, proxy_per_round=50)
    r1 = client.train(proto.plan(1), DistillationRecipe())
    proto.aggregate(1, [ClientPayload("0", r1.logits, r1.num_examples, r1.class_counts)])
    recipe = DistillationRecipe(schedule="sequential", final_round=True, final_private_epochs=1)
    reply = client.train(proto.plan(2), recipe)
    assert reply.metrics["kd_loss"] > 0 and reply.logits.shape == (50, 10)


def test_client_rejects_inconsistent_data_and_foreign_proxy_indices(data):
    train, test = data
    learner = TorchLearner(build_model("mlp", (1, 8, 8), 10))
    with pytest.raises(ValueError, match="same length"):
        DistillationClient(learner, train.x[:5], train.y[:4], test.x, test.y, train.x, 10)
    with pytest.raises(ValueError, match="labels must lie"):
        DistillationClient(learner, train.x[:5], train.y[:5] + 10, test.x, test.y, train.x, 10)
    client = _client(data)
    big = ConsensusDistillation(num_proxy=len(client.proxy_x) + 500, num_classes=10,
                                proxy_per_round=len(client.proxy_x) + 500)
    with pytest.raises(ValueError, match="proxy indices out of range"):
        client.train(big.plan(1), DistillationRecipe(warmup_epochs=0))
