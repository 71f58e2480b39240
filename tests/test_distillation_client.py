"""The API-neutral client half: one round of the protocol on real data."""

import numpy as np
import pytest
import torch

from clients.algorithms.consensus import ConsensusClient
from clients.federated_client import DistillationClient, FederatedClient
from clients.learners.torch_learner import TorchLearner
from clients.models.zoo import build_model
from flhet_strategies import wire
from flhet_strategies.algorithms.consensus import ConsensusDistillation
from flhet_strategies.algorithms.recipes import DistillationRecipe
from flhet_strategies.protocol import Instruction, Reply
from simulations.data.loaders import load_dataset

train_round = ConsensusClient.train


@pytest.fixture(scope="module")
def data():
    train, test, _ = load_dataset("digits")
    return train, test


def _client(data, seed=0, arch="cnn_small"):
    torch.set_num_threads(1)
    train, test = data
    learner = TorchLearner(build_model(arch, (1, 8, 8), 10, seed=seed), lr=0.05, seed=seed)
    mask, tmask = train.y[:900] < 6, test.y < 6  # a client that only has digits 0..5
    return FederatedClient(learner, train.x[:900][mask], train.y[:900][mask],
                           test.x[tmask], test.y[tmask], proxy_x=train.x[900:],
                           num_classes=10, global_test=(test.x, test.y), seed=seed)


def test_round_one_trains_privately_and_answers_on_requested_proxy(data):
    client = _client(data)
    proto = ConsensusDistillation(num_proxy=len(client.proxy_x), num_classes=10, proxy_per_round=100)
    reply = train_round(proto.plan(1), DistillationRecipe(warmup_epochs=1), client)
    logits, counts = reply.arrays[wire.LOGITS], reply.arrays[wire.CLASS_COUNTS]
    assert set(reply.arrays) == {wire.LOGITS, wire.CLASS_COUNTS}
    assert logits.shape == (100, 10) and logits.dtype == np.float32
    assert reply.num_examples == len(client.x_train) == client.num_examples
    np.testing.assert_array_equal(counts[6:], 0)
    assert counts.dtype == np.int64 and counts.sum() == len(client.x_train)
    assert reply.metrics["kd_loss"] == 0.0
    m = client.evaluate()
    assert 0 <= m["global_accuracy"] < m["client_accuracy"] <= 1  # global has unseen classes


def test_consensus_from_a_client_that_knows_other_classes_raises_global_accuracy(data):
    train, _ = data
    learner_client = _client(data, seed=1)
    proto = ConsensusDistillation(num_proxy=len(learner_client.proxy_x), num_classes=10,
                                  proxy_per_round=len(learner_client.proxy_x))
    recipe = DistillationRecipe(warmup_epochs=2, kd_weight=1.0)
    train_round(proto.plan(1), recipe, learner_client)
    alone = learner_client.evaluate()["global_accuracy"]
    # An oracle peer that knows all ten classes (its logits are the true labels).
    oracle = np.eye(10, dtype=np.float32)[train.y[900:]] * 10
    for r in (1, 2, 3):
        idx = proto.proxy_indices(r)
        mine = train_round(proto.plan(r), recipe, learner_client) if r > 1 else None
        replies = [Reply("oracle", {wire.LOGITS: oracle[idx], wire.CLASS_COUNTS: np.full(10, 500)},
                         {wire.NUM_EXAMPLES: 5000})]
        if mine is not None:
            replies.append(Reply("me", mine.arrays, mine.metrics))
        assert proto.aggregate(r, replies).accepted == (["oracle"] if mine is None
                                                        else ["me", "oracle"])
    train_round(proto.plan(4), recipe, learner_client)
    assert learner_client.evaluate()["global_accuracy"] > alone + 0.2


def test_sequential_schedule_and_final_private_epochs_run(data):
    client = _client(data, arch="mlp")
    proto = ConsensusDistillation(num_proxy=len(client.proxy_x), num_classes=10, proxy_per_round=50)
    r1 = train_round(proto.plan(1), DistillationRecipe(), client)
    r1.client_id = "0"
    assert proto.aggregate(1, [r1]).accepted == ["0"]
    recipe = DistillationRecipe(schedule="sequential", final_round=True, final_private_epochs=1)
    reply = train_round(proto.plan(2), recipe, client)
    assert reply.metrics["kd_loss"] > 0 and reply.arrays[wire.LOGITS].shape == (50, 10)


def test_fit_reads_the_plan_and_recipe_from_the_instruction(data):
    recipe = DistillationRecipe(warmup_epochs=1)
    proto = ConsensusDistillation(num_proxy=len(_client(data).proxy_x), num_classes=10,
                                  proxy_per_round=40, recipe=recipe)
    ins = proto.instructions(1, ["0"])["0"]
    ins.config[wire.SERVER_ROUND] = 1
    direct = train_round(proto.plan(1), recipe, _client(data))
    via_fit = ConsensusClient().fit(ins, _client(data))
    np.testing.assert_array_equal(via_fit.arrays[wire.LOGITS], direct.arrays[wire.LOGITS])
    assert via_fit.metrics == direct.metrics
    with pytest.raises(ValueError, match="missing"):
        ConsensusClient().fit(Instruction({}, ins.config), _client(data))


def test_client_rejects_inconsistent_data_and_foreign_proxy_indices(data):
    train, test = data
    learner = TorchLearner(build_model("mlp", (1, 8, 8), 10))
    assert DistillationClient is FederatedClient
    with pytest.raises(ValueError, match="same length"):
        FederatedClient(learner, train.x[:5], train.y[:4], test.x, test.y, train.x, 10)
    with pytest.raises(ValueError, match="labels must lie"):
        FederatedClient(learner, train.x[:5], train.y[:5] + 10, test.x, test.y, train.x, 10)
    client = _client(data)
    big = ConsensusDistillation(num_proxy=len(client.proxy_x) + 500, num_classes=10,
                                proxy_per_round=len(client.proxy_x) + 500)
    with pytest.raises(ValueError, match="proxy indices out of range"):
        train_round(big.plan(1), DistillationRecipe(warmup_epochs=0), client)
