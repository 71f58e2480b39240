"""Logit-consensus and weighted-average coalition utilities."""

from __future__ import annotations

import numpy as np
import pytest

from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, logit_consensus
from flhet_strategies.weighting.contribution import (
    ExactShapley,
    LogitConsensusUtility,
    WeightedAverageUtility,
)
from flhet_strategies.weighting.contribution.exact import all_coalition_masks
from flhet_strategies.weighting.contribution.games import prefix_masks
from synthetic_games import make_synthetic_logit_game

# Two clients, three samples, three classes; labels (0, 1, 2).
PROBABILITIES = np.array(
    [
        [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]],  # client 0: samples 0 and 2 right
        [[0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.3, 0.1, 0.6]],  # client 1: samples 1 and 2 right
    ]
)
LABELS = np.array([0, 1, 2])
# Label histograms: client 1 never saw class 0 and holds twice client 0's class-2 data.
CLASS_COUNTS = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])


def test_tiny_game_by_hand():
    # Per-class votes of {0, 1}, renormalized over the pair: class 0 (1, 0), class 1
    # (1/2, 1/2), class 2 (1/3, 2/3):
    #   sample 0: (0.6, 0.25, 0.5) -> class 0, right
    #   sample 1: (0.5, 0.6, 0.1) -> class 1, right
    #   sample 2: (0.2, 0.15, 0.6) -> class 2, right
    # Client 1 alone falls back to its plain weight on class 0, which it never saw:
    #   (0.1, 0.2, 0.7) wrong, (0.1, 0.8, 0.1) right, (0.3, 0.1, 0.6) right.
    game = LogitConsensusUtility(PROBABILITIES, LABELS, class_counts=CLASS_COUNTS)
    masks = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=bool)
    np.testing.assert_allclose(game(masks), [1 / 3, 2 / 3, 2 / 3, 1.0])
    # Shapley of 2 players: phi_0 = (v0 - v() + v01 - v1) / 2
    np.testing.assert_allclose(ExactShapley().estimate(game.as_utility()).values, [1 / 3, 1 / 3])
    np.testing.assert_allclose(game.consensus([0, 1])[0], np.array([0.6, 0.25, 0.5]) / 1.35)


def test_client_weights_scale_votes_within_each_class():
    # Client 1 weighted 3x: sample 0 is (0.6, 0.3/4 + 0.6/4, (0.1 + 4.2)/7).
    game = LogitConsensusUtility(PROBABILITIES, LABELS, np.array([1.0, 3.0]), CLASS_COUNTS)
    expected = np.array([0.6, 0.225, 4.3 / 7])
    np.testing.assert_allclose(game.consensus([0, 1])[0], expected / expected.sum())
    without_counts = LogitConsensusUtility(PROBABILITIES, LABELS, np.array([1.0, 3.0]))
    scores = PROBABILITIES[0] + 3 * PROBABILITIES[1]
    np.testing.assert_allclose(without_counts.consensus([0, 1]), scores / scores.sum(1)[:, None])


@pytest.mark.parametrize("class_vote_weighting", [True, False])
def test_matches_the_strategy_consensus_of_each_coalition(class_vote_weighting):
    game_data = make_synthetic_logit_game(6, 300, 5, seed=2)
    weights = game_data.class_counts.sum(axis=1)
    game = LogitConsensusUtility(
        game_data.probabilities,
        game_data.labels,
        weights,
        game_data.class_counts if class_vote_weighting else None,
    )
    config = ConsensusConfig(
        mode="dsfl", era_temperature=None, class_vote_weighting=class_vote_weighting
    )
    masks = all_coalition_masks(6)[1:]
    logits = np.log(game_data.probabilities)
    expected = [
        (
            logit_consensus(logits[mask], weights[mask], config, game_data.class_counts[mask])
            .argmax(axis=1)
            == game_data.labels
        ).mean()
        for mask in masks
    ]
    np.testing.assert_allclose(game(masks), expected)
    np.testing.assert_allclose(
        game.consensus(masks[-1]),
        logit_consensus(logits, weights, config, game_data.class_counts),
        atol=1e-6,
    )


def test_neg_log_loss_by_hand():
    game = LogitConsensusUtility(
        PROBABILITIES, LABELS, class_counts=CLASS_COUNTS, metric="neg_log_loss"
    )
    # client 0 alone: true-class probabilities 0.6, 0.4, 0.6
    assert game(np.array([[True, False]]))[0] == pytest.approx(np.log([0.6, 0.4, 0.6]).mean())
    # pair: normalized consensus (see test_tiny_game_by_hand)
    pair = np.array([0.6 / 1.35, 0.6 / 1.2, 0.6 / 0.95])
    assert game(np.array([[True, True]]))[0] == pytest.approx(np.log(pair).mean())
    assert game.empty_value == pytest.approx(-np.log(3))


