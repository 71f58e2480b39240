"""Adaptive aggregation weights from the stability of client predictions (pure numpy, fast)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import importlib.util
import sys
from pathlib import Path

from flhet_strategies.weighting.adaptive import AdaptiveWeighting, prediction_instability
from simulations import convergence
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig
from flhet_strategies import wire
from flhet_strategies.aggregation.payload import ClientPayload
from flhet_strategies.algorithms.consensus import ConsensusDistillation
from flhet_strategies.protocol import Reply
from flhet_strategies.weighting.base import sample_count_weights, uniform_weights

NUM_PROXY, NUM_CLASSES = 400, 5


def _signal(seed: int = 0, num_proxy: int = NUM_PROXY) -> np.ndarray:
    """A fixed 'true' logit table over the proxy set (what an honest model converges to)."""
    return 3.0 * np.random.default_rng(seed).standard_normal((num_proxy, NUM_CLASSES))


def _payload(cid, logits, n=100):
    return ClientPayload(str(cid), np.asarray(logits, dtype=np.float32), n)


def _round_indices(server_round: int, size: int = 200) -> np.ndarray:
    rng = np.random.default_rng([7, server_round])
    return np.sort(rng.choice(NUM_PROXY, size=size, replace=False)).astype(np.int64)


# --- prediction_instability --------------------------------------------------------------


def test_instability_is_zero_for_repeated_and_about_one_for_random_predictions():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), size=2000)
    assert prediction_instability(p, p) == 0.0
    q = rng.dirichlet(np.ones(10), size=2000)
    assert prediction_instability(p, q) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0, 10.0])
def test_random_logits_are_unstable_whatever_their_scale(scale):
    rng = np.random.default_rng(1)
    a, b = (np.exp(scale * rng.standard_normal((1000, 10))) for _ in range(2))
    a, b = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
    assert prediction_instability(a, b) == pytest.approx(1.0, abs=0.08)


def test_instability_matches_the_noise_share_of_signal_plus_noise():
    rng = np.random.default_rng(2)
    signal = rng.standard_normal((5000, 4))
    a = signal + 0.5 * rng.standard_normal(signal.shape)
    b = signal + 0.5 * rng.standard_normal(signal.shape)
    # noise variance 0.25 against signal variance 1: share 0.25 / 1.25 = 0.2
    assert prediction_instability(a, b) == pytest.approx(0.2, abs=0.02)


def test_instability_ignores_a_drifting_class_prior_and_sharpening():
    rng = np.random.default_rng(3)
    a = rng.dirichlet(np.ones(6), size=300)
    shifted = 2.5 * a + rng.standard_normal(6)  # sharper, with another class prior
    assert prediction_instability(a, shifted) == pytest.approx(0.0, abs=1e-12)
    assert prediction_instability(a, -a) == pytest.approx(2.0)


def test_constant_predictions_count_as_uninformative():
    p = np.full((50, 4), 0.25)
    assert prediction_instability(p, p) == 1.0


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [(np.ones((3, 2)), np.ones((4, 2)), "must both be"),
     (np.ones(3), np.ones(3), "must both be"),
     (np.ones((1, 2)), np.ones((1, 2)), "at least 2"),
     (np.array([[np.nan, 1.0], [0.0, 1.0]]), np.ones((2, 2)), "finite")],
)
def test_instability_rejects_bad_input(a, b, message):
    with pytest.raises(ValueError, match=message):
        prediction_instability(a, b)


# --- AdaptiveWeighting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"smoothing": 1.0}, "smoothing"), ({"smoothing": -0.1}, "smoothing"),
     ({"power": -1.0}, "power"), ({"power": np.inf}, "power"),
     ({"min_factor": 1.5}, "min_factor"), ({"temperature": 0.0}, "temperature"),
     ({"min_common": 1}, "min_common"), ({"min_common": 2.5}, "min_common"),
     ({"inner": "counts"}, "inner")],
)
def test_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveWeighting(**kwargs)


def test_rejects_bad_calls():
    weighting = AdaptiveWeighting()
    idx = _round_indices(1)
    good = [_payload(0, _signal()[idx])]
    with pytest.raises(ValueError, match="no payloads"):
        weighting([], 1, idx)
    with pytest.raises(ValueError, match="repeat"):
        weighting(good + good, 1, idx)
    with pytest.raises(ValueError, match="do not match"):
        weighting(good, 1, idx[:-1])
    with pytest.raises(ValueError, match="unique"):
        weighting(good, 1, np.zeros(len(idx), dtype=np.int64))
    weighting(good, 2, idx)
    with pytest.raises(ValueError, match="not after"):
        weighting(good, 2, idx)
    bad_inner = AdaptiveWeighting(inner=lambda p, r, i: np.zeros(len(p)))
    with pytest.raises(ValueError, match="not all zero"):
        bad_inner(good, 1, idx)


def test_first_round_returns_the_inner_weights():
    idx = _round_indices(1)
    payloads = [_payload(i, _signal(i)[idx], n) for i, n in enumerate([10, 30, 60])]
    weights = AdaptiveWeighting()(payloads, 1, idx)
    np.testing.assert_allclose(weights, [0.1, 0.3, 0.6])


def _federation(rounds, noise, n=(100, 100, 100), free_riders=(), seed=0):
    """Per round: payloads of clients that predict ``signal + noise * N(0, 1)``."""
    rng = np.random.default_rng(seed)
    signal = _signal(seed)
    for server_round in range(1, rounds + 1):
        idx = _round_indices(server_round)
        payloads = []
        for cid, (sigma, count) in enumerate(zip(noise, n)):
            if cid in free_riders:
                logits = 3.0 * rng.standard_normal((idx.size, NUM_CLASSES))
            else:
                logits = signal[idx] + sigma * rng.standard_normal((idx.size, NUM_CLASSES))
            payloads.append(_payload(cid, logits, count))
        yield server_round, idx, payloads


def test_a_random_free_rider_loses_its_weight_from_the_second_round():
    weighting = AdaptiveWeighting()
    for server_round, idx, payloads in _federation(4, (0.3, 0.3, 0.3), free_riders=(2,)):
        weights = weighting(payloads, server_round, idx)
        if server_round == 1:
            np.testing.assert_allclose(weights, [1 / 3] * 3)
        else:
            assert weights[2] < 0.05 and weights[0] == pytest.approx(weights[1], rel=0.1)
    entry = weighting.history[-1]
    assert entry["instability"]["2"] == pytest.approx(1.0, abs=0.15)
    assert entry["instability"]["0"] < 0.1
    assert entry["common"]["0"] >= 10 and entry["fallback"] is False


def test_audit_only_measures_but_keeps_the_inner_weights():
    weighting = AdaptiveWeighting(use_for_weights=False)
    for server_round, idx, payloads in _federation(3, (0.3, 0.3, 0.3), n=(1, 2, 1),
                                                   free_riders=(2,)):
        np.testing.assert_allclose(weighting(payloads, server_round, idx), [0.25, 0.5, 0.25])
    assert weighting.history[-1]["factors"]["2"] < 0.1
    assert set(weighting.instability()) == {"0", "1", "2"}


def test_min_factor_keeps_every_client_in_the_consensus():
    weighting = AdaptiveWeighting(min_factor=0.2)
    for server_round, idx, payloads in _federation(3, (0.3, 0.3, 0.3), free_riders=(2,)):
        weights = weighting(payloads, server_round, idx)
    assert weights[2] == pytest.approx(0.2 * weights[0], rel=0.1)


def test_clients_without_information_fall_back_to_the_inner_weights():
    weighting = AdaptiveWeighting()
    idx = _round_indices(1)
    for server_round in (1, 2, 3):  # both send constant (uniform) predictions: factor 0
        payloads = [_payload(c, np.zeros((idx.size, NUM_CLASSES)), n) for c, n in ((0, 1), (1, 3))]
        np.testing.assert_allclose(weighting(payloads, server_round, idx), [0.25, 0.75])
    assert weighting.history[-1]["fallback"] is True
    assert weighting.history[-1]["factors"] == {"0": 0.0, "1": 0.0}


def test_new_clients_count_as_typical_and_skipped_rounds_compare_with_the_last_seen():
    weighting = AdaptiveWeighting()
    signal = _signal()
    rng = np.random.default_rng(3)

    def honest(idx, sigma):
        return signal[idx] + sigma * rng.standard_normal((idx.size, NUM_CLASSES))

    idx1, idx2, idx3 = (_round_indices(r) for r in (1, 2, 3))
    weighting([_payload(0, honest(idx1, 0.2)), _payload(1, honest(idx1, 1.5))], 1, idx1)
    weighting([_payload(0, honest(idx2, 0.2))], 2, idx2)  # client 1 skips round 2
    weights = weighting([_payload(0, honest(idx3, 0.2)), _payload(1, honest(idx3, 1.5)),
                         _payload(2, honest(idx3, 0.2))], 3, idx3)
    entry = weighting.history[-1]
    assert entry["instability"]["1"] is not None  # round 3 against round 1
    assert entry["instability"]["2"] is None and entry["smoothed"]["2"] is None
    factors = entry["factors"]
    assert factors["2"] == pytest.approx(np.median([factors["0"], factors["1"]]))
    assert weights[0] > weights[2] > weights[1]


def test_too_few_shared_samples_keep_the_previous_average():
    weighting = AdaptiveWeighting(min_common=10)
    signal = _signal()
    first = np.arange(0, 50)
    weighting([_payload(0, signal[first])], 1, first)
    weighting([_payload(0, signal[first] + 0.1)], 2, first)
    before = weighting.instability()["0"]
    disjoint = np.arange(45, 95)  # 5 shared samples
    weighting([_payload(0, signal[disjoint] + 3.0 * np.sin(disjoint)[:, None])], 3, disjoint)
    assert weighting.history[-1]["instability"]["0"] is None
    assert weighting.history[-1]["common"]["0"] == 5
    assert weighting.instability()["0"] == before


def test_smoothing_follows_a_client_that_turns_free_rider():
    weighting = AdaptiveWeighting(smoothing=0.5)
    signal, rng = _signal(), np.random.default_rng(4)
    factors = []
    for server_round in range(1, 7):
        idx = _round_indices(server_round)
        turned = 3.0 * rng.standard_normal((idx.size, NUM_CLASSES))
        payloads = [_payload(0, signal[idx] + 0.2 * rng.standard_normal((idx.size, NUM_CLASSES))),
                    _payload(1, turned if server_round >= 4 else signal[idx])]
        weighting(payloads, server_round, idx)
        factors.append(weighting.history[-1]["factors"]["1"])
    assert factors[2] > 0.95          # stable while honest
    assert factors[3] < 0.6           # halfway after its first random round
    assert factors[5] < 0.15          # and gone two rounds later


def test_inside_the_consensus_protocol_the_free_rider_loses_its_say():
    protocol = ConsensusDistillation(
        NUM_PROXY, NUM_CLASSES, proxy_per_round=200,
        consensus=ConsensusConfig(class_vote_weighting=False),
        weight_fn=AdaptiveWeighting(uniform_weights), seed=0)
    signal, rng = _signal(), np.random.default_rng(5)
    for server_round in range(1, 5):
        idx = protocol.plan(server_round).proxy_indices
        payloads = [_payload(c, signal[idx] + 0.3 * rng.standard_normal((idx.size, NUM_CLASSES)))
                    for c in range(3)]
        payloads.append(_payload(3, 3.0 * rng.standard_normal((idx.size, NUM_CLASSES))))
        replies = [Reply(p.client_id, {wire.LOGITS: p.logits}, {wire.NUM_EXAMPLES: p.num_examples})
                   for p in payloads]
        outcome = protocol.aggregate(server_round, replies)
    assert outcome.released and outcome.accepted == ["0", "1", "2", "3"]
    assert outcome.weights["3"] < 0.02
    assert min(outcome.weights[c] for c in "012") > 0.3
    consensus_indices, consensus = protocol.consensus
    np.testing.assert_array_equal(consensus_indices, idx)
    agreement = (consensus.argmax(1) == signal[idx].argmax(1)).mean()
    assert agreement >= 0.9


# --- properties ----------------------------------------------------------------------------

_noise_levels = st.lists(st.floats(0.0, 4.0), min_size=2, max_size=6)


@settings(max_examples=40, deadline=None)
@given(noise=_noise_levels, seed=st.integers(0, 2**16), rounds=st.integers(1, 4),
       counts=st.lists(st.integers(1, 500), min_size=6, max_size=6))
def test_weights_are_non_negative_and_sum_to_one(noise, seed, rounds, counts):
    weighting = AdaptiveWeighting()
    for server_round, idx, payloads in _federation(rounds, noise, n=counts[:len(noise)],
                                                   seed=seed):
        weights = weighting(payloads, server_round, idx)
        assert weights.shape == (len(noise),)
        assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0)


@settings(max_examples=25, deadline=None)
@given(noise=_noise_levels, seed=st.integers(0, 2**16), data=st.data())
def test_permuting_the_clients_permutes_the_weights(noise, seed, data):
    perm = data.draw(st.permutations(range(len(noise))))
    ordered, shuffled = AdaptiveWeighting(), AdaptiveWeighting()
    for server_round, idx, payloads in _federation(3, noise, n=[100] * len(noise), seed=seed):
        w = ordered(payloads, server_round, idx)
        w_perm = shuffled([payloads[i] for i in perm], server_round, idx)
        np.testing.assert_allclose(w_perm, w[list(perm)], rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), counts=st.lists(st.integers(1, 500), min_size=2, max_size=5),
       sigma=st.floats(0.0, 3.0))
def test_identical_histories_give_the_inner_weights(seed, counts, sigma):
    weighting = AdaptiveWeighting()
    rng = np.random.default_rng(seed)
    signal = _signal(seed)
    for server_round in range(1, 4):
        idx = _round_indices(server_round)
        logits = signal[idx] + sigma * rng.standard_normal((idx.size, NUM_CLASSES))
        payloads = [_payload(c, logits, n) for c, n in enumerate(counts)]
        weights = weighting(payloads, server_round, idx)
        np.testing.assert_allclose(weights, np.array(counts) / sum(counts), rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), stable=st.floats(0.0, 0.5), jitter=st.floats(1.5, 6.0),
       smoothing=st.floats(0.0, 0.9))
def test_a_jittering_client_gets_less_weight_than_a_stable_one(seed, stable, jitter, smoothing):
    weighting = AdaptiveWeighting(smoothing=smoothing)
    for server_round, idx, payloads in _federation(3, (stable, jitter), seed=seed):
        weights = weighting(payloads, server_round, idx)
    assert weights[1] < weights[0]


def test_the_default_inner_weight_is_the_sample_count():
    assert AdaptiveWeighting().inner is sample_count_weights


# --- benchmark helpers and one real Flower simulation --------------------------------------

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "adaptive_benchmark.py"
_SPEC = importlib.util.spec_from_file_location("adaptive_benchmark", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench
_SPEC.loader.exec_module(bench)


def test_rounds_to_target_takes_the_first_evaluated_round_that_reaches_it():
    series = [(3, 0.5), (1, 0.2), (2, None), (4, 0.4)]
    assert convergence.rounds_to_target(series, 0.45) == 3
    assert convergence.rounds_to_target(series, 0.2) == 1
    assert convergence.rounds_to_target(series, 0.9) is None


def test_compare_reports_rounds_and_their_ratio():
    unadapted = [(1, 0.2), (2, 0.4), (3, 0.5), (4, 0.6)]
    adaptive = [(1, 0.2), (2, 0.58), (3, 0.62), (4, 0.63)]
    result = convergence.compare(unadapted, adaptive, target_fraction=0.95)
    assert result["target"] == pytest.approx(0.57)
    assert (result["unadapted_rounds"], result["adaptive_rounds"]) == (4, 2)
    assert result["ratio"] == pytest.approx(0.5)
    assert (result["unadapted_mean"], result["adaptive_mean"]) == pytest.approx((0.425, 0.5075))
    missed = convergence.compare(unadapted, [(1, 0.1), (2, 0.2)], 0.95)
    assert missed["adaptive_rounds"] is None and missed["ratio"] is None
    assert convergence.compare(unadapted, adaptive, 0.5, target_accuracy=0.45)["adaptive_rounds"] == 2
    with pytest.raises(ValueError, match="target_fraction"):
        convergence.compare(unadapted, adaptive, 1.5)


def test_accuracy_series_can_leave_out_clients():
    history = [{"round": 2, "global_accuracy_mean": 0.4,
                "per_client": {"0": {"global_accuracy": 0.6}, "1": {"global_accuracy": 0.2}}},
               {"round": 1, "global_accuracy_mean": None}]
    assert convergence.accuracy_series(history) == [(1, None), (2, 0.4)]
    assert convergence.accuracy_series(history, exclude=["1"]) == [(1, None), (2, 0.6)]


@pytest.mark.integration
def test_benchmark_pair_in_flowers_simulation_engine_silences_the_free_rider():
    from simulations.config import from_dict

    cfg = from_dict({
        "name": "adaptive-it", "seed": 0, "num_rounds": 3, "api": "message",
        "data": {"dataset": "digits", "num_clients": 4,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40},
                 "proxy_size": 300, "proxy_validation_size": 100},
        "strategy": {"proxy_per_round": 150},
        "recipe": {"warmup_epochs": 1, "local_epochs": 1},
        "clients": [{"architecture": "cnn_small"}, {"architecture": "mlp"},
                    {"architecture": "sklearn:sgd_logreg"},
                    {"architecture": "mlp", "role": "free_rider"}],
    })
    runs = bench.run_pair(cfg, {"temperature": cfg.strategy.temperature})
    unadapted, adaptive = (sorted(runs[k]["history"], key=lambda e: e["round"])
                           for k in ("unadapted", "adaptive"))
    # round 1: no history, both runs use the sample-count weights
    assert adaptive[0]["weights"] == pytest.approx(unadapted[0]["weights"])
    for entry in adaptive[1:]:
        assert entry["weights"]["3"] < 0.03 < min(entry["weights"][c] for c in "012")
    for entry in unadapted[1:]:  # audit only: weights stay, the signal is still measured
        assert entry["weights"] == pytest.approx(unadapted[0]["weights"])
    last = runs["unadapted"]["stability"][-1]
    assert last["instability"]["3"] > 0.8 > max(last["instability"][c] for c in "012")
    summary = bench.summarize(cfg, runs, 0.95, None)
    assert summary["free_riders"] == ["3"]
    assert len(summary["all"]["series"]["adaptive"]) == 3
