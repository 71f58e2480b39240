"""PyTorch and scikit-learn learners on real data (scikit-learn digits), feature learners."""

import numpy as np
import pytest
import torch

from clients.learners.base import DistillTarget, FeatureLearner, Learner, require_features
from clients.learners.free_rider import FreeRiderLearner
from clients.learners.sklearn_learner import SklearnLearner
from clients.learners.torch_learner import TorchLearner
from clients.models.sklearn_models import build_sklearn_model
from clients.models.split import SplitModel
from clients.models.zoo import build_model
from simulations.data.loaders import load_dataset


@pytest.fixture(scope="module")
def digits():
    train, test, num_classes = load_dataset("digits")
    return train, test, num_classes


def _accuracy(learner, x, y):
    return float((learner.predict_logits(x).argmax(1) == y).mean())


def _torch(seed=0, arch="cnn_small"):
    torch.set_num_threads(1)
    return TorchLearner(build_model(arch, (1, 8, 8), 10, seed=seed), lr=0.05, seed=seed)


def test_learners_satisfy_the_protocol():
    assert isinstance(_torch(), Learner)
    assert isinstance(SklearnLearner(build_sklearn_model("sgd_logreg"), 10), Learner)


def test_torch_learner_learns_digits(digits):
    train, test, _ = digits
    learner = _torch()
    before = _accuracy(learner, test.x, test.y)
    metrics = learner.train(train.x, train.y, epochs=3)
    after = _accuracy(learner, test.x, test.y)
    assert after > 0.85 > before + 0.5
    assert metrics["kd_loss"] == 0.0 and metrics["train_loss"] > 0


def test_torch_distill_moves_predictions_towards_targets(digits):
    train, _, _ = digits
    learner = _torch(arch="mlp")
    x = train.x[:256]
    # Teacher that consistently renames every digit d as (d + 3) mod 10.
    targets = np.eye(10, dtype=np.float32)[(train.y[:256] + 3) % 10]
    before = float((learner.predict_logits(x).argmax(1) == targets.argmax(1)).mean())
    learner.distill(DistillTarget(x, targets, weight=1.0, temperature=1.0), epochs=20)
    after = float((learner.predict_logits(x).argmax(1) == targets.argmax(1)).mean())
    assert after > 0.9 and before < 0.3


def test_joint_training_reports_kd_loss_and_uses_proxy(digits):
    train, _, _ = digits
    learner = _torch()
    probs = np.full((200, 10), 0.1, dtype=np.float32)
    m = learner.train(train.x[:300], train.y[:300], 1,
                      distill=DistillTarget(train.x[300:500], probs, 0.5, 2.0))
    assert m["kd_loss"] > 0


def test_torch_state_round_trip_and_strict_shapes(digits):
    train, test, _ = digits
    a = _torch(seed=1)
    a.train(train.x, train.y, epochs=1)
    b = _torch(seed=2)
    b.set_state(a.get_state())
    np.testing.assert_allclose(a.predict_logits(test.x), b.predict_logits(test.x), atol=1e-6)
    other = TorchLearner(build_model("mlp", (1, 8, 8), 10))
    with pytest.raises(RuntimeError):
        other.set_state(a.get_state())


def test_torch_learner_rejects_bad_settings():
    with pytest.raises(ValueError, match="optimizer"):
        TorchLearner(build_model("mlp", (1, 8, 8), 10), optimizer="lion")
    with pytest.raises(ValueError, match="inputs but"):
        _torch().train(np.zeros((3, 1, 8, 8), np.float32), np.zeros(2, np.int64), 1)


