"""FedDF: group averaging against hand-computed values, the server's distillation (it lowers
the KL, keeps the best state, stops early), the server half's per-node instructions and
reply checks, the client half on real torch and scikit-learn learners, and config errors."""

from __future__ import annotations

import io
import pickle
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from clients.algorithms.feddf import FedDFClient
from clients.federated_client import FederatedClient
from clients.learners.sklearn_learner import SklearnLearner
from clients.learners.torch_learner import TorchLearner
from clients.models.sklearn_models import build_sklearn_model
from clients.models.zoo import build_model
from flhet_strategies import wire
from flhet_strategies.algorithms.feddf import FedDFServer, group_average
from flhet_strategies.algorithms.recipes import FedDFRecipe
from flhet_strategies.protocol import Instruction, Reply
from flhet_strategies.server_distillation import (
    DistillSettings,
    distill,
    kl_to_ensemble,
    predict_logits,
)
from flhet_strategies.strategies import FedDF
from simulations.config import ConfigError, from_dict

C = 4
SHAPE = (1, 6, 6)
FAST = DistillSettings(max_steps=60, lr=1e-2, batch_size=16, eval_every=10, patience=30)


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, size=n)
    x = (rng.normal(size=(n, *SHAPE)) + y[:, None, None, None]).astype(np.float32)
    return x, y


PROXY_X, PROXY_Y = data(80, 99)
VAL = np.arange(60, 80)
MODELS = {"mlp": partial(build_model, "mlp", SHAPE, C), "cnn_small": partial(
    build_model, "cnn_small", SHAPE, C)}


def server(**options) -> FedDFServer:
    options.setdefault("distillation", FAST)
    return FedDFServer(MODELS, PROXY_X, C, VAL, validation_labels=PROXY_Y[VAL], **options)


def torch_client(arch: str, seed: int) -> FederatedClient:
    x, y = data(40, seed)
    learner = TorchLearner(build_model(arch, SHAPE, C, seed=seed), lr=0.05, batch_size=16,
                           seed=seed)
    return FederatedClient(learner, x[:30], y[:30], x[30:], y[30:], PROXY_X, C, seed=seed)


def sklearn_client(seed: int) -> FederatedClient:
    x, y = data(40, seed)
    learner = SklearnLearner(build_sklearn_model("sgd_logreg", seed=seed), C, seed=seed)
    return FederatedClient(learner, x[:30], y[:30], x[30:], y[30:], PROXY_X, C, seed=seed)


def answer(srv: FedDFServer, rnd: int, clients: dict[str, FederatedClient]) -> list[Reply]:
    """Every client's reply to the server's instruction (the node id is the client id)."""
    replies = []
    for node, instruction in srv.instructions(rnd, list(clients)).items():
        reply = FedDFClient().fit(_with_round(instruction, rnd), clients[node])
        replies.append(Reply(node, reply.arrays, reply.metrics, node_id=node))
    return replies


def _with_round(instruction: Instruction, rnd: int) -> Instruction:
    """The instruction as the face hands it to a client half (with its round)."""
    return Instruction(instruction.arrays, {**instruction.config, wire.SERVER_ROUND: rnd,
                                            wire.ALGORITHM: "feddf"})


# ------------------------------------------------------------------------- group average


def test_group_average_weights_floats_and_takes_the_max_of_integer_buffers() -> None:
    a = {"w": np.array([1.0, 2.0], np.float32), "n": np.array(3, np.int64)}
    b = {"w": np.array([5.0, 10.0], np.float32), "n": np.array(7, np.int64)}
    out = group_average([a, b], [1, 3])
    np.testing.assert_allclose(out["w"], [4.0, 8.0])
    assert out["w"].dtype == np.float32 and out["n"] == 7 and out["n"].dtype == np.int64


# ------------------------------------------------------------------------- distillation


def _linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, C))


def test_distillation_moves_the_student_toward_the_ensemble() -> None:
    teacher = _linear(1)
    x, val = PROXY_X[:60], PROXY_X[60:]
    t, t_val = predict_logits(teacher, x), predict_logits(teacher, val)
    student = _linear(2)
    before = float(kl_to_ensemble(torch.from_numpy(predict_logits(student, val)),
                                  torch.from_numpy(t_val), 1.0))
    info = distill(student, x, t, val, t_val, settings=DistillSettings(
        max_steps=200, lr=1e-2, batch_size=16, eval_every=20, patience=200), seed=0)
    after = float(kl_to_ensemble(torch.from_numpy(predict_logits(student, val)),
                                 torch.from_numpy(t_val), 1.0))
    assert after < 0.2 * before
    assert info["val_best"] == pytest.approx(-after, rel=1e-4) and info["best_step"] > 0


