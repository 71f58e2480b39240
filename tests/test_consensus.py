"""Consensus math against hand-computed values."""

import numpy as np
import pytest

from flhet_strategies.aggregation.logit_consensus import (
    ConsensusConfig,
    class_vote_weights,
    entropy_reduction,
    logit_consensus,
    softmax,
)

LN3 = np.log(3.0)
# Client 1 predicts [.5, .5], client 2 predicts [.75, .25] on a single proxy sample.
LOGITS = np.array([[[0.0, 0.0]], [[LN3, 0.0]]])


def test_softmax_rows_sum_to_one_and_shift_invariant():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 1001.0, 1002.0]])
    p = softmax(z)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], p[1])
    np.testing.assert_allclose(softmax(np.array([0.0, LN3])), [0.25, 0.75])


def test_dsfl_weighted_mean_of_probabilities():
    cfg = ConsensusConfig(mode="dsfl", era_temperature=None, class_vote_weighting=False)
    out = logit_consensus(LOGITS, np.array([1.0, 3.0]), cfg)
    # (1 * [.5, .5] + 3 * [.75, .25]) / 4
    np.testing.assert_allclose(out, [[0.6875, 0.3125]], rtol=1e-6)


def test_dsfl_entropy_reduction_sharpens():
    cfg = ConsensusConfig(mode="dsfl", era_temperature=0.5, class_vote_weighting=False)
    out = logit_consensus(LOGITS, np.array([1.0, 3.0]), cfg)
    # softmax([.6875, .3125] / .5) = sigmoid(0.75) for the first class
    np.testing.assert_allclose(out, [[0.679179, 0.320821]], atol=1e-6)
    np.testing.assert_allclose(entropy_reduction(np.array([[0.6875, 0.3125]]), 0.5), out, atol=1e-6)


def test_fedmd_mean_of_logits():
    cfg = ConsensusConfig(mode="fedmd", class_vote_weighting=False)
    out = logit_consensus(LOGITS, np.array([1.0, 3.0]), cfg)
    # mean logit of class 0 = 0.75 ln 3, so p0 = 3^.75 / (1 + 3^.75)
    p0 = 3**0.75 / (1 + 3**0.75)
    np.testing.assert_allclose(out, [[p0, 1 - p0]], rtol=1e-6)


def test_fedmd_temperature_softens():
    sharp = logit_consensus(LOGITS, np.ones(2), ConsensusConfig("fedmd", 1.0, None, False))
    soft = logit_consensus(LOGITS, np.ones(2), ConsensusConfig("fedmd", 3.0, None, False))
    assert soft[0, 0] < sharp[0, 0]


def test_class_vote_weights_hand_computed():
    counts = np.array([[10.0, 0.0], [5.0, 5.0]])
    w = class_vote_weights(counts, np.ones(2))
    np.testing.assert_allclose(w, [[2 / 3, 0.0], [1 / 3, 1.0]])
    np.testing.assert_allclose(w.sum(axis=0), 1.0)


def test_class_vote_weights_unseen_class_falls_back_to_client_weights():
    counts = np.array([[4.0, 0.0], [4.0, 0.0]])
    w = class_vote_weights(counts, np.array([1.0, 3.0]))
    np.testing.assert_allclose(w[:, 1], [0.25, 0.75])


def test_per_class_votes_consensus_hand_computed():
    counts = np.array([[10.0, 0.0], [5.0, 5.0]])
    cfg = ConsensusConfig(mode="dsfl", era_temperature=None, class_vote_weighting=True)
    out = logit_consensus(LOGITS, np.ones(2), cfg, class_counts=counts)
    # q0 = 2/3 * .5 + 1/3 * .75 = 7/12, q1 = 0 * .5 + 1 * .25 = 1/4; normalised: .7, .3
    np.testing.assert_allclose(out, [[0.7, 0.3]], rtol=1e-6)


def test_client_who_never_saw_a_class_has_no_vote_on_it():
    # Client 0 never saw class 1 but is confidently wrong about it.
    logits = np.array([[[-5.0, 5.0]], [[5.0, -5.0]]])
    counts = np.array([[10.0, 0.0], [10.0, 10.0]])
    cfg = ConsensusConfig(mode="dsfl", era_temperature=None, class_vote_weighting=True)
    out = logit_consensus(logits, np.ones(2), cfg, class_counts=counts)
    plain = logit_consensus(logits, np.ones(2), ConsensusConfig("dsfl", 1.0, None, False))
    assert out[0, 0] > 0.6 and plain[0, 0] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "fedavg"}, {"temperature": 0.0}, {"era_temperature": -1.0}],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        ConsensusConfig(**kwargs)


def test_consensus_rejects_bad_weights_and_shapes():
    cfg = ConsensusConfig(class_vote_weighting=False)
    with pytest.raises(ValueError, match="weights"):
        logit_consensus(LOGITS, np.array([0.0, 0.0]), cfg)
    with pytest.raises(ValueError, match="weights"):
        logit_consensus(LOGITS, np.array([1.0]), cfg)
    with pytest.raises(ValueError, match="clients, samples, classes"):
        logit_consensus(LOGITS[0], np.ones(2), cfg)
    with pytest.raises(ValueError, match="class_counts"):
        logit_consensus(LOGITS, np.ones(2), ConsensusConfig(class_vote_weighting=True))


def test_output_is_a_distribution_for_random_inputs():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 40, 10)) * 4
    counts = rng.integers(0, 30, size=(5, 10))
    for mode in ("dsfl", "fedmd"):
        out = logit_consensus(logits, rng.uniform(0.5, 2, 5), ConsensusConfig(mode=mode),
                              class_counts=counts)
        assert out.shape == (40, 10) and out.dtype == np.float32
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
        assert np.all(out >= 0)
