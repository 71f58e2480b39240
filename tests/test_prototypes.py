"""FedProto and FedTGP: server halves against hand-computed values, the client half on
real torch models, and the errors a user meets (a learner that cannot embed, a feature
space of the wrong width, malformed replies)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import SGDClassifier

from clients.algorithms.prototypes import (
    MASK_STATE,
    PROTOTYPES_STATE,
    PrototypeClient,
    class_prototypes,
    nearest_prototype_scores,
    prototype_loss,
)
from clients.federated_client import FederatedClient
from clients.learners.sklearn_learner import SklearnLearner
from clients.learners.torch_learner import TorchLearner
from clients.models.zoo import build_model
from flhet_strategies import wire
from flhet_strategies.algorithms.prototypes import FedProtoServer, FedTGPServer
from flhet_strategies.algorithms.recipes import PrototypeRecipe
from flhet_strategies.protocol import Instruction, Reply

C, D = 3, 2


def reply(cid: str, protos, counts, num_examples: int | None = None) -> Reply:
    counts = np.asarray(counts, dtype=np.int64)
    return Reply(cid, {wire.PROTOTYPES: np.asarray(protos, dtype=np.float32),
                       wire.CLASS_COUNTS: counts},
                 {wire.NUM_EXAMPLES: int(counts.sum()) if num_examples is None else num_examples})


A = np.array([[1.0, 2.0], [0.0, 0.0], [4.0, -2.0]])
B = np.array([[3.0, 0.0], [5.0, 5.0], [0.0, 0.0]])


def test_fedproto_global_prototypes_are_count_weighted_class_means() -> None:
    server = FedProtoServer(C, D)
    outcome = server.aggregate(1, [reply("0", A, [2, 0, 1]), reply("1", B, [1, 3, 0])])
    protos, mask = server.prototypes
    np.testing.assert_allclose(protos[0], (2 * A[0] + 1 * B[0]) / 3, rtol=1e-6)
    np.testing.assert_allclose(protos[1], B[1])
    np.testing.assert_allclose(protos[2], A[2])
    assert mask.tolist() == [True, True, True]
    assert outcome.accepted == ["0", "1"] and outcome.released
    assert outcome.weights == pytest.approx({"0": 3 / 7, "1": 4 / 7})


def test_fedproto_presence_weights_average_clients_and_absent_classes_have_no_prototype() -> None:
    server = FedProtoServer(C, D, weighting="class_presence")
    server.aggregate(1, [reply("0", A, [2, 0, 0]), reply("1", B, [1, 3, 0])])
    protos, mask = server.prototypes
    np.testing.assert_allclose(protos[0], (A[0] + B[0]) / 2)
    assert mask.tolist() == [True, True, False]
    np.testing.assert_array_equal(protos[2], 0.0)
    instruction = server.instructions(2, ["7"])["7"]
    np.testing.assert_array_equal(instruction.arrays[wire.PROTOTYPE_MASK], [1, 1, 0])
    assert instruction.config["proto-weight"] == 1.0


@pytest.mark.parametrize("bad, reason", [
    (reply("x", np.zeros((C, D + 1)), [1, 1, 1]), "shape"),
    (reply("x", np.full((C, D), np.nan), [1, 1, 1]), "NaN"),
    (reply("x", A, [1, -1, 1]), "non-negative"),
    (reply("x", A, [0, 0, 0], num_examples=5), "all zero"),
    (reply("x", A, [1, 1, 1], num_examples=0), "positive"),
    (Reply("x", {wire.CLASS_COUNTS: np.ones(C)}, {wire.NUM_EXAMPLES: 3}), "no 'prototypes'"),
    (Reply("x", {wire.PROTOTYPES: A.astype(np.float32)}, {wire.NUM_EXAMPLES: 3}), "class_counts"),
])
def test_fedproto_rejects_a_malformed_reply_and_keeps_the_others(bad: Reply, reason: str) -> None:
    server = FedProtoServer(C, D)
    outcome = server.aggregate(1, [bad, reply("0", A, [1, 0, 1])])
    assert outcome.accepted == ["0"] and reason in outcome.rejected["x"]
    np.testing.assert_allclose(server.prototypes[0][0], A[0])


def test_fedtgp_trains_global_prototypes_nearest_to_their_classes() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 4
    replies = [reply(str(i), centres + rng.normal(size=(4, 8)) * 0.3, [5, 5, 5, 5])
               for i in range(3)]
    server = FedTGPServer(4, 8, server_epochs=60, server_batch_size=4, seed=1)
    outcome = server.aggregate(1, replies)
    protos, mask = server.prototypes
    assert mask.all() and outcome.metrics["tgp-margin"] > 0
    uploads = np.concatenate([r.arrays[wire.PROTOTYPES] for r in replies])
    nearest = nearest_prototype_scores(uploads, protos, mask).argmax(axis=1)
    np.testing.assert_array_equal(nearest, np.tile(np.arange(4), 3))
    again = FedTGPServer(4, 8, server_epochs=60, server_batch_size=4, seed=1)
    again.load_state_dict(server.state_dict())
    np.testing.assert_array_equal(again.prototypes[0], protos)


def test_prototype_loss_is_lambda_times_the_batch_mean_squared_error() -> None:
    features = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 3.0]])
    labels = torch.tensor([0, 1, 2])
    protos = np.array([[0.0, 0.0], [0.0, 3.0], [9.0, 9.0]])
    mask = np.array([True, True, False])     # class 2 has no prototype: no pull
    loss = prototype_loss(protos, mask, 2.0)(features, None, labels)
    expected = 2.0 * ((1 + 4) + (0 + 4)) / 6  # sum over covered rows / (batch * dims)
    assert float(loss) == pytest.approx(expected)


def test_class_prototypes_are_per_class_mean_features() -> None:
    features = np.array([[1.0, 1.0], [3.0, 5.0], [10.0, 0.0]])
    means, counts = class_prototypes(features, np.array([0, 0, 2]), 3)
    np.testing.assert_allclose(means, [[2.0, 3.0], [0.0, 0.0], [10.0, 0.0]])
    assert counts.tolist() == [2, 0, 1]


def _client(feature_dim: int | None = 8, seed: int = 0) -> FederatedClient:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, size=90)
    x = (rng.normal(size=(90, 1, 6, 6)) + 2 * y[:, None, None, None]).astype(np.float32)
    model = build_model("mlp", (1, 6, 6), C, seed=seed, feature_dim=feature_dim)
    learner = TorchLearner(model, lr=0.01, batch_size=16, seed=seed)
    return FederatedClient(learner, x[:60], y[:60], x[60:], y[60:], None, C, seed=seed)


def _instruction(protos: np.ndarray, mask, weight: float, inference: str = "head"
                 ) -> Instruction:
    recipe = PrototypeRecipe(local_epochs=3, proto_weight=weight, inference=inference)
    return Instruction({wire.GLOBAL_PROTOTYPES: protos.astype(np.float32),
                        wire.PROTOTYPE_MASK: np.asarray(mask, dtype=np.uint8)},
                       {**recipe.to_config(), wire.SERVER_ROUND: 2, wire.ALGORITHM: "fedproto"})


def test_client_half_trains_towards_the_global_prototypes() -> None:
    target = np.zeros((C, 8))
    target[:, 0] = [5.0, -5.0, 0.0]
    pulled, free = _client(), _client()
    r1 = PrototypeClient().fit(_instruction(target, [1, 1, 1], 5.0), pulled)
    r0 = PrototypeClient().fit(_instruction(target, [1, 1, 1], 0.0), free)
    counts = pulled.class_counts
    assert r1.arrays[wire.PROTOTYPES].shape == (C, 8)
    np.testing.assert_array_equal(r1.arrays[wire.CLASS_COUNTS], counts)
    held = counts > 0
    dist = lambda r: np.linalg.norm(r.arrays[wire.PROTOTYPES][held] - target[held])  # noqa: E731
    assert dist(r1) < 0.6 * dist(r0)
    assert "aux_loss" in r1.metrics and "aux_loss" not in r0.metrics
    np.testing.assert_array_equal(pulled.state[PROTOTYPES_STATE], target.astype(np.float32))


def test_prototype_inference_predicts_the_nearest_global_prototype() -> None:
    client = _client()
    PrototypeClient().fit(_instruction(np.zeros((C, 8)), [0, 0, 0], 0.0), client)
    learner = client.learner
    means, _ = class_prototypes(learner.embed(client.x_train), client.y_train, C)
    client.state[PROTOTYPES_STATE], client.state[MASK_STATE] = means, np.ones(C, np.uint8)
    right = PrototypeClient().evaluate(_instruction(means, [1, 1, 1], 1.0, "prototype"), client)
    client.state[PROTOTYPES_STATE] = means[[1, 2, 0]]      # prototypes of the wrong classes
    wrong = PrototypeClient().evaluate(_instruction(means, [1, 1, 1], 1.0, "prototype"), client)
    head = PrototypeClient().evaluate(_instruction(means, [1, 1, 1], 1.0, "head"), client)
    assert right["client_accuracy"] > 0.8 > wrong["client_accuracy"]
    assert head["client_accuracy"] == pytest.approx(client.evaluate()["client_accuracy"])


def test_a_learner_that_cannot_embed_gets_a_clear_error() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 1, 6, 6)).astype(np.float32), rng.integers(0, C, 20)
    client = FederatedClient(SklearnLearner(SGDClassifier(loss="log_loss"), C), x, y, x, y,
                             None, C)
    with pytest.raises(TypeError, match="FedProto needs a learner that can embed.*SklearnLearner"):
        PrototypeClient().fit(_instruction(np.zeros((C, 8)), [0, 0, 0], 1.0), client)


def test_a_feature_space_of_the_wrong_width_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="16-dimensional but the global prototypes are "
                                         "8-dimensional.*feature_dim"):
        PrototypeClient().fit(_instruction(np.zeros((C, 8)), [0, 0, 0], 1.0),
                              _client(feature_dim=16))