def test_distillation_keeps_the_start_when_nothing_beats_it_and_stops_early() -> None:
    student = _linear(3)
    x, val = PROXY_X[:60], PROXY_X[60:]
    start = {k: v.clone() for k, v in student.state_dict().items()}
    own = np.argmax(predict_logits(student, val), axis=1)     # start scores 1.0 on these
    noise = np.random.default_rng(0).normal(size=(80, C)).astype(np.float32) * 5
    info = distill(student, x, noise[:60], val, noise[60:], val_labels=own,
                   settings=FAST, seed=0)
    assert info["val_start"] == 1.0 and info["best_step"] == 0
    assert info["steps"] == FAST.patience < FAST.max_steps
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, start[k])


def test_distillation_is_seeded_and_refuses_bad_logits() -> None:
    x, val = PROXY_X[:60], PROXY_X[60:]
    t, t_val = predict_logits(_linear(1), x), predict_logits(_linear(1), val)
    a, b = _linear(2), _linear(2)
    distill(a, x, t, val, t_val, settings=FAST, seed=5)
    distill(b, x, t, val, t_val, settings=FAST, seed=5)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])
    with pytest.raises(ValueError, match="not finite"):
        distill(a, x, np.full_like(t, np.nan), val, t_val, settings=FAST)
    with pytest.raises(ValueError, match="teacher logits"):
        distill(a, x, t[:10], val, t_val, settings=FAST)
    with pytest.raises(ValueError, match="positive integer"):
        DistillSettings(max_steps=0)


# ------------------------------------------------------------------------- server half


def test_unknown_nodes_get_every_group_known_nodes_only_theirs() -> None:
    srv = server()
    clients = {"0": torch_client("mlp", 0), "1": torch_client("mlp", 1),
               "2": torch_client("cnn_small", 2), "3": sklearn_client(3)}
    first = srv.instructions(1, list(clients))
    for instruction in first.values():
        assert set(wire.group_models(instruction.arrays)) == {"mlp", "cnn_small"}
        assert wire.PROXY_INDICES in instruction.arrays
    outcome = srv.aggregate(1, answer(srv, 1, clients))
    assert outcome.accepted == ["0", "1", "2", "3"] and outcome.released
    assert srv.node_architecture == {"0": "mlp", "1": "mlp", "2": "cnn_small",
                                     "3": wire.PREDICTIONS_ONLY}
    report = outcome.history["feddf"]
    assert report["teachers"] == 4
    assert report["groups"]["mlp"]["members"] == 2 and report["groups"]["cnn_small"]["members"] == 1
    second = srv.instructions(2, list(clients))
    assert set(wire.group_models(second["0"].arrays)) == {"mlp"}
    assert wire.PROXY_INDICES not in second["0"].arrays
    assert set(wire.group_models(second["2"].arrays)) == {"cnn_small"}
    assert not wire.group_models(second["3"].arrays)
    plan = second["3"].arrays                # the ensemble's predictions to distill on
    assert len(plan[wire.CONSENSUS_INDICES]) == len(srv.pool)
    np.testing.assert_allclose(plan[wire.CONSENSUS].sum(axis=1), 1.0, rtol=1e-5)
    # every node scores its group's distilled model
    evaluate = srv.evaluate_instructions(2, list(clients))
    for key, value in wire.group_models(evaluate["2"].arrays)["cnn_small"].items():
        np.testing.assert_array_equal(value, srv.groups["cnn_small"][key])


