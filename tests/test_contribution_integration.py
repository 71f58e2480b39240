"""Contribution weighting end to end: two rounds through Flower's simulation engine (Ray,
Message API) on scikit-learn digits, four clients of which one free-rides."""

from __future__ import annotations

import json

import pytest

from simulations.config import from_dict
from simulations.contribution_report import contribution_markdown, write_contributions_png
from simulations.experiment import contribution_ledger
from simulations.reporting import validate_results
from simulations.results import assemble_results
from simulations.runner import simulate_strategy

pytestmark = pytest.mark.integration

FREE_RIDER = "3"


@pytest.fixture(scope="module")
def run():
    cfg = from_dict({
        "name": "contribution-it", "seed": 0, "num_rounds": 2, "api": "message",
        "data": {"dataset": "digits", "num_clients": 4,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40},
                 "proxy_size": 300, "proxy_validation_size": 100},
        "strategy": {"proxy_per_round": 150},
        "recipe": {"warmup_epochs": 1, "local_epochs": 1, "final_private_epochs": 1},
        "contribution": {"enabled": True},
        "clients": [{"architecture": "cnn_small", "lr": 0.05},
                    {"architecture": "mlp", "lr": 0.05},
                    {"architecture": "sklearn:sgd_logreg"},
                    {"architecture": "mlp", "role": "free_rider"}],
    })
    return cfg, simulate_strategy(cfg)


def test_contributions_are_recorded_every_round_and_the_free_rider_ranks_last(run):
    cfg, strategy = run
    ledger = contribution_ledger(strategy).to_dict()
    assert [r["round"] for r in ledger["rounds"]] == [1, 2]
    for entry in ledger["rounds"]:
        assert set(entry["values"]) == {"0", "1", "2", "3"}
        assert entry["estimator"] == "exact" and entry["n_evaluations"] == 2**4
        # efficiency: the values add up to what the whole cohort adds over chance
        assert sum(entry["values"].values()) == pytest.approx(
            entry["grand_value"] - entry["empty_value"])
    total = ledger["total"]
    assert min(total, key=total.get) == FREE_RIDER and total[FREE_RIDER] <= 0.0
    # contribution weights (mix = 1): a client with a negative score has no say
    for entry in strategy.history:
        assert entry["weights"][FREE_RIDER] == 0.0 < max(entry["weights"].values())


def test_results_carry_contributions_roles_and_fairness(run, tmp_path):
    cfg, strategy = run
    results = assemble_results(cfg, strategy.history, None, 1.0,
                               contributions=contribution_ledger(strategy).to_dict())
    roles = {c["id"]: c["role"] for c in results["clients"]}
    assert roles == {0: "", 1: "", 2: "", 3: "free_rider"}
    assert set(results["contributions"]) == {"rounds", "total"}
    fairness = results["fairness"]["client_accuracy"]
    per_client = [m["client_accuracy"] for m in results["history"][-1]["per_client"].values()]
    assert fairness["min"] == min(per_client) and 0.25 <= fairness["jain_index"] <= 1.0
    json.dumps(results, allow_nan=False)  # strict JSON
    with pytest.raises(ValueError, match="local_only"):
        validate_results(results)  # no local-only baseline in this short run
    png = write_contributions_png(results, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = "\n".join(contribution_markdown(results))
    assert "| 3 | free_rider |" in text and "Jain" in text and "contributions.png" in text
