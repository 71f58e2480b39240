"""Sampling Shapley estimators: convergence to exact values, budgets, options."""

from __future__ import annotations

import numpy as np
import pytest

from flhet_strategies.weighting.contribution import (
    CoalitionUtility,
    ExactShapley,
    GTGShapley,
    LogitConsensusUtility,
    PermutationShapley,
    RegressionAdjustedSVARM,
    ShapleyEstimator,
    StratifiedSVARM,
    estimate_shapley,
    make_estimator,
)
from flhet_strategies.weighting.contribution.stratified import (
    neyman_size_distribution,
    svarm_size_distribution,
    warmup_coalitions,
)
from synthetic_games import make_synthetic_logit_game

BUDGET = 600  # of the 1,024 coalitions of a 10-player game


@pytest.fixture(scope="module")
def logit_game() -> LogitConsensusUtility:
    game = make_synthetic_logit_game(10, 500, seed=3)
    return game.consensus_utility()


@pytest.fixture(scope="module")
def exact_values(logit_game) -> np.ndarray:
    return ExactShapley().estimate(logit_game.as_utility()).values


ESTIMATORS = {
    "permutation": lambda: PermutationShapley(BUDGET),
    "antithetic": lambda: PermutationShapley(BUDGET, antithetic=True),
    "gtg": lambda: GTGShapley(BUDGET),
    "gtg_truncated": lambda: GTGShapley(BUDGET, truncation_tol=0.03),
    "stratified_svarm": lambda: StratifiedSVARM(BUDGET),
    "stratified_svarm_neyman": lambda: StratifiedSVARM(BUDGET, allocation="neyman"),
    "regression_adjusted_svarm": lambda: RegressionAdjustedSVARM(BUDGET),
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimator_converges_to_exact_on_ten_player_logit_game(name, logit_game, exact_values):
    estimator = ESTIMATORS[name]()
    assert isinstance(estimator, ShapleyEstimator)
    result = estimator.estimate(logit_game.as_utility(), rng=0)
    assert result.n_evaluations <= BUDGET
    tolerance = 0.1 * np.abs(exact_values).max()
    np.testing.assert_allclose(result.values, exact_values, atol=tolerance)
    assert result.values @ exact_values / np.linalg.norm(result.values) / np.linalg.norm(
        exact_values
    ) > 0.99


def test_regression_adjustment_beats_plain_svarm(logit_game, exact_values):
    def error(estimator):
        estimates = [
            estimator.estimate(logit_game.as_utility(), rng=seed).values for seed in range(3)
        ]
        return np.mean([np.abs(values - exact_values).max() for values in estimates])

    assert error(RegressionAdjustedSVARM(BUDGET)) < error(StratifiedSVARM(BUDGET))


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_same_seed_same_estimate(name, logit_game):
    first = ESTIMATORS[name]().estimate(logit_game.as_utility(), rng=7).values
    second = ESTIMATORS[name]().estimate(logit_game.as_utility(), rng=7).values
    np.testing.assert_array_equal(first, second)


def test_budgets_are_respected_on_a_large_game():
    game = make_synthetic_logit_game(30, 200, seed=0)
    consensus = game.consensus_utility()
    for budget in (400, 700):
        for make in (
            lambda b: PermutationShapley(b),
            lambda b: PermutationShapley(b, antithetic=True),
            lambda b: GTGShapley(b, truncation_tol=0.05),
            lambda b: StratifiedSVARM(b),
            lambda b: RegressionAdjustedSVARM(b),
        ):
            utility = consensus.as_utility()
            result = make(budget).estimate(utility, rng=1)
            assert result.n_evaluations == utility.n_evaluations <= budget
            assert result.n_evaluations > 0.9 * budget - 2 * 30  # spends most of it


def test_too_small_budgets_raise_clear_errors():
    utility = CoalitionUtility(lambda m: m.sum(1).astype(float), 20)
    with pytest.raises(ValueError, match="budget"):
        PermutationShapley(10).estimate(utility)
    with pytest.raises(ValueError, match="budget"):
        StratifiedSVARM(50).estimate(utility)
    with pytest.raises(ValueError, match="n_permutations"):
        PermutationShapley()


def test_regression_adjusted_svarm_is_exact_on_additive_games():
    weights = np.random.default_rng(0).normal(size=25)
    additive = CoalitionUtility(lambda m: 1.0 + m @ weights, 25)
    result = RegressionAdjustedSVARM(budget=400).estimate(additive, rng=0)
    np.testing.assert_allclose(result.values, weights, atol=1e-8)


def test_stratified_svarm_handles_tiny_games_exactly():
    glove = CoalitionUtility(lambda m: np.minimum(m[:, 0], m[:, 1:].sum(axis=1)), 3)
    result = StratifiedSVARM(budget=100).estimate(glove)
    np.testing.assert_allclose(result.values, [2 / 3, 1 / 6, 1 / 6])


def test_svarm_without_warmup_still_estimates(logit_game, exact_values):
    result = StratifiedSVARM(BUDGET, warmup=False).estimate(logit_game.as_utility(), rng=0)
    np.testing.assert_allclose(result.values, exact_values, atol=0.1 * np.abs(exact_values).max())


def test_size_distributions_cover_inner_sizes_only():
    for n_players in (4, 5, 10, 51):
        probabilities = svarm_size_distribution(n_players)
        assert probabilities.sum() == pytest.approx(1.0)
        assert probabilities[[0, 1, n_players - 1, n_players]].sum() == 0
        assert (probabilities[2 : n_players - 1] > 0).all()
    masks = np.random.default_rng(0).random((300, 12)) < 0.3
    values = masks.sum(axis=1) ** 0.5
    neyman = neyman_size_distribution(masks, values)
    assert neyman.sum() == pytest.approx(1.0) and (neyman[2:11] > 0).all()


def test_warmup_puts_every_player_inside_and_outside_every_inner_size():
    n_players = 11
    masks = warmup_coalitions(n_players, np.random.default_rng(0))
    sizes = masks.sum(axis=1)
    for size in range(2, n_players - 1):
        at_size = masks[sizes == size]
        assert at_size.any(axis=0).all() and (~at_size).any(axis=0).all()


def test_gtg_truncation_skips_marginals_but_keeps_efficiency(logit_game):
    utility = logit_game.as_utility()
    result = GTGShapley(BUDGET, truncation_tol=0.05).estimate(utility, rng=0)
    assert result.info["truncated_fraction"] > 0
    assert result.values.sum() == pytest.approx(result.grand_value - result.empty_value)
    paper = GTGShapley(BUDGET, truncation_tol=0.05, spread_residual=False).estimate(
        logit_game.as_utility(), rng=0
    )
    assert abs(paper.values.sum() - (paper.grand_value - paper.empty_value)) < 0.05 * abs(
        paper.grand_value - paper.empty_value
    )


def test_gtg_guided_sampling_lets_each_player_lead_in_turn():
    seen_leaders = []

    def batch(masks):
        for row in masks:
            if row.sum() == 1:
                seen_leaders.append(int(np.flatnonzero(row)[0]))
        return masks.sum(axis=1).astype(float)

    GTGShapley(budget=100).estimate(CoalitionUtility(batch, 6, memoize=False), rng=0)
    assert seen_leaders[:12] == list(range(6)) * 2


def test_gtg_convergence_rule_stops_early():
    utility = CoalitionUtility(lambda m: (m.sum(1) >= 3).astype(float), 8)
    result = GTGShapley(budget=10_000, convergence_tol=0.05).estimate(utility, rng=0)
    assert result.n_samples < 10_000 and result.n_samples % 8 == 0


def test_make_estimator_auto_and_names(logit_game, exact_values):
    assert isinstance(make_estimator("auto", budget=2000, n_players=10), ExactShapley)
    assert isinstance(make_estimator("auto", budget=2000, n_players=50), RegressionAdjustedSVARM)
    result = estimate_shapley(logit_game.as_utility(), budget=2000)
    np.testing.assert_allclose(result.values, exact_values)
    assert make_estimator("permutation_antithetic", budget=500).antithetic
    with pytest.raises(ValueError, match="Unknown Shapley estimator"):
        make_estimator("kernel", budget=10)
    with pytest.raises(ValueError, match="n_players"):
        make_estimator("auto")