def test_the_group_model_is_the_distilled_average_of_its_members() -> None:
    """Without distillation steps that beat the start, a group's model is its FedAvg."""
    srv = server(distillation=DistillSettings(max_steps=1, eval_every=1, patience=1, lr=1e-9))
    clients = {"0": torch_client("mlp", 0), "1": torch_client("mlp", 1)}
    replies = answer(srv, 1, clients)
    expected = group_average([wire.group_models(r.arrays)["mlp"] for r in replies], [30, 30])
    outcome = srv.aggregate(1, replies)
    assert outcome.history["feddf"]["groups"]["mlp"]["steps"] == 1
    for key, value in srv.groups["mlp"].items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("change, reason", [
    (lambda a: a.pop(next(iter(a))), "missing"),
    (lambda a: a.update({wire.model_key("mlp", "extra"): np.zeros(2, np.float32)}), "unexpected"),
    (lambda a: a.update(extra=np.zeros(2, np.float32)), "nothing else"),
    (lambda a: a.update({wire.model_key("cnn_small", "w"): np.zeros(2, np.float32)}),
     "nothing else"),
    (lambda a: a.update({k: np.zeros(3, np.float32) for k in [next(iter(a))]}), "shape"),
    (lambda a: a.update({k: np.full_like(v, np.nan) for k, v in list(a.items())[:1]}),
     "not finite"),
])
def test_a_reply_that_does_not_fit_its_group_is_rejected_with_the_reason(change, reason) -> None:
    srv = server()
    clients = {"0": torch_client("mlp", 0), "1": torch_client("mlp", 1)}
    good, bad = answer(srv, 1, clients)
    change(bad.arrays)
    outcome = srv.aggregate(1, [good, bad])
    assert outcome.accepted == ["0"] and reason in outcome.rejected["1"]
    assert srv.node_architecture == {"0": "mlp"}


def test_an_unknown_architecture_or_wrong_logits_are_rejected() -> None:
    srv = server()
    arrays = {wire.LOGITS: np.zeros((3, C), np.float32)}
    outcome = srv.aggregate(1, [
        Reply("a", {wire.model_key("resnet18", "w"): np.zeros(2, np.float32)},
              {wire.NUM_EXAMPLES: 5}, node_id="a"),
        Reply("b", arrays, {wire.NUM_EXAMPLES: 5}, node_id="b")])
    assert not outcome.accepted and not outcome.released
    assert "no group" in outcome.rejected["a"] and "shape" in outcome.rejected["b"]


def test_local_only_sends_no_model_and_fuses_nothing() -> None:
    srv = server(recipe=FedDFRecipe(use_global_model=False, kd_weight=0.0))
    clients = {"0": torch_client("mlp", 0), "1": torch_client("cnn_small", 1)}
    before = {a: dict(s) for a, s in srv.groups.items()}
    outcome = srv.aggregate(1, answer(srv, 1, clients))
    assert outcome.accepted == ["0", "1"] and not outcome.released
    assert not wire.group_models(srv.instructions(2, ["0"])["0"].arrays)
    for arch, state in before.items():
        for key, value in state.items():
            np.testing.assert_array_equal(srv.groups[arch][key], value)


def test_server_state_round_trips_and_the_strategy_pickles() -> None:
    srv = server()
    srv.aggregate(1, answer(srv, 1, {"0": torch_client("mlp", 0)}))
    fresh = server()
    saved = io.BytesIO()
    np.savez(saved, **srv.state_dict())           # as server_state.npz (no pickles)
    saved.seek(0)
    fresh.load_state_dict(dict(np.load(saved, allow_pickle=False)))
    assert fresh.node_architecture == {"0": "mlp"}
    for key, value in srv.result_arrays().items():
        np.testing.assert_array_equal(fresh.result_arrays()[key], value)
    strategy = FedDF(MODELS, PROXY_X, C, VAL, validation_labels=PROXY_Y[VAL], distillation=FAST)
    assert pickle.loads(pickle.dumps(strategy)) is not None
    with pytest.raises(ValueError, match="DP and secure"):
        FedDF(MODELS, PROXY_X, C, VAL, privacy=object())


@pytest.mark.parametrize("kwargs, match", [
    ({"models": {}}, "at least one architecture"),
    ({"models": {"a/b": MODELS["mlp"]}}, "without '/'"),
    ({"models": {wire.PREDICTIONS_ONLY: MODELS["mlp"]}}, "not 'predictions'"),
    ({"validation_indices": np.array([0, 0])}, "distinct rows"),
    ({"validation_indices": np.arange(80)}, "no proxy rows are left"),
    ({"validation_labels": np.full(20, C)}, "labels in"),
    ({"proxy_per_round": 0}, "proxy_per_round"),
])
def test_bad_server_arguments_are_refused(kwargs, match) -> None:
    args = {"models": MODELS, "proxy_x": PROXY_X, "num_classes": C, "validation_indices": VAL,
            "validation_labels": PROXY_Y[VAL], **kwargs}
    if "validation_indices" in kwargs and "validation_labels" not in kwargs:
        args["validation_labels"] = None
    with pytest.raises(ValueError, match=match):
        FedDFServer(**args)


