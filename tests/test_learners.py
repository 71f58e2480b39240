"""PyTorch and scikit-learn learners on real data (scikit-learn digits)."""

import numpy as np
import pytest
import torch

from clients.learners.base import DistillTarget, Learner
from clients.learners.sklearn_learner import SklearnLearner
from clients.learners.torch_learner import TorchLearner
from clients.models.sklearn_models import build_sklearn_model
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
