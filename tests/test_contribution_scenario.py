"""The contribution scenario's pieces: [contribution] and client roles in the config, the
label-noise twin's data, the free-rider learner, and strategies built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clients.learners.base import Learner
from clients.learners.free_rider import FreeRiderLearner
from flhet_strategies.weighting.contribution.weighting import ContributionWeighting
from flhet_strategies.aggregation.payload import ClientPayload, validate_payload
from simulations.config import ConfigError, from_dict, load_config
from simulations.data.label_noise import flip_labels, with_label_noise_twin
from simulations.data.loaders import load_dataset
from simulations.experiment import build_client, build_split, build_strategy

CONFIGS = Path(__file__).resolve().parents[1] / "simulations" / "configs"
SCENARIO = CONFIGS / "fmnist_free_rider.toml"


def _raw(clients=None, **changes):
    raw = {"data": {"dataset": "digits", "num_clients": 4, "proxy_size": 300,
                    "proxy_validation_size": 100, "private_size": 900,
                    "partitioner": {"name": "iid"}},
           "strategy": {"proxy_per_round": 150},
           "contribution": {"enabled": True},
           "clients": clients or [{"architecture": "mlp", "role": "twin"},
                                  {"architecture": "mlp", "role": "label_noise"},
                                  {"architecture": "sklearn:sgd_logreg"},
                                  {"architecture": "mlp", "role": "free_rider"}]}
    raw.update(changes)
    return raw


def test_scenario_config_has_the_contract_roles_and_contributions():
    cfg = load_config(SCENARIO)
    roles = cfg.client_roles()
    assert cfg.data.dataset == "fashion_mnist" and cfg.data.num_clients == 10
    assert sorted(r for r in roles if r) == ["free_rider", "label_noise", "twin"]
    groups = cfg.client_groups()
    noisy, twin = groups[roles.index("label_noise")], groups[roles.index("twin")]
    assert noisy.architecture == twin.architecture and noisy.flip_fraction == 0.5
    c = cfg.contribution
    assert c.enabled and c.use_for_weights and c.sample_count_baseline and c.method == "auto"


def test_contribution_section_parses_and_round_trips():
    cfg = from_dict(_raw(contribution={"enabled": True, "method": "gtg", "budget": 500,
                                       "mix": 0.7, "decay": 0.0, "use_for_weights": False,
                                       "metric": "neg_log_loss", "sample_count_baseline": False}))
    c = cfg.contribution
    assert (c.method, c.budget, c.mix, c.decay, c.use_for_weights, c.metric) == (
        "gtg", 500, 0.7, 0.0, False, "neg_log_loss")
    assert from_dict(cfg.to_dict()) == cfg
    assert not from_dict({k: v for k, v in _raw().items() if k != "contribution"}
                         ).contribution.enabled


@pytest.mark.parametrize(
    ("raw", "message"),
    [(_raw(contribution={"method": "shapiq"}), "method must be one of"),
     (_raw(contribution={"mix": 1.2}), "mix must lie"),
     (_raw(contribution={"decay": -1}), "decay must lie"),
     (_raw(contribution={"metric": "f1"}), "metric"),
     (_raw(contribution={"mixx": 1}), "unknown key"),
     (_raw(strategy={"proxy_per_round": 50}), "proxy_validation_size"),
     (_raw(clients=[{"architecture": "mlp", "role": "cheater", "count": 4}]), "role must be"),
     (_raw(clients=[{"architecture": "mlp", "role": "twin", "count": 2},
                    {"architecture": "mlp", "role": "label_noise"},
                    {"architecture": "mlp"}]), "count = 1"),
     (_raw(clients=[{"architecture": "mlp", "role": "label_noise"},
                    {"architecture": "mlp", "count": 3}]), "needs a 'twin'"),
     (_raw(clients=[{"architecture": "cnn_small", "role": "twin"},
                    {"architecture": "mlp", "role": "label_noise"},
                    {"architecture": "mlp", "count": 2}]), "same architecture"),
     (_raw(clients=[{"architecture": "mlp", "role": "label_noise", "flip_fraction": 0.0},
                    {"architecture": "mlp", "role": "twin"},
                    {"architecture": "mlp", "count": 2}]), "flip_fraction")],
)
def test_bad_contribution_configs_raise_clear_errors(raw, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        from_dict(raw)


def test_flip_labels_flips_exactly_the_fraction_to_other_classes():
    labels = np.random.default_rng(0).integers(0, 10, size=501)
    flipped = flip_labels(labels, 0.5, 10, np.random.default_rng(1))
    assert (flipped != labels).sum() == 250 and flipped.min() >= 0 and flipped.max() < 10
    assert np.array_equal(flip_labels(labels, 0.0, 10, np.random.default_rng(1)), labels)


def test_label_noise_client_matches_its_twin_with_fresh_samples_and_flipped_labels():
    cfg = from_dict(_raw())
    split = build_split(cfg)
    assert build_split(cfg) is split  # cached: every simulated client sees the same data
    twin, noisy = split.clients[0], split.clients[1]
    assert len(noisy.train) == len(twin.train) and len(noisy.test) == len(twin.test)
    true_train = load_dataset("digits")[0].y[noisy.train_indices]
    true_test = load_dataset("digits")[0].y[noisy.test_indices]
    assert np.array_equal(np.bincount(true_train, minlength=10), twin.class_counts)
    assert np.array_equal(np.bincount(true_test, minlength=10),
                          np.bincount(twin.test.y, minlength=10))
    assert (noisy.train.y != true_train).sum() == round(0.5 * len(twin.train))
    assert np.array_equal(noisy.test.y, true_test)  # its test split keeps the true labels
    assert np.array_equal(noisy.class_counts, np.bincount(noisy.train.y, minlength=10))
    others = np.concatenate([split.proxy_indices] + [
        np.concatenate([c.train_indices, c.test_indices]) for c in split.clients if c.client_id != 1
    ])
    drawn = np.concatenate([noisy.train_indices, noisy.test_indices])
    assert not np.intersect1d(drawn, others).size


def test_label_noise_needs_unused_samples():
    cfg = from_dict(_raw(data={"dataset": "digits", "num_clients": 4, "proxy_size": 300,
                               "proxy_validation_size": 100, "partitioner": {"name": "iid"}}))
    with pytest.raises(ValueError, match="fresh samples of class"):
        build_split(cfg)
    split = build_split(from_dict(_raw()))
    with pytest.raises(ValueError, match="different client ids"):
        with_label_noise_twin(split, 1, 1, 0.5, 0, "digits")


def test_free_rider_learner_sends_valid_random_logits_and_never_trains():
    learner = FreeRiderLearner(10, seed=3)
    assert isinstance(learner, Learner)
    x = np.zeros((50, 1, 8, 8), np.float32)
    assert learner.train(x, np.zeros(50, np.int64), epochs=3) == {}
    learner.reseed(7)
    first = learner.predict_logits(x)
    learner.reseed(7)
    assert np.array_equal(first, learner.predict_logits(x))
    assert first.shape == (50, 10) and first.dtype == np.float32 and first.std() > 1.0
    validate_payload(ClientPayload("9", first, 40, np.ones(10)), 50, 10, True)
    assert learner.get_state() == {}
    with pytest.raises(ValueError, match="scale"):
        FreeRiderLearner(10, scale=-1.0)


def test_builders_wire_roles_and_contribution_weighting():
    cfg = from_dict(_raw())
    assert isinstance(build_client(cfg, 3).learner, FreeRiderLearner)
    assert not isinstance(build_client(cfg, 2).learner, FreeRiderLearner)
    split = build_split(cfg)
    for kwargs, uses_weights, phase in (({}, True, "main"),
                                        ({"sample_count_weighting": True}, False,
                                         "sample_count_weighting")):
        strategy = build_strategy(cfg, **kwargs)
        protocol = strategy.core
        assert isinstance(protocol.weight_fn, ContributionWeighting)
        assert protocol.weight_fn.use_for_weights is uses_weights
        assert strategy.phase == phase
        assert set(split.proxy_validation_indices) <= set(protocol.proxy_indices(1))
    local = build_strategy(cfg, local_only=True).core
    assert not isinstance(local.weight_fn, ContributionWeighting) and not local.always_include.size
    compat = build_strategy(from_dict(_raw(api="compat"))).core
    assert isinstance(compat.weight_fn, ContributionWeighting) and compat.always_include.size == 100