def test_ties_score_the_expected_accuracy_of_a_random_tie_break():
    one_hot = np.array([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])  # two clients disagree
    game = LogitConsensusUtility(one_hot, np.array([1]))
    values = game(all_coalition_masks(2))
    np.testing.assert_allclose(values, [1 / 3, 0.0, 1.0, 0.5])


def test_empty_coalition_and_voteless_samples_score_chance():
    game = LogitConsensusUtility(PROBABILITIES, LABELS, class_counts=CLASS_COUNTS)
    assert game.empty_value == pytest.approx(1 / 3)
    assert LogitConsensusUtility(PROBABILITIES, LABELS, empty_value=0.0).empty_value == 0.0
    silent = LogitConsensusUtility(np.zeros_like(PROBABILITIES), LABELS)
    np.testing.assert_allclose(silent(np.array([[True, True]])), [1 / 3])


@pytest.mark.parametrize("metric", ["accuracy", "neg_log_loss"])
def test_chain_values_match_batch_values(metric):
    game = make_synthetic_logit_game(12, 200, 4, seed=5).consensus_utility(metric=metric)
    order = np.random.default_rng(1).permutation(12)
    np.testing.assert_allclose(game.chain_values(order), game(prefix_masks(order)), atol=1e-12)


def test_exact_shapley_of_logit_game_is_efficient():
    game = make_synthetic_logit_game(10, 400, seed=4).consensus_utility()
    result = ExactShapley().estimate(game.as_utility())
    assert result.values.sum() == pytest.approx(result.grand_value - result.empty_value)
    assert result.n_evaluations == 1024


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"probabilities": PROBABILITIES[0]}, "shape"),
        ({"probabilities": np.where(PROBABILITIES > 0.5, np.nan, PROBABILITIES)}, "finite"),
        ({"probabilities": -PROBABILITIES}, "non-negative"),
        ({"labels": np.array([0, 1])}, "labels"),
        ({"labels": np.array([0, 1, 3])}, "labels"),
        ({"labels": np.array([0.5, 1, 2])}, "integers"),
        ({"weights": np.ones(3)}, "weights"),
        ({"weights": -np.ones(2)}, "non-negative"),
        ({"class_counts": np.ones(3)}, "class_counts"),
        ({"class_counts": -np.ones((2, 3))}, "non-negative"),
        ({"metric": "f1"}, "metric"),
    ],
)
def test_logit_utility_rejects_bad_input(kwargs, message):
    arguments = {"probabilities": PROBABILITIES, "labels": LABELS, **kwargs}
    with pytest.raises(ValueError, match=message):
        LogitConsensusUtility(**arguments)


# --------------------------------------------------------- weighted average
def test_weighted_average_utility_by_hand():
    params = [[np.array([0.0, 0.0]), np.array(1.0)], [np.array([4.0, 2.0]), np.array(3.0)]]
    evaluated = []

    def eval_fn(parameters):
        evaluated.append(parameters)
        return float(parameters[0].sum() + parameters[1])

    game = WeightedAverageUtility(params, eval_fn, sample_counts=[3, 1], empty_value=-1.0)
    # {0, 1}: weights 3/4, 1/4 -> layer0 (1.0, 0.5), layer1 1.5 -> 3.0
    np.testing.assert_allclose(
        game(all_coalition_masks(2)), [-1.0, 1.0, 9.0, 3.0]
    )
    assert len(evaluated) == 3  # the empty coalition is not evaluated
    result = ExactShapley().estimate(game.as_utility())
    np.testing.assert_allclose(result.values, [(2.0 + -6.0) / 2, (10.0 + 2.0) / 2])


def test_weighted_average_utility_rejects_mixed_architectures():
    with pytest.raises(ValueError, match="architecture"):
        WeightedAverageUtility([[np.zeros(2)], [np.zeros(3)]], lambda p: 0.0)
    with pytest.raises(ValueError, match="sample_counts"):
        WeightedAverageUtility([[np.zeros(2)], [np.zeros(2)]], lambda p: 0.0, sample_counts=[1, 0])
    with pytest.raises(ValueError, match="empty coalition"):
        WeightedAverageUtility([[np.zeros(2)]], lambda p: 0.0).average([])
