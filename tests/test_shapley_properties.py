"""Shapley axioms and known closed-form values (exact estimator, coalition utility)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flhet_strategies.weighting.contribution import (
    CoalitionUtility,
    ExactShapley,
    GTGShapley,
    PermutationShapley,
)
from flhet_strategies.weighting.contribution.exact import all_coalition_masks

BIT_WEIGHTS = 2 ** np.arange(8)


def table_game(table: np.ndarray) -> CoalitionUtility:
    """Game whose value of coalition ``S`` is ``table[sum_{i in S} 2**i]``."""
    n_players = int(np.log2(table.size))
    return CoalitionUtility(lambda masks: table[masks @ BIT_WEIGHTS[:n_players]], n_players)


def exact(table: np.ndarray) -> np.ndarray:
    return ExactShapley().estimate(table_game(table)).values


@st.composite
def random_tables(draw, min_players: int = 1, max_players: int = 6) -> np.ndarray:
    n_players = draw(st.integers(min_players, max_players))
    values = draw(
        st.lists(
            st.floats(-10, 10, allow_nan=False, allow_infinity=False),
            min_size=2**n_players,
            max_size=2**n_players,
        )
    )
    return np.array(values)


def swap_players(table: np.ndarray, first: int, second: int) -> np.ndarray:
    codes = np.arange(table.size)
    bit_first, bit_second = (codes >> first) & 1, (codes >> second) & 1
    swapped = codes & ~((1 << first) | (1 << second))
    swapped |= (bit_first << second) | (bit_second << first)
    return table[swapped]


# ------------------------------------------------------------------ axioms
@settings(max_examples=60, deadline=None)
@given(random_tables())
def test_efficiency(table):
    values = exact(table)
    assert values.sum() == pytest.approx(table[-1] - table[0], abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(random_tables(min_players=2))
def test_symmetry(table):
    symmetric = (table + swap_players(table, 0, 1)) / 2
    values = exact(symmetric)
    assert values[0] == pytest.approx(values[1], abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(random_tables(min_players=2), st.data())
def test_null_player(table, data):
    n_players = int(np.log2(table.size))
    null = data.draw(st.integers(0, n_players - 1))
    without_null = table[np.arange(table.size) & ~(1 << null)]  # v(S) = v(S \ {null})
    values = exact(without_null)
    assert values[null] == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(random_tables(max_players=5), st.data(), st.floats(-3, 3, allow_nan=False))
def test_additivity_and_homogeneity(table, data, scale):
    floats = st.floats(-10, 10, allow_nan=False)
    other = np.array(data.draw(st.lists(floats, min_size=table.size, max_size=table.size)))
    np.testing.assert_allclose(exact(table + other), exact(table) + exact(other), atol=1e-9)
    np.testing.assert_allclose(exact(scale * table), scale * exact(table), atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(random_tables(min_players=2, max_players=6), st.integers(0, 2**31 - 1))
def test_permutation_estimators_are_efficient_and_zero_a_null_player(table, seed):
    n_players = int(np.log2(table.size))
    null_table = table[np.arange(table.size) & ~1]  # player 0 is null
    for estimator in (
        PermutationShapley(n_permutations=7),
        PermutationShapley(n_permutations=6, antithetic=True),
        GTGShapley(budget=3 * n_players, truncation_tol=0.2),
    ):
        result = estimator.estimate(table_game(null_table), rng=seed)
        assert result.values.sum() == pytest.approx(null_table[-1] - null_table[0], abs=1e-9)
        if not isinstance(estimator, GTGShapley):  # GTG spreads truncated gaps evenly
            assert result.values[0] == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------- known games
def test_glove_game():
    # player 0 holds a left glove, players 1 and 2 right gloves
    glove = CoalitionUtility(lambda m: np.minimum(m[:, 0], m[:, 1:].sum(axis=1)), 3)
    np.testing.assert_allclose(ExactShapley().estimate(glove).values, [2 / 3, 1 / 6, 1 / 6])


def test_glove_game_two_by_two_splits_evenly():
    glove = CoalitionUtility(lambda m: np.minimum(m[:, :2].sum(1), m[:, 2:].sum(1)), 4)
    np.testing.assert_allclose(ExactShapley().estimate(glove).values, [0.5] * 4)


def test_additive_game():
    weights = np.array([3.0, -1.0, 0.5, 2.0, 0.0])
    additive = CoalitionUtility(lambda m: 7.0 + m @ weights, 5)
    np.testing.assert_allclose(ExactShapley().estimate(additive).values, weights, atol=1e-12)


@pytest.mark.parametrize("carriers", [[0], [1, 3], [0, 2, 4, 5]])
def test_unanimity_game(carriers):
    unanimity = CoalitionUtility(lambda m: m[:, carriers].all(axis=1).astype(float), 6)
    expected = np.zeros(6)
    expected[carriers] = 1 / len(carriers)
    np.testing.assert_allclose(ExactShapley().estimate(unanimity).values, expected, atol=1e-12)


def test_weighted_majority_game():
    # quota 3, votes (2, 1, 1): the big voter is pivotal in 4 of 6 orders
    votes = np.array([2, 1, 1])
    majority = CoalitionUtility(lambda m: (m @ votes >= 3).astype(float), 3)
    np.testing.assert_allclose(ExactShapley().estimate(majority).values, [2 / 3, 1 / 6, 1 / 6])


def test_airport_game():
    # cost of a runway long enough for the largest plane; sorted costs c_1 <= ... <= c_n:
    # phi_k = sum_{j <= k} (c_j - c_{j-1}) / (n - j + 1)
    costs = np.array([1.0, 3.0, 4.0, 8.0])
    airport = CoalitionUtility(lambda m: np.where(m, costs, 0.0).max(axis=1), 4)
    steps = np.diff(costs, prepend=0.0) / (4 - np.arange(4))
    np.testing.assert_allclose(ExactShapley().estimate(airport).values, np.cumsum(steps))


def test_set_function_utility_matches_mask_utility():
    def value(coalition: frozenset) -> float:
        return float(len(coalition) ** 2 + (2 in coalition))

    from_sets = CoalitionUtility.from_set_function(value, 4)
    from_masks = CoalitionUtility(lambda m: m.sum(1) ** 2 + m[:, 2], 4)
    np.testing.assert_allclose(
        ExactShapley().estimate(from_sets).values, ExactShapley().estimate(from_masks).values
    )
    assert from_sets(frozenset({0, 2})) == 5.0


def test_exact_refuses_large_games_with_guidance():
    with pytest.raises(ValueError, match="StratifiedSVARM"):
        ExactShapley(max_players=8).estimate(CoalitionUtility(lambda m: m.sum(1), 9))


def test_exact_evaluates_every_coalition_once():
    utility = CoalitionUtility(lambda m: m.sum(1).astype(float), 7)
    result = ExactShapley().estimate(utility)
    assert result.n_evaluations == 2**7 == result.n_samples
    assert all_coalition_masks(7).shape == (128, 7)


# ------------------------------------------------------- coalition utility
def test_utility_memoizes_and_counts():
    calls = []

    def batch(masks):
        calls.append(masks.shape[0])
        return masks.sum(axis=1).astype(float)

    utility = CoalitionUtility(batch, 4)
    masks = np.array([[1, 0, 0, 1], [1, 0, 0, 1], [0, 1, 0, 0]], dtype=bool)
    assert utility.cost(masks) == 2
    np.testing.assert_array_equal(utility.evaluate(masks), [2, 2, 1])
    assert utility.n_evaluations == 2 and calls == [2]
    assert utility(frozenset({0, 3})) == 2.0 and utility.n_evaluations == 2
    assert utility.cost(masks) == 0


def test_utility_without_memo_counts_every_call():
    utility = CoalitionUtility(lambda m: m.sum(1).astype(float), 3, memoize=False)
    utility([0, 1])
    utility([0, 1])
    assert utility.n_evaluations == 2


def test_chain_fast_path_counts_only_new_coalitions():
    weights = np.array([1.0, 2.0, 4.0])
    utility = CoalitionUtility(
        lambda m: m @ weights,
        3,
        chain_value_fn=lambda order: np.concatenate(([0.0], np.cumsum(weights[order]))),
    )
    utility([2])
    np.testing.assert_array_equal(utility.evaluate_chain(np.array([2, 0, 1])), [0, 4, 5, 7])
    assert utility.n_evaluations == 4  # {2} was cached


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 3), dtype=bool), "shape"),
        (np.full((1, 4), 2), "boolean"),
    ],
)
def test_utility_rejects_bad_masks(bad, message):
    with pytest.raises(ValueError, match=message):
        CoalitionUtility(lambda m: m.sum(1), 4).evaluate(bad)


def test_utility_rejects_nan_values_and_bad_indices():
    with pytest.raises(ValueError, match="NaN"):
        CoalitionUtility(lambda m: np.full(m.shape[0], np.nan), 2)([0])
    with pytest.raises(ValueError, match="indices"):
        CoalitionUtility(lambda m: m.sum(1), 2)([5])
    with pytest.raises(ValueError, match="permutation"):
        CoalitionUtility(lambda m: m.sum(1), 3).evaluate_chain(np.array([0, 0, 1]))
