"""Summary statistics of the multi-seed benchmark."""

import pytest

from simulations.seed_benchmark import format_summary, summarize_seeds


def _result(seed, fed, local):
    return {"seed": seed, "wall_seconds": 100.0 + seed,
            "final": {"client_accuracy_mean": fed[0], "global_accuracy_mean": fed[1]},
            "baselines": {"local_only": {"client_accuracy_mean": local[0],
                                         "global_accuracy_mean": local[1]}},
            "margins": {"client_accuracy_points": 100 * (fed[0] - local[0]),
                        "global_accuracy_points": 100 * (fed[1] - local[1])}}


def test_mean_and_spread_over_seeds():
    summary = summarize_seeds([_result(0, (0.90, 0.70), (0.91, 0.40)),
                               _result(1, (0.92, 0.74), (0.91, 0.44))])
    assert summary["seeds"] == [0, 1]
    assert summary["global_accuracy_points"]["mean"] == pytest.approx(30.0)
    assert summary["client_accuracy_points"]["values"] == pytest.approx([-1.0, 1.0])
    assert summary["client_accuracy_points"]["std"] == pytest.approx(1.0)
    assert "global_accuracy_points" in format_summary(summary)


def test_results_without_baseline_are_refused():
    with pytest.raises(ValueError, match="local-only"):
        summarize_seeds([{"seed": 0}])
