"""LG-FedAvg and FedGH: server halves against hand-computed values, the client half on real
torch models, DP and Paillier on LG-FedAvg's weighted sum, and the errors a user meets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import SGDClassifier

from clients.algorithms.prototypes import class_prototypes
from clients.algorithms.shared_head import FedGHClient, LGFedAvgClient, head_matrix, head_state
from clients.federated_client import FederatedClient
from clients.learners.sklearn_learner import SklearnLearner
from clients.learners.torch_learner import TorchLearner
from clients.models.zoo import build_model
from clients.privacy.dp import DpNoiseStep
from clients.privacy.paillier import PaillierStep
from clients.privacy.step import StepEnv
from flhet_strategies import server_training, wire
from flhet_strategies.aggregation.robust import RobustAggregation
from flhet_strategies.algorithms.recipes import SharedHeadRecipe
from flhet_strategies.algorithms.shared_head import FedGHServer, LGFedAvgServer, initial_head
from flhet_strategies.privacy.dp.budget import RoundBudget
from flhet_strategies.privacy.dp.mechanism import DifferentialPrivacy
from flhet_strategies.privacy.dp.noise_share import noisy_name
from flhet_strategies.privacy.dp.settings import DpSettings
from flhet_strategies.privacy.paillier import KeyHolder
from flhet_strategies.privacy.paillier.secure_sum import SecureSum
from flhet_strategies.protocol import Instruction, Reply
from flhet_strategies.strategies import FedGH, LGFedAvg, lgfedavg_algorithm

C, D = 3, 4
SHAPE = (C, D + 1)


def head_reply(cid: str, head, num_examples: int = 10) -> Reply:
    return Reply(cid, {wire.HEAD: np.asarray(head, dtype=np.float32)},
                 {wire.NUM_EXAMPLES: num_examples, "train_loss": 1.0})


def heads(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=SHAPE).astype(np.float32) for _ in range(n)]


# ------------------------------------------------------------------------- LG-FedAvg server


def test_lgfedavg_head_is_the_sample_weighted_mean() -> None:
    a, b, c = heads(3)
    server = LGFedAvgServer(C, D)
    outcome = server.aggregate(1, [head_reply("2", c, 5), head_reply("0", a, 10),
                                   head_reply("1", b, 30)])
    np.testing.assert_allclose(server.head, (10 * a + 30 * b + 5 * c) / 45, rtol=1e-6)
    assert outcome.accepted == ["0", "1", "2"] and outcome.released
    assert outcome.weights == pytest.approx({"0": 10 / 45, "1": 30 / 45, "2": 5 / 45})
    uniform = LGFedAvgServer(C, D, weighting="uniform")
    uniform.aggregate(1, [head_reply("0", a, 10), head_reply("1", b, 30)])
    np.testing.assert_allclose(uniform.head, (a + b) / 2, rtol=1e-6)


@pytest.mark.parametrize("bad, reason", [
    (head_reply("x", np.zeros((C, D))), "shape"),
    (head_reply("x", np.full(SHAPE, np.inf)), "NaN/Inf"),
    (Reply("x", {wire.HEAD: np.ones(SHAPE, dtype=np.int64)}, {wire.NUM_EXAMPLES: 3}),
     "floating"),
    (head_reply("x", np.ones(SHAPE), num_examples=0), "positive"),
    (Reply("x", {wire.PROTOTYPES: np.ones(SHAPE, np.float32)}, {wire.NUM_EXAMPLES: 3}),
     "no 'head'"),
])
def test_lgfedavg_rejects_a_malformed_reply_and_keeps_the_others(bad: Reply, reason: str) -> None:
    (a,) = heads(1)
    server = LGFedAvgServer(C, D)
    outcome = server.aggregate(1, [bad, head_reply("0", a)])
    assert outcome.accepted == ["0"] and reason in outcome.rejected["x"]
    np.testing.assert_allclose(server.head, a)
    assert not LGFedAvgServer(C, D).aggregate(1, [bad]).released


def test_the_head_travels_as_the_round_and_the_recipe_say() -> None:
    server = LGFedAvgServer(C, D, SharedHeadRecipe(local_epochs=2), seed=5)
    first = server.instructions(1, ["a", "b"])
    init = first["a"].arrays[wire.GLOBAL_HEAD]
    np.testing.assert_array_equal(init, first["b"].arrays[wire.GLOBAL_HEAD])
    np.testing.assert_array_equal(init, initial_head(C, D, 5))
    assert not np.array_equal(init, initial_head(C, D, 6))
    assert np.abs(init).max() <= 1 / math.sqrt(D) and first["a"].config["local-epochs"] == 2
    # Before a release (e.g. under a secure sum) nothing stale goes out after round 1.
    assert not server.instructions(2, ["a"])["a"].arrays
    assert not server.evaluate_instructions(1, ["a"])["a"].arrays
    (a,) = heads(1)
    server.aggregate(1, [head_reply("0", a)])
    np.testing.assert_array_equal(server.evaluate_instructions(1, ["a"])["a"].arrays[
        wire.GLOBAL_HEAD], a)
    np.testing.assert_array_equal(server.instructions(2, ["a"])["a"].arrays[wire.GLOBAL_HEAD], a)
    local = LGFedAvgServer(C, D, SharedHeadRecipe(use_global_head=False))
    local.aggregate(1, [head_reply("0", a)])
    assert not local.instructions(1, ["a"])["a"].arrays
    assert not local.instructions(2, ["a"])["a"].arrays
    assert not local.evaluate_instructions(2, ["a"])["a"].arrays


def test_server_state_round_trips() -> None:
    (a,) = heads(1)
    server = LGFedAvgServer(C, D)
    server.aggregate(1, [head_reply("0", a)])
    again = LGFedAvgServer(C, D, seed=3)
    again.load_state_dict(server.state_dict())
    np.testing.assert_array_equal(again.head, a)
    assert again.instructions(4, ["n"])["n"].arrays          # a released head is sent
    with pytest.raises(ValueError, match="shape"):
        LGFedAvgServer(C, D + 1).load_state_dict(server.state_dict())


# ------------------------------------------------------------------------- FedGH server


def proto_reply(cid: str, protos, counts, num_examples: int = 12) -> Reply:
    return Reply(cid, {wire.PROTOTYPES: np.asarray(protos, dtype=np.float32),
                       wire.CLASS_COUNTS: np.asarray(counts, dtype=np.int64)},
                 {wire.NUM_EXAMPLES: num_examples})


def separated_uploads(seed: int = 0, clients: int = 3) -> tuple[np.ndarray, list[Reply]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(C, D)) * 4
    return centres, [proto_reply(str(i), centres + rng.normal(size=(C, D)) * 0.3, [5, 5, 5])
                     for i in range(clients)]


def cross_entropy(head: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    logits = torch.as_tensor(x @ head[:, :-1].T + head[:, -1])
    return float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(y)))


def test_fedgh_trains_a_head_that_classifies_the_uploaded_prototypes() -> None:
    centres, replies = separated_uploads()
    server = FedGHServer(C, D, server_epochs=30, server_batch_size=4, server_lr=0.1, seed=1)
    start = server.head.copy()
    uploads = np.concatenate([r.arrays[wire.PROTOTYPES] for r in replies])
    labels = np.tile(np.arange(C), 3)
    outcome = server.aggregate(1, replies)
    assert outcome.released and outcome.accepted == ["0", "1", "2"]
    head = server.head
    np.testing.assert_array_equal((uploads @ head[:, :-1].T + head[:, -1]).argmax(1), labels)
    assert cross_entropy(head, uploads, labels) < 0.5 * cross_entropy(start, uploads, labels)
    assert outcome.metrics["gh-loss"] == pytest.approx(cross_entropy(head, uploads, labels),
                                                       abs=0.05)
    # Deterministic from the seed and the round; a restored server continues identically.
    again = FedGHServer(C, D, server_epochs=30, server_batch_size=4, server_lr=0.1, seed=1)
    again.load_state_dict(server.state_dict())
    server.aggregate(2, replies)
    again.aggregate(2, replies)
    np.testing.assert_array_equal(again.head, server.head)


def test_fedgh_trains_on_held_classes_only_and_rejects_malformed_replies(monkeypatch) -> None:
    seen = []
    real = server_training.train_head

    def recording(head, prototypes, labels, **kw):
        seen.append((np.asarray(prototypes), np.asarray(labels)))
        return real(head, prototypes, labels, **kw)

    monkeypatch.setattr(server_training, "train_head", recording)
    centres, _ = separated_uploads()
    lacking = centres.copy()
    lacking[1] = 0.0
    server = FedGHServer(C, D, server_epochs=2)
    outcome = server.aggregate(1, [proto_reply("0", centres, [1, 2, 3]),
                                   proto_reply("1", lacking, [4, 0, 4]),
                                   proto_reply("bad", np.zeros((C, D + 1)), [1, 1, 1]),
                                   proto_reply("none", centres, [0, 0, 0])])
    assert outcome.accepted == ["0", "1"]
    assert "shape" in outcome.rejected["bad"] and "all zero" in outcome.rejected["none"]
    protos, labels = seen[0]
    assert labels.tolist() == [0, 1, 2, 0, 2]
    np.testing.assert_array_equal(protos[3:], centres[[0, 2]].astype(np.float32))


def test_train_head_leaves_its_input_and_improves_the_loss() -> None:
    centres, replies = separated_uploads(seed=2)
    x = np.concatenate([r.arrays[wire.PROTOTYPES] for r in replies])
    y = np.tile(np.arange(C), 3)
    start = initial_head(C, D, 0)
    kept = start.copy()
    head, losses = server_training.train_head(start, x, y, epochs=20, batch_size=4, lr=0.1,
                                              seed=7)
    np.testing.assert_array_equal(start, kept)
    assert head.shape == SHAPE and head.dtype == np.float32 and len(losses) == 20
    assert losses[-1] < 0.5 * losses[0]
    same, _ = server_training.train_head(start, x, y, epochs=20, batch_size=4, lr=0.1, seed=7)
    other, _ = server_training.train_head(start, x, y, epochs=20, batch_size=4, lr=0.1, seed=8)
    np.testing.assert_array_equal(head, same)
    assert not np.array_equal(head, other)
    with pytest.raises(ValueError, match="labels out of range"):
        server_training.train_head(start, x, y + 1, epochs=1, batch_size=4, lr=0.1, seed=0)


# ------------------------------------------------------------------------- client halves


def _client(feature_dim: int | None = D, seed: int = 0) -> FederatedClient:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, size=90)
    x = (rng.normal(size=(90, 1, 6, 6)) + 2 * y[:, None, None, None]).astype(np.float32)
    model = build_model("mlp", (1, 6, 6), C, seed=seed, feature_dim=feature_dim)
    learner = TorchLearner(model, lr=0.05, batch_size=16, seed=seed)
    return FederatedClient(learner, x[:60], y[:60], x[60:], y[60:], None, C, seed=seed)


def _instruction(head: np.ndarray | None, algorithm: str = "lgfedavg",
                 **recipe) -> Instruction:
    arrays = {} if head is None else {wire.GLOBAL_HEAD: np.asarray(head, dtype=np.float32)}
    return Instruction(arrays, {**SharedHeadRecipe(**recipe).to_config(),
                                wire.SERVER_ROUND: 2, wire.ALGORITHM: algorithm})


def test_the_client_loads_the_global_head_trains_it_and_sends_it() -> None:
    glob = initial_head(C, D, 9)
    client = _client()
    untouched = LGFedAvgClient().fit(_instruction(glob, local_epochs=0), client)
    np.testing.assert_array_equal(untouched.arrays[wire.HEAD], glob)
    assert untouched.metrics[wire.NUM_EXAMPLES] == 60
    own = head_matrix(_client().learner.get_head())
    alone = LGFedAvgClient().fit(_instruction(glob, local_epochs=0, use_global_head=False),
                                 _client())
    np.testing.assert_array_equal(alone.arrays[wire.HEAD], own)
    trained = LGFedAvgClient().fit(_instruction(glob, local_epochs=3), _client())
    assert trained.arrays[wire.HEAD].shape == SHAPE
    assert 0 < np.abs(trained.arrays[wire.HEAD] - glob).max() < 1.0


def test_scoring_uses_the_global_head_and_leaves_the_model_alone() -> None:
    client = _client()
    LGFedAvgClient().fit(_instruction(None, local_epochs=20), client)
    own = head_matrix(client.learner.get_head())
    mine = LGFedAvgClient().evaluate(_instruction(own), client)
    wrong = LGFedAvgClient().evaluate(_instruction(own[[1, 2, 0]]), client)   # rows permuted
    plain = LGFedAvgClient().evaluate(_instruction(None), client)
    assert mine["client_accuracy"] == plain["client_accuracy"] > 0.9 > 0.2 > wrong["client_accuracy"]
    np.testing.assert_array_equal(head_matrix(client.learner.get_head()), own)
    off = LGFedAvgClient().evaluate(_instruction(own[[1, 2, 0]], use_global_head=False), client)
    assert off["client_accuracy"] == plain["client_accuracy"]


def test_the_fedgh_client_uploads_its_class_prototypes_after_training() -> None:
    client = _client()
    reply = FedGHClient().fit(_instruction(initial_head(C, D, 1), "fedgh", local_epochs=2),
                              client)
    means, counts = class_prototypes(client.learner.embed(client.x_train), client.y_train, C)
    np.testing.assert_allclose(reply.arrays[wire.PROTOTYPES], means, rtol=1e-6)
    np.testing.assert_array_equal(reply.arrays[wire.CLASS_COUNTS], counts)
    server = FedGHServer(C, D, server_epochs=2)
    assert server.aggregate(1, [Reply("0", reply.arrays, reply.metrics)]).accepted == ["0"]


def test_head_matrix_round_trips_and_refuses_other_heads() -> None:
    state = _client().learner.get_head()
    back = head_state(head_matrix(state))
    for key in ("weight", "bias"):
        np.testing.assert_array_equal(back[key], state[key])
    with pytest.raises(ValueError, match="one linear layer with a bias"):
        head_matrix({"weight": state["weight"]})


def test_a_learner_that_cannot_embed_gets_a_clear_error() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 1, 6, 6)).astype(np.float32), rng.integers(0, C, 20)
    client = FederatedClient(SklearnLearner(SGDClassifier(loss="log_loss"), C), x, y, x, y,
                             None, C)
    with pytest.raises(TypeError, match="LG-FedAvg needs a learner that can embed.*Sklearn"):
        LGFedAvgClient().fit(_instruction(None), client)
    with pytest.raises(TypeError, match="FedGH needs a learner that can embed"):
        FedGHClient().fit(_instruction(None, "fedgh"), client)


def test_a_head_of_the_wrong_width_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"global head has shape \(3, 5\).*\(3, 9\).*feature_dim"):
        LGFedAvgClient().fit(_instruction(initial_head(C, D, 0)), _client(feature_dim=8))


# ------------------------------------------------------------------------- privacy on LG-FedAvg


def test_central_dp_releases_the_uniform_mean_plus_z_times_the_bound() -> None:
    hs = heads(4, seed=3)
    replies = [head_reply(str(i), h, 10 * (i + 1)) for i, h in enumerate(hs)]
    # A bound that clips nothing and vanishing noise: the uniform mean.
    quiet = lgfedavg_algorithm(C, D, privacy=DpSettings(1e-9, 100.0, "central", "flat", seed=0),
                               population=4)
    assert quiet.innermost.weighting == "uniform"
    outcome = quiet.aggregate(1, replies)
    np.testing.assert_allclose(quiet.innermost.head, np.mean(hs, axis=0), atol=1e-5)
    assert outcome.privacy["released_rows"] == C and outcome.privacy["epsilon"] > 0
    # Per-row clipping at r: S = r sqrt(C); the released sum carries N(0, (z S)^2).
    z, r = 0.5, 0.2
    noisy = DifferentialPrivacy(LGFedAvgServer(C, D, weighting="uniform"),
                                DpSettings(z, r, "central", "per-row", seed=1), population_size=4)
    clipped = sum(h * np.minimum(1.0, r / np.linalg.norm(h, axis=1, keepdims=True)) for h in hs)
    noise = []
    for server_round in range(1, 201):
        noisy.aggregate(server_round, replies)
        noise.append(noisy.innermost.head * 4 - clipped)
    assert np.std(noise) == pytest.approx(z * r * math.sqrt(C), rel=0.05)
    assert abs(np.mean(noise)) < 4 * z * r * math.sqrt(C) / math.sqrt(np.size(noise))
    with pytest.raises(ValueError, match="uniform"):
        lgfedavg_algorithm(C, D, weighting="sample_count", privacy=DpSettings(1.0))
    with pytest.raises(ValueError, match="sample_count"):
        DifferentialPrivacy(LGFedAvgServer(C, D), DpSettings(1.0))


def test_distributed_dp_shares_add_up_to_the_noisy_mean() -> None:
    hs = heads(4, seed=4)
    strategy = LGFedAvg(C, D, privacy=DpSettings(1e-6, 100.0, "distributed", "flat"),
                        privacy_budget=RoundBudget(4, non_negative_payloads=False),
                        min_available_nodes=4)
    server = strategy.algorithm
    nodes = [str(i) for i in range(4)]
    assert server.round_allowed(1, 4)
    instructions = server.instructions(1, nodes)
    assert wire.GLOBAL_HEAD in instructions["0"].arrays
    replies = []
    for i, h in enumerate(hs):
        step = DpNoiseStep(rng=np.random.default_rng(i))
        before, memo = step.before(instructions[str(i)], StepEnv(), "train")
        replies.append(step.after(before, memo, head_reply(str(i), h), StepEnv(), "train"))
    assert all(set(r.arrays) == {noisy_name(wire.HEAD)} for r in replies)
    outcome = server.aggregate(1, replies)
    assert outcome.released and outcome.accepted == nodes
    np.testing.assert_allclose(server.innermost.head, np.mean(hs, axis=0), atol=1e-4)
    np.testing.assert_allclose(server.evaluate_instructions(1, ["0"])["0"].arrays[
        wire.GLOBAL_HEAD], server.innermost.head)


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.generate()


def test_paillier_gives_every_client_the_weighted_mean_head(holder) -> None:
    hs = heads(3, seed=5)
    hs[0][0, 0] = 9.0                                   # beyond the public bound: clipped
    counts = [20, 50, 30]
    server = SecureSum(LGFedAvgServer(C, D), holder.public_key, max_examples=100,
                       decryption="every_client")
    steps = [PaillierStep(key_holder=holder) for _ in hs]
    nodes = ["0", "1", "2"]

    def client_round(server_round: int) -> list[Instruction]:
        """The instructions each client half gets (after its step), then the aggregate."""
        instructions = server.instructions(server_round, nodes)
        seen, replies = [], []
        for i, node in enumerate(nodes):
            before, memo = steps[i].before(instructions[node], StepEnv(), "train")
            seen.append(before)
            replies.append(steps[i].after(before, memo, head_reply(node, hs[i], counts[i]),
                                          StepEnv(), "train"))
        assert all(set(r.arrays) == {wire.ENCRYPTED_SHARE} for r in replies)
        assert server.aggregate(server_round, replies).accepted == nodes
        return seen

    first = client_round(1)
    np.testing.assert_array_equal(first[0].arrays[wire.GLOBAL_HEAD], initial_head(C, D, 0))
    assert wire.GLOBAL_HEAD not in server.inner.instructions(2, nodes)["0"].arrays  # none held
    second = client_round(2)
    clipped = [np.clip(h, -4.0, 4.0) for h in hs]
    expected = sum(n * h for n, h in zip(counts, clipped)) / sum(counts)
    step = 8.0 / (2 ** 16 - 1)                          # 16 bits over [-4, 4]
    for instruction in second:
        got = instruction.arrays[wire.GLOBAL_HEAD]
        assert got.shape == SHAPE and np.abs(got - expected).max() <= step / 2 + 1e-6
    np.testing.assert_array_equal(server.innermost.head, initial_head(C, D, 0))  # never formed


def test_the_robust_wrapper_applies_to_the_head_sum() -> None:
    hs = heads(3, seed=6)
    poisoned = np.full(SHAPE, 100.0, dtype=np.float32)
    server = RobustAggregation(LGFedAvgServer(C, D), rule="median")
    server.aggregate(1, [head_reply(str(i), h) for i, h in enumerate(hs + [poisoned])])
    assert np.abs(server.innermost.head).max() <= np.abs(np.stack(hs)).max()


def test_fedgh_refuses_privacy_it_cannot_have() -> None:
    with pytest.raises(ValueError, match="FedGH trains its head on every client's prototypes"):
        FedGH(C, D, privacy=DpSettings(1.0))
    with pytest.raises(TypeError, match="weighted sum"):
        DifferentialPrivacy(FedGHServer(C, D), DpSettings(1.0))
