"""Contribution ledger and Shapley-value aggregation weights (pure numpy, fast)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flhet_strategies.aggregation.logit_consensus import ConsensusConfig
from flhet_strategies.weighting.contribution import (
    ContributionLedger,
    ContributionWeighting,
    ExactShapley,
    LogitConsensusUtility,
    ShapleyResult,
    mix_weights,
)
from synthetic_games import make_synthetic_logit_game
from flhet_strategies import wire
from flhet_strategies.aggregation.payload import ClientPayload
from flhet_strategies.algorithms.consensus import ConsensusDistillation
from flhet_strategies.protocol import Reply

NUM_PROXY, PER_ROUND = 2000, 500


def _result(values, n_evaluations=4):
    return ShapleyResult(np.asarray(values, float), n_evaluations, "exact", 0.1, 0.9)


def test_ledger_accumulates_per_client_over_the_rounds_it_joined():
    ledger = ContributionLedger()
    ledger.record(1, ["0", "1", "2"], _result([0.3, 0.1, -0.2]), seconds=0.5)
    ledger.record(2, ["0", "2"], _result([0.1, -0.1]))
    ledger.record(4, ["1", "2"], _result([0.2, 0.05]))
    assert ledger.total == pytest.approx({"0": 0.4, "1": 0.3, "2": -0.25})
    # decay 0.5: round 4 counts 1, round 2 counts 1/4, round 1 counts 1/8
    assert ledger.discounted_total(0.5) == pytest.approx(
        {"0": 0.3 / 8 + 0.1 / 4, "1": 0.1 / 8 + 0.2, "2": -0.2 / 8 - 0.1 / 4 + 0.05})
    assert ledger.discounted_total(0.0) == pytest.approx({"0": 0.0, "1": 0.2, "2": 0.05})
    data = ledger.to_dict()
    assert [r["round"] for r in data["rounds"]] == [1, 2, 4]
    assert data["rounds"][0] == {"round": 1, "values": {"0": 0.3, "1": 0.1, "2": -0.2},
                                 "n_evaluations": 4, "estimator": "exact", "seconds": 0.5,
                                 "empty_value": 0.1, "grand_value": 0.9}
    assert data["total"] == ledger.total


@pytest.mark.parametrize(
    ("round_", "ids", "values", "message"),
    [(3, ["0"], [0.1, 0.2], "client ids but"),
     (3, ["0", "0"], [0.1, 0.2], "repeat"),
     (3, ["0"], [np.nan], "finite"),
     (2, ["0"], [0.1], "not after")],
)
def test_ledger_rejects_bad_records(round_, ids, values, message):
    ledger = ContributionLedger()
    ledger.record(2, ["0"], _result([0.1]))
    with pytest.raises(ValueError, match=message):
        ledger.record(round_, ids, _result(values))


def test_mix_weights_clips_mixes_and_falls_back():
    counts = np.array([100.0, 300.0, 600.0])
    np.testing.assert_allclose(mix_weights(np.array([0.5, -0.2, 0.3]), counts, 0.0), counts / 1000)
    np.testing.assert_allclose(mix_weights(np.array([0.5, -0.2, 0.3]), counts, 1.0),
                               [0.5 / 0.8, 0.0, 0.3 / 0.8])
    # the clipped client keeps only its sample-count share
    mixed = mix_weights(np.array([0.5, -0.2, 0.3]), counts, 0.6)
    assert mixed[1] == pytest.approx(0.4 * 0.3)
    # nothing positive: sample counts
    np.testing.assert_allclose(mix_weights(np.array([-0.1, 0.0, -0.3]), counts, 1.0), counts / 1000)
    with pytest.raises(ValueError, match="mix"):
        mix_weights(np.ones(3), counts, 1.5)
    with pytest.raises(ValueError, match="positive"):
        mix_weights(np.ones(3), np.array([1.0, 0.0, 1.0]), 0.5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-1, 1), st.integers(1, 1000)), min_size=1, max_size=12),
       st.floats(0, 1))
def test_mix_weights_are_a_distribution_ordered_by_score_at_equal_counts(rows, mix):
    scores = np.array([s for s, _ in rows])
    counts = np.array([c for _, c in rows], dtype=float)
    weights = mix_weights(scores, counts, mix)
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0)
    equal = mix_weights(scores, np.ones_like(scores), mix)
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(equal[order]) >= -1e-12)


def _round(seed: int, n_honest: int = 6):
    """Payloads of a synthetic round: honest clients' predictions on the validation
    rows come from a non-IID logit game; the last client predicts at random."""
    game = make_synthetic_logit_game(n_honest, 300, seed=seed, noise_range=(0.5, 2.0))
    rng = np.random.default_rng(seed)
    n_samples, n_classes = game.labels.size, game.probabilities.shape[2]
    proxy = rng.permutation(np.sort(rng.choice(NUM_PROXY, PER_ROUND, replace=False)))
    rows = rng.choice(PER_ROUND, n_samples, replace=False)
    payloads = []
    for i in range(n_honest + 1):
        logits = (3.0 * rng.standard_normal((PER_ROUND, n_classes))).astype(np.float32)
        counts = np.full(n_classes, 40.0)
        if i < n_honest:
            logits[rows] = np.log(game.probabilities[i])
            counts = game.class_counts[i]
        payloads.append(ClientPayload(str(i), logits, int(counts.sum()), counts))
    return game, proxy, rows, payloads


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_predicting_client_gets_the_lowest_value_and_weight(seed):
    game, proxy, rows, payloads = _round(seed)
    weighting = ContributionWeighting(proxy[rows], game.labels, consensus=ConsensusConfig())
    weights = weighting(payloads, 1, proxy)
    values = weighting.ledger.rounds[0].values
    assert min(values, key=values.get) == "6" and values["6"] < 0
    assert weights.argmin() == 6 and weights[6] == 0.0
    assert weights.sum() == pytest.approx(1.0)
    assert weighting.ledger.rounds[0].estimator == "exact"  # 2**7 <= budget


def test_values_are_the_exact_shapley_values_of_the_validation_game():
    game, proxy, rows, payloads = _round(3)
    weighting = ContributionWeighting(proxy[rows], game.labels, consensus=ConsensusConfig())
    weighting(payloads, 1, proxy)
    # the same game built by hand, rows in validation order
    probs = np.stack([np.exp(p.logits[rows]) / np.exp(p.logits[rows]).sum(1, keepdims=True)
                      for p in payloads])
    counts = np.stack([p.class_counts for p in payloads])
    expected = ExactShapley().estimate(
        LogitConsensusUtility(probs, game.labels, counts.sum(1), counts).as_utility()).values
    got = weighting.ledger.rounds[0].values
    np.testing.assert_allclose([got[str(i)] for i in range(7)], expected, atol=1e-12)


def test_mix_zero_gives_sample_counts_and_audit_only_keeps_them():
    game, proxy, rows, payloads = _round(4)
    counts = np.array([p.num_examples for p in payloads], float)
    for kwargs in ({"mix": 0.0}, {"use_for_weights": False}):
        weighting = ContributionWeighting(proxy[rows], game.labels, **kwargs)
        np.testing.assert_allclose(weighting(payloads, 1, proxy), counts / counts.sum())
        assert len(weighting.ledger.rounds) == 1  # values recorded either way


def test_weights_follow_the_decayed_cumulative_score():
    game, proxy, rows, payloads = _round(5)
    weighting = ContributionWeighting(proxy[rows], game.labels, decay=0.5)
    weighting(payloads, 1, proxy)
    weights = weighting(payloads, 2, proxy)  # same predictions: score = 1.5 x round value
    values = np.array([weighting.ledger.rounds[1].values[str(i)] for i in range(7)])
    counts = np.array([p.num_examples for p in payloads], float)
    np.testing.assert_allclose(weights, mix_weights(1.5 * values, counts, 1.0))
    assert weighting.ledger.total == pytest.approx({str(i): 2 * v for i, v in enumerate(values)})


def test_round_without_validation_rows_is_skipped_with_sample_counts():
    game, proxy, rows, payloads = _round(6)
    outside = np.setdiff1d(np.arange(NUM_PROXY), proxy)[: game.labels.size]
    weighting = ContributionWeighting(outside, game.labels)
    counts = np.array([p.num_examples for p in payloads], float)
    np.testing.assert_allclose(weighting(payloads, 3, proxy), counts / counts.sum())
    assert weighting.skipped_rounds == [3] and weighting.ledger.rounds == []


def test_plugs_into_the_distillation_protocol_with_always_include():
    game, _, _, payloads = _round(7)
    validation = np.arange(100, 100 + game.labels.size)
    weighting = ContributionWeighting(validation, game.labels, consensus=ConsensusConfig())
    protocol = ConsensusDistillation(NUM_PROXY, game.probabilities.shape[2], PER_ROUND,
                                     weight_fn=weighting, always_include=validation)
    indices = protocol.proxy_indices(1)
    position = {int(v): k for k, v in enumerate(indices)}
    rows = np.array([position[int(v)] for v in validation])
    for p in payloads[:-1]:  # honest predictions on the validation rows of this round
        p.logits[rows] = np.log(game.probabilities[int(p.client_id)])
    replies = [Reply(p.client_id, {wire.LOGITS: p.logits, wire.CLASS_COUNTS: p.class_counts},
                     {wire.NUM_EXAMPLES: p.num_examples}) for p in payloads]
    outcome = protocol.aggregate(1, replies)
    assert outcome.released and outcome.accepted == [str(i) for i in range(7)]
    assert outcome.weights["6"] == 0.0 and len(weighting.ledger.rounds) == 1
    assert sum(outcome.weights.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"validation_indices": np.array([1, 1])}, "unique"),
     ({"validation_labels": np.array([0])}, "validation_labels"),
     ({"method": "magic"}, "method"),
     ({"mix": -0.1}, "mix"),
     ({"decay": 2.0}, "decay"),
     ({"metric": "f1"}, "metric")],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    args = {"validation_indices": np.array([1, 2]), "validation_labels": np.array([0, 1])}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ContributionWeighting(args.pop("validation_indices"), args.pop("validation_labels"),
                              **args)


def test_mix_weights_sum_to_one_even_for_denormal_scores():
    """A score of 5e-324 (the smallest float): 0.5 * 5e-324 underflows to 0 if the mix is
    applied before normalising (a case hypothesis found)."""
    weights = mix_weights(np.array([5e-324, 0.0]), np.array([1.0, 3.0]), 0.5)
    np.testing.assert_allclose(weights, [0.5 + 0.125, 0.375])
