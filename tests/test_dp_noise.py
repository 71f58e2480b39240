"""Clipping, sensitivity and Gaussian noise of flhet_strategies.privacy.dp (no Flower)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flhet_strategies.privacy.dp.clipping import (
    clip_by_l2_norm,
    clip_payload,
    clip_rows_by_l2_norm,
    payload_norm_bound,
)
from flhet_strategies.privacy.dp.gaussian import (
    add_central_noise,
    add_noise_share,
    noise_share_std,
    realized_noise_multiplier,
)
from flhet_strategies.privacy.dp.postprocess import noisy_rows_to_probabilities
from flhet_strategies.privacy.dp.sensitivity import (
    ADD_OR_REMOVE_ONE,
    REPLACE_ONE,
    accounting_noise_multiplier,
    prediction_payload_sensitivity,
    sensitivity_factor,
    sum_sensitivity,
)
from flhet_strategies.aggregation.logit_consensus import softmax

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
bounds = st.floats(1e-3, 1e3)

# ------------------------------------------------------------------- clipping


@given(values=hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=8), elements=finite),
       clip_norm=bounds)
@settings(max_examples=150, deadline=None)
def test_flat_clipping_bounds_the_norm_and_keeps_small_payloads(values: np.ndarray,
                                                                clip_norm: float) -> None:
    clipped = clip_by_l2_norm(values, clip_norm)
    norm = np.linalg.norm(values.ravel())
    assert clipped.shape == values.shape
    assert np.linalg.norm(clipped.ravel()) <= clip_norm * (1 + 1e-12)
    if norm <= clip_norm:
        np.testing.assert_array_equal(clipped, values)
    else:  # same direction, scaled down
        np.testing.assert_allclose(clipped, values * (clip_norm / norm), rtol=1e-12)


@given(values=hnp.arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 6)),
                         elements=finite),
       row_clip=bounds)
@settings(max_examples=150, deadline=None)
def test_per_row_clipping_bounds_every_row_and_the_whole_payload(values: np.ndarray,
                                                                 row_clip: float) -> None:
    clipped = clip_rows_by_l2_norm(values, row_clip)
    row_norms = np.linalg.norm(values, axis=1)
    assert np.all(np.linalg.norm(clipped, axis=1) <= row_clip * (1 + 1e-12))
    np.testing.assert_array_equal(clipped[row_norms <= row_clip], values[row_norms <= row_clip])
    bound = payload_norm_bound(row_clip, "per-row", values.shape[0])
    assert np.linalg.norm(clipped) <= bound * (1 + 1e-12)


def test_clipping_rejects_bad_input_with_clear_messages() -> None:
    with pytest.raises(ValueError, match="NaN/Inf"):
        clip_by_l2_norm(np.array([1.0, np.nan]), 1.0)
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        clip_by_l2_norm(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="2-D"):
        clip_rows_by_l2_norm(np.ones(3), 1.0)
    with pytest.raises(ValueError, match="numeric"):
        clip_by_l2_norm(np.array(["a"]), 1.0)
    with pytest.raises(ValueError, match="clip mode"):
        clip_payload(np.ones((2, 2)), 1.0, mode="rows")
    with pytest.raises(ValueError, match="num_rows"):
        payload_norm_bound(1.0, "per-row")


# ---------------------------------------------------------------- sensitivity


def test_sensitivity_factors_follow_the_derivation() -> None:
    assert sensitivity_factor(ADD_OR_REMOVE_ONE) == 1.0
    assert sensitivity_factor(REPLACE_ONE, non_negative=False) == 2.0
    assert sensitivity_factor(REPLACE_ONE, non_negative=True) == pytest.approx(math.sqrt(2))
    assert sum_sensitivity(3.0, REPLACE_ONE) == 6.0
    assert accounting_noise_multiplier(2.0, REPLACE_ONE, non_negative=True) == pytest.approx(
        2.0 / math.sqrt(2))
    # Unclipped probability payloads: ||P||_F <= sqrt(m); clipping above that changes nothing.
    assert prediction_payload_sensitivity(100, ADD_OR_REMOVE_ONE) == pytest.approx(10.0)
    assert prediction_payload_sensitivity(100, REPLACE_ONE) == pytest.approx(math.sqrt(200))
    assert prediction_payload_sensitivity(100, REPLACE_ONE, clip_norm=50.0) == pytest.approx(
        math.sqrt(200))
    assert prediction_payload_sensitivity(100, REPLACE_ONE, clip_norm=2.0) == pytest.approx(
        2.0 * math.sqrt(2))
    assert prediction_payload_sensitivity(100, ADD_OR_REMOVE_ONE, 0.1, "per-row") == pytest.approx(
        1.0)
    with pytest.raises(ValueError, match="relation"):
        sensitivity_factor("swap-one")


def _random_prediction_payloads(rng: np.random.Generator, count: int, rows: int,
                                classes: int) -> np.ndarray:
    """Probability payloads from flat to one-hot (temperature spread over 4 decades)."""
    sharpness = 10.0 ** rng.uniform(-1, 3, size=(count, 1, 1))
    return softmax(rng.normal(size=(count, rows, classes)) * sharpness)


@pytest.mark.parametrize("mode, clip", [("flat", 2.5), ("per-row", 0.3), ("flat", 100.0)])
def test_clipped_prediction_sums_never_move_more_than_the_derived_bound(mode: str,
                                                                        clip: float) -> None:
    rng = np.random.default_rng(11)
    rows, classes, cohort, trials = 20, 6, 5, 400
    replace_bound = prediction_payload_sensitivity(rows, REPLACE_ONE, clip, mode)
    remove_bound = prediction_payload_sensitivity(rows, ADD_OR_REMOVE_ONE, clip, mode)
    worst_replace = worst_remove = 0.0
    for _ in range(trials):
        payloads = _random_prediction_payloads(rng, cohort + 1, rows, classes)
        clipped = np.stack([clip_payload(p, clip, mode) for p in payloads])
        base = clipped[:cohort].sum(axis=0)
        replaced = base - clipped[0] + clipped[cohort]        # replace client 0
        removed = base - clipped[0]                             # remove client 0
        worst_replace = max(worst_replace, float(np.linalg.norm(base - replaced)))
        worst_remove = max(worst_remove, float(np.linalg.norm(base - removed)))
    assert worst_replace <= replace_bound * (1 + 1e-9)
    assert worst_remove <= remove_bound * (1 + 1e-9)
    assert worst_replace > 0.5 * replace_bound  # the random search gets near the bound


def test_prediction_bound_is_tight_and_signed_payloads_need_twice_the_clip() -> None:
    rows, classes, clip = 16, 4, 1.5
    one_hot_a = np.zeros((rows, classes))
    one_hot_a[:, 0] = 1.0
    one_hot_b = np.zeros((rows, classes))
    one_hot_b[:, 1] = 1.0
    change = clip_payload(one_hot_a, clip) - clip_payload(one_hot_b, clip)
    assert np.linalg.norm(change) == pytest.approx(math.sqrt(2) * clip)  # attained
    # Unclipped, two one-hot payloads differ by sqrt(2 m): the natural bound.
    assert np.linalg.norm(one_hot_a - one_hot_b) == pytest.approx(
        prediction_payload_sensitivity(rows, REPLACE_ONE))
    # A signed payload (a model update) and its negation differ by 2 S: the sqrt(2) bound
    # is only valid for non-negative payloads.
    update = clip_payload(np.random.default_rng(0).normal(size=50), clip)
    assert np.linalg.norm(update - (-update)) == pytest.approx(
        sum_sensitivity(clip, REPLACE_ONE, non_negative=False))


# ----------------------------------------------------------------------- noise


def test_distributed_shares_sum_to_the_central_noise_variance() -> None:
    rng = np.random.default_rng(2024)
    z, bound, n, entries = 1.5, 2.0, 8, 40_000
    shares = np.stack([add_noise_share(np.zeros(entries), z, bound, n, rng) for _ in range(n)])
    total = shares.sum(axis=0)
    # Sample std of N = 40k draws is within 4 / sqrt(2 N) ~ 1.4% of the true std.
    assert np.std(total) == pytest.approx(z * bound, rel=0.015)
    assert np.std(shares[0]) == pytest.approx(noise_share_std(z, bound, n), rel=0.015)
    assert abs(np.mean(total)) < 4 * z * bound / math.sqrt(entries)
    # Shares are independent: the sum's variance is n times a share's, not n^2 times.
    assert np.var(total) / np.var(shares[0]) == pytest.approx(n, rel=0.04)
    central = add_central_noise(np.zeros(entries), z, bound, rng)
    assert np.std(central) == pytest.approx(z * bound, rel=0.015)


def test_dropouts_leave_less_noise_and_the_realized_multiplier_says_how_much() -> None:
    rng = np.random.default_rng(5)
    z, bound, expected, received, entries = 2.0, 1.0, 10, 6, 40_000
    total = sum(add_noise_share(np.zeros(entries), z, bound, expected, rng)
                for _ in range(received))
    realized = realized_noise_multiplier(z, expected, received)
    assert realized == pytest.approx(z * math.sqrt(0.6))
    assert np.std(total) == pytest.approx(realized * bound, rel=0.015)
    with pytest.raises(ValueError, match="dp-num-clients"):
        realized_noise_multiplier(z, expected, expected + 1)


def test_noise_is_reproducible_with_an_injected_generator_and_checks_input() -> None:
    a = add_noise_share(np.ones((3, 4)), 1.0, 1.0, 2, np.random.default_rng(7))
    b = add_noise_share(np.ones((3, 4)), 1.0, 1.0, 2, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="NaN/Inf"):
        add_central_noise(np.array([np.inf]), 1.0, 1.0)
    with pytest.raises(ValueError, match="num_clients"):
        add_noise_share(np.ones(3), 1.0, 1.0, 0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        add_noise_share(np.ones(3), -1.0, 1.0, 1)


def test_noisy_rows_go_back_onto_the_simplex() -> None:
    noisy = np.array([[0.7, -0.2, 0.5], [-1.0, -2.0, -0.5], [0.2, 0.3, 0.5]])
    probs = noisy_rows_to_probabilities(noisy, floor=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert np.all(probs > 0)
    np.testing.assert_allclose(probs[2], noisy[2])                  # already a distribution
    assert probs[0, 0] / probs[0, 2] == pytest.approx(0.7 / 0.5)    # clamp then renormalise
    np.testing.assert_allclose(noisy_rows_to_probabilities(noisy)[1], 1 / 3)  # all negative
    with pytest.raises(ValueError, match="floor"):
        noisy_rows_to_probabilities(noisy, floor=0.5)