def test_sklearn_learner_learns_and_pseudo_labels_teach_unseen_classes(digits):
    train, test, _ = digits
    only_low = train.y < 5  # this client never saw digits 5..9
    learner = SklearnLearner(build_sklearn_model("sgd_logreg", seed=0), 10, seed=0)
    learner.train(train.x[only_low], train.y[only_low], epochs=5)
    high = test.y >= 5
    assert _accuracy(learner, test.x[high], test.y[high]) < 0.05
    assert _accuracy(learner, test.x[~high], test.y[~high]) > 0.85
    # Consensus from others: confident soft targets for the proxy samples of digits 5..9.
    proxy = ~only_low
    probs = np.full((proxy.sum(), 10), 0.02, dtype=np.float32)
    probs[np.arange(proxy.sum()), train.y[proxy]] = 0.82
    learner.train(train.x[only_low], train.y[only_low], epochs=5,
                  distill=DistillTarget(train.x[proxy], probs, weight=1.0))
    assert _accuracy(learner, test.x[high], test.y[high]) > 0.7


def test_sklearn_logits_cover_all_classes_and_state_round_trips(digits):
    train, test, _ = digits
    learner = SklearnLearner(build_sklearn_model("sgd_logreg"), 10)
    assert np.all(learner.predict_logits(test.x[:3]) == 0)  # untrained: uniform
    mask = train.y < 3
    learner.train(train.x[mask], train.y[mask], epochs=2)
    logits = learner.predict_logits(test.x)
    assert logits.shape == (len(test.x), 10) and np.all(np.isfinite(logits))
    seen = test.y < 3
    assert np.mean(logits[seen].argmax(1) == test.y[seen]) > 0.9
    copy = SklearnLearner(build_sklearn_model("sgd_logreg"), 10)
    copy.set_state(learner.get_state())
    np.testing.assert_array_equal(copy.predict_logits(test.x), logits)


def test_sklearn_learner_refits_estimators_without_partial_fit(digits):
    train, test, _ = digits
    learner = SklearnLearner(build_sklearn_model("logreg"), 10)
    learner.train(train.x, train.y, epochs=1)
    assert _accuracy(learner, test.x, test.y) > 0.9


# --- feature learners: embed, heads and auxiliary losses -------------------------------


def _params(learner):
    return [p.detach().clone() for p in learner.model.parameters()]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))


def test_torch_learner_on_a_zoo_model_is_a_feature_learner(digits):
    train, _, _ = digits
    learner = _torch(arch="lenet5")
    assert isinstance(learner, FeatureLearner)
    assert require_features(learner, "FedProto") is learner
    assert learner.feature_dim == 84
    features = learner.embed(train.x[:600])  # more than one inference batch
    assert features.shape == (600, 84) and features.dtype == np.float32
    learner.model.eval()
    with torch.no_grad():
        direct = learner.model.body(torch.tensor(train.x[:600])).numpy()
    np.testing.assert_array_equal(features, direct)
    np.testing.assert_allclose(learner.predict_from_features(features),
                               learner.predict_logits(train.x[:600]), rtol=1e-5, atol=1e-6)
    assert learner.embed(train.x[:0]).shape == (0, 84)
    with pytest.raises(ValueError, match=r"\(N, 84\)"):
        learner.predict_from_features(features[:, :10])


def test_feature_dim_projection_reaches_the_learner(digits):
    train, _, _ = digits
    learner = TorchLearner(build_model("vit_tiny", (1, 8, 8), 10, feature_dim=24))
    assert learner.feature_dim == 24 and learner.embed(train.x[:5]).shape == (5, 24)


def test_head_round_trip_makes_predictions_match(digits):
    train, test, _ = digits
    teacher = _torch(seed=1, arch="cnn_small")
    teacher.train(train.x, train.y, epochs=1)
    student = _torch(seed=2, arch="cnn_small")
    features = teacher.embed(test.x)
    before = student.predict_from_features(features)
    assert not np.allclose(before, teacher.predict_from_features(features))
    head = teacher.get_head()
    assert sorted(head) == ["bias", "weight"] and head["weight"].shape == (10, 128)
    student.set_head(head)
    np.testing.assert_array_equal(student.predict_from_features(features),
                                  teacher.predict_from_features(features))
    # Only the head moved: the student's body and hence its embedding are its own.
    assert not np.allclose(student.embed(test.x[:20]), features[:20])
    # get_head hands out copies, not views of the live parameters.
    head["weight"][:] = 0
    assert not np.all(student.get_head()["weight"] == 0)