# ------------------------------------------------------------------------- client half


def test_the_client_trains_its_group_model_and_scores_it_without_losing_its_own() -> None:
    srv = server()
    client = torch_client("mlp", 5)            # its own initial model differs from the group's
    own = client.learner.get_weights()
    instruction = _with_round(srv.instructions(1, ["0"])["0"], 1)
    reply = FedDFClient().fit(instruction, client)
    assert set(wire.group_models(reply.arrays)) == {"mlp"}
    assert set(wire.group_models(reply.arrays)["mlp"]) == set(own)
    # it trained from the group's initial model, not its own
    start = srv.groups["mlp"]
    assert any(not np.allclose(own[k], start[k]) for k in own if own[k].dtype.kind == "f")
    srv.aggregate(1, [Reply("0", reply.arrays, reply.metrics, node_id="0")])
    trained = client.learner.get_weights()
    scored = FedDFClient().evaluate(_with_round(srv.evaluate_instructions(1, ["0"])["0"], 1),
                                    client)
    for key, value in client.learner.get_weights().items():
        np.testing.assert_array_equal(value, trained[key])
    twin = torch_client("mlp", 5)
    twin.learner.set_weights(srv.groups["mlp"])
    assert scored["client_accuracy"] == twin.evaluate()["client_accuracy"]


def test_a_client_whose_architecture_has_no_group_is_told_so() -> None:
    srv = FedDFServer({"cnn_small": MODELS["cnn_small"]}, PROXY_X, C, VAL, distillation=FAST)
    with pytest.raises(ValueError, match="none for this client's architecture 'mlp'"):
        FedDFClient().fit(_with_round(srv.instructions(1, ["0"])["0"], 1), torch_client("mlp", 0))


def test_set_weights_names_what_does_not_fit() -> None:
    learner = torch_client("mlp", 0).learner
    weights = learner.get_weights()
    weights.pop(next(iter(weights)))
    with pytest.raises(ValueError, match="do not fit this mlp model: missing"):
        learner.set_weights(weights)


# ------------------------------------------------------------------------- configuration


def _raw(**changes) -> dict:
    raw = {"name": "t", "data": {"dataset": "digits", "num_clients": 2, "proxy_size": 50,
                                 "proxy_validation_size": 10},
           "strategy": {"name": "feddf"},
           "clients": [{"architecture": "mlp"}, {"architecture": "sklearn:sgd_logreg"}]}
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.mark.parametrize("changes, match", [
    ({"dp": {"enabled": True, "target_epsilon": 8.0}}, r"\[dp\]"),
    ({"clients": [{"architecture": "sklearn:sgd_logreg", "count": 2}]}, "at least one PyTorch"),
    ({"data": {"proxy_validation_size": 0}}, "proxy_validation_size"),
])
def test_feddf_configs_that_cannot_run_are_refused(changes, match) -> None:
    from_dict(_raw())
    with pytest.raises(ConfigError, match=match):
        from_dict(_raw(**changes))


def _through_records(arrays: dict) -> dict:
    from flhet_strategies.faces.records import arrays_to_record, record_to_arrays

    return record_to_arrays(arrays_to_record(arrays))


def _through_parameters(arrays: dict) -> dict:
    from flhet_strategies.faces.records import (
        instruction_from_compat,
        instruction_parameters,
        parameters_arrays,
    )

    parameters, config = instruction_parameters(Instruction(arrays, {}))
    return instruction_from_compat(parameters_arrays(parameters), config).arrays


@pytest.mark.parametrize("transport", [_through_records, _through_parameters])
def test_a_batch_norm_group_model_survives_flowers_types(transport) -> None:
    """BatchNorm's 0-d ``num_batches_tracked`` keeps its shape on both faces' wires."""
    srv = FedDFServer({"cnn_wide": partial(build_model, "cnn_wide", SHAPE, C)}, PROXY_X, C,
                      VAL, distillation=FAST)
    sent = srv.instructions(1, ["0"])["0"]
    client = torch_client("cnn_wide", 0)
    assert any(v.ndim == 0 for v in client.learner.get_weights().values())
    reply = FedDFClient().fit(_with_round(Instruction(transport(sent.arrays), sent.config), 1),
                              client)
    back = Reply("0", transport(reply.arrays), reply.metrics, node_id="0")
    assert srv.aggregate(1, [back]).accepted == ["0"]
