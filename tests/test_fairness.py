"""Fairness metrics against hand-computed values and scipy's correlations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from flhet_strategies.fairness import (
    accuracy_fairness,
    contribution_gain_correlation,
    correlation,
    fairness_summary,
    jain_index,
    worst_fraction_mean,
)


def test_jain_index_hand_computed():
    assert jain_index([1.0, 1.0]) == 1.0
    assert jain_index([1.0, 0.0]) == 0.5
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == 0.25  # one client has everything: 1/n
    assert jain_index([0.2, 0.4]) == pytest.approx(0.36 / (2 * 0.2))  # (0.6)^2 / (2 * 0.2)
    assert jain_index([0.0, 0.0]) == 1.0  # all equal
    with pytest.raises(ValueError, match="non-negative"):
        jain_index([0.5, -0.1])


def test_worst_fraction_mean_takes_the_lowest_tenth():
    ten = [0.9, 0.8, 0.3, 0.7, 0.6, 0.5, 0.95, 0.85, 0.75, 0.65]
    assert worst_fraction_mean(ten) == 0.3  # 10 clients: the worst one
    twenty = ten + [0.1] + [0.99] * 9
    assert worst_fraction_mean(twenty) == pytest.approx((0.1 + 0.3) / 2)
    assert worst_fraction_mean([0.4, 0.6, 0.8]) == 0.4  # fewer than 10: still one client
    assert worst_fraction_mean([0.4, 0.6, 0.8], 1.0) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="fraction"):
        worst_fraction_mean(ten, 0.0)


def test_accuracy_fairness_summary():
    summary = accuracy_fairness({"0": 0.5, "1": 0.7, "2": 0.9, "3": 0.7})
    assert summary == pytest.approx({"num_clients": 4, "mean": 0.7, "std": np.sqrt(0.02),
                                     "min": 0.5, "worst_10pct_mean": 0.5,
                                     "jain_index": 2.8**2 / (4 * 2.04)})
    with pytest.raises(ValueError, match="fractions"):
        accuracy_fairness({"0": 70.0})
    with pytest.raises(ValueError, match="finite"):
        accuracy_fairness({"0": float("nan")})


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=3, max_size=15))
def test_correlations_match_scipy_with_ties(pairs):
    x = np.array([a for a, _ in pairs], float)
    y = np.array([b for _, b in pairs], float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert correlation(x, y) is None and correlation(x, y, "spearman") is None
        return
    assert correlation(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-9)
    assert correlation(x, y, "spearman") == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-9)


def test_correlation_rejects_bad_input():
    with pytest.raises(ValueError, match="paired"):
        correlation([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="method"):
        correlation([1.0, 2.0], [1.0, 3.0], "kendall")


def test_contribution_gain_correlation_uses_common_clients():
    contributions = {"0": 0.3, "1": 0.1, "2": -0.2, "3": 0.2, "9": 5.0}
    gains = {"0": 0.05, "1": 0.01, "2": -0.03, "3": 0.02}
    result = contribution_gain_correlation(contributions, gains)
    assert result["num_clients"] == 4 and result["spearman"] == pytest.approx(1.0)
    assert result["pearson"] == pytest.approx(stats.pearsonr([0.3, 0.1, -0.2, 0.2],
                                                             [0.05, 0.01, -0.03, 0.02])[0])
    too_few = contribution_gain_correlation({"0": 1.0, "1": 2.0}, {"0": 0.1, "1": 0.2})
    assert too_few == {"num_clients": 2, "pearson": None, "spearman": None}


def test_fairness_summary_of_per_client_metrics():
    final = {"0": {"client_accuracy": 0.8, "global_accuracy": 0.6, "num-examples": 10},
             "1": {"client_accuracy": 0.6, "global_accuracy": 0.5},
             "2": {"client_accuracy": 0.4, "global_accuracy": 0.2}}
    local = {"0": {"client_accuracy": 0.7, "global_accuracy": 0.3},
             "1": {"client_accuracy": 0.6, "global_accuracy": 0.3},
             "2": {"client_accuracy": 0.5, "global_accuracy": 0.3}}
    summary = fairness_summary(final, local, {"0": 0.3, "1": 0.1, "2": -0.1})
    assert summary["client_accuracy"]["min"] == 0.4
    assert summary["global_accuracy"]["worst_10pct_mean"] == 0.2
    corr = summary["contribution_vs_gain"]
    assert corr["client_accuracy"]["spearman"] == pytest.approx(1.0)  # gains .1, 0, -.1
    assert corr["global_accuracy"]["spearman"] == pytest.approx(1.0)  # gains .3, .2, -.1
    # without a baseline or contributions: no correlation; without global accuracy: no entry
    assert "contribution_vs_gain" not in fairness_summary(final)
    only_own = {c: {"client_accuracy": m["client_accuracy"]} for c, m in final.items()}
    assert set(fairness_summary(only_own, local, {"0": 1.0})) == {"client_accuracy",
                                                                  "contribution_vs_gain"}