def test_heads_move_between_architectures_in_a_common_feature_space(digits):
    train, test, _ = digits
    cnn = TorchLearner(build_model("cnn_wide", (1, 8, 8), 10, seed=0, feature_dim=32), seed=0)
    vit = TorchLearner(build_model("vit_tiny", (1, 8, 8), 10, seed=0, feature_dim=32), seed=0)
    cnn.train(train.x, train.y, epochs=1)
    before = vit.predict_logits(test.x)
    vit.set_head(cnn.get_head())
    features = vit.embed(test.x)
    np.testing.assert_array_equal(vit.predict_from_features(features),
                                  cnn.predict_from_features(features))
    assert not np.allclose(vit.predict_logits(test.x), before)


def test_set_head_is_strict_on_names_and_shapes():
    learner = _torch(arch="mlp")
    head = learner.get_head()
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        learner.set_head({"weight": head["weight"]})
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        learner.set_head({**head, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"weight: got \(10, 64\), expected \(10, 128\)"):
        learner.set_head({**head, "weight": np.zeros((10, 64), np.float32)})
    np.testing.assert_array_equal(learner.get_head()["weight"], head["weight"])  # untouched


def _to_target(target, weight=1.0):
    def aux(features, logits, labels):
        return weight * (features - target).square().sum(dim=1).mean()
    return aux


def test_aux_loss_pulls_features_towards_its_target(digits):
    train, _, _ = digits
    x, y = train.x[:400], train.y[:400]
    target = torch.full((128,), 0.5)
    plain, pulled = _torch(seed=3, arch="mlp"), _torch(seed=3, arch="mlp")

    def distance(learner):
        return float(np.linalg.norm(learner.embed(x) - target.numpy(), axis=1).mean())

    start = distance(plain)
    plain_metrics = plain.train(x, y, epochs=2)
    pulled_metrics = pulled.train(x, y, epochs=2, aux_loss=_to_target(target))
    assert "aux_loss" not in plain_metrics and pulled_metrics["aux_loss"] > 0
    assert distance(pulled) < 0.5 * min(distance(plain), start)
    assert plain_metrics["train_loss"] > 0 and pulled_metrics["train_loss"] > 0


def test_aux_loss_sees_body_features_logits_and_labels(digits):
    train, _, _ = digits
    seen = []

    def record(features, logits, labels):
        seen.append((tuple(features.shape), tuple(logits.shape), labels.clone()))
        return features.sum() * 0.0

    learner = TorchLearner(build_model("cnn_small", (1, 8, 8), 10, feature_dim=20),
                           batch_size=32, seed=0)
    learner.train(train.x[:100], train.y[:100], epochs=1, aux_loss=record)
    assert [s[:2] for s in seen] == [((32, 20), (32, 10))] * 3 + [((4, 20), (4, 10))]
    labels = torch.cat([s[2] for s in seen])
    assert sorted(labels.tolist()) == sorted(train.y[:100].tolist())


def test_aux_loss_must_return_a_scalar(digits):
    train, _, _ = digits
    with pytest.raises(ValueError, match="scalar tensor"):
        _torch().train(train.x[:64], train.y[:64], 1, aux_loss=lambda f, o, y: f.mean(dim=1))
    with pytest.raises(ValueError, match="scalar tensor"):
        _torch().train(train.x[:64], train.y[:64], 1, aux_loss=lambda f, o, y: 0.0)


@pytest.mark.parametrize("arch", ["cnn_wide", "vit_tiny"])
def test_train_without_aux_loss_is_unchanged(digits, arch):
    train, _, _ = digits
    probs = np.full((200, 10), 0.1, dtype=np.float32)
    target = DistillTarget(train.x[300:500], probs, 0.5, 2.0)
    omitted, explicit, zero = (_torch(seed=4, arch=arch) for _ in range(3))
    m1 = omitted.train(train.x[:300], train.y[:300], 2, distill=target)
    m2 = explicit.train(train.x[:300], train.y[:300], 2, distill=target, aux_loss=None)
    assert m1 == m2 and _same(_params(omitted), _params(explicit))
    # A zero auxiliary loss goes through body and head separately, and still ends equal.
    m3 = zero.train(train.x[:300], train.y[:300], 2, distill=target,
                    aux_loss=lambda f, o, y: 0.0 * f.sum())
    assert m3.pop("aux_loss") == 0.0 and m3 == m1
    assert _same(_params(zero), _params(omitted))


class _Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


class _OwnSplit(torch.nn.Module):
    """Not a SplitModel, but with body and head: a learner can use it for features."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_plain_module_trains_and_predicts_but_cannot_embed(digits):
    train, _, _ = digits
    learner = TorchLearner(_Plain())
    learner.train(train.x[:100], train.y[:100], 1)
    assert learner.predict_logits(train.x[:3]).shape == (3, 10)
    assert not hasattr(learner, "feature_dim")
    calls = [
        lambda: learner.embed(train.x[:3]),
        lambda: learner.feature_dim,
        learner.get_head,
        lambda: learner.set_head({}),
        lambda: learner.predict_from_features(np.zeros((2, 16), np.float32)),
        lambda: learner.train(train.x[:10], train.y[:10], 1, aux_loss=lambda f, o, y: f.sum()),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"`body` and `head` submodules.*_Plain.*SplitModel"):
            call()
    with pytest.raises(TypeError, match="FedProto needs.*pytorch TorchLearner.*cannot embed"):
        require_features(learner, "FedProto")


def test_any_module_with_body_and_head_gives_features(digits):
    train, _, _ = digits
    learner = TorchLearner(_OwnSplit())
    assert not isinstance(learner.model, SplitModel)
    assert learner.feature_dim == 16 and learner.embed(train.x[:4]).shape == (4, 16)
    assert require_features(learner, "FedProto") is learner
    metrics = learner.train(train.x[:64], train.y[:64], 1,
                            aux_loss=lambda f, o, y: f.square().mean())
    assert metrics["aux_loss"] > 0


@pytest.mark.parametrize(
    ("learner", "cls", "framework"),
    [
        (SklearnLearner(build_sklearn_model("sgd_logreg"), 10), "SklearnLearner", "scikit-learn"),
        (FreeRiderLearner(10), "FreeRiderLearner", "none (free rider)"),
    ],
    ids=["sklearn", "free_rider"],
)
def test_require_features_rejects_predict_only_learners(learner, cls, framework):
    assert isinstance(learner, Learner) and not isinstance(learner, FeatureLearner)
    with pytest.raises(TypeError) as error:
        require_features(learner, "FedProto")
    message = str(error.value)
    assert message.startswith("FedProto needs a learner that can embed its inputs into features")
    assert f"is a {framework} {cls}, which can only predict" in message


def test_dropout_training_repeats_exactly_and_leaves_the_global_generator_alone(digits):
    """Dropout draws from torch's global generator: the learner seeds it per call."""
    train, _, _ = digits
    x, y = train.x[:128], train.y[:128]

    def trained(global_seed: int) -> np.ndarray:
        torch.manual_seed(0)
        model = SplitModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32),
                                               torch.nn.ReLU(), torch.nn.Dropout(0.5)),
                           torch.nn.Linear(32, 10))
        torch.manual_seed(global_seed)  # whatever state the process happens to be in
        learner = TorchLearner(model, lr=0.05, seed=3)
        learner.reseed(7)
        learner.train(x, y, epochs=2)
        learner.distill(DistillTarget(x[:32], np.full((32, 10), 0.1, np.float32)), epochs=1)
        return torch.cat([p.detach().ravel() for p in model.parameters()]).numpy()

    np.testing.assert_array_equal(trained(1), trained(2))
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    _torch().train(x, y, epochs=1)
    np.testing.assert_array_equal(torch.rand(3), before)
