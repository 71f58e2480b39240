"""``[adaptive]`` experiments: the adaptive run and its unadapted twin in one invocation."""

import pytest

from flhet_strategies.weighting.adaptive import AdaptiveWeighting
from flhet_strategies.weighting.contribution.weighting import ContributionWeighting
from simulations.config import ConfigError, load_config
from simulations.experiment import build_strategy, contribution_ledger
from simulations.phases import experiment_phases
from simulations.runner import run_experiment

CONFIG = "simulations/configs/digits_free_rider.toml"


def _cfg(**changes):
    return load_config(CONFIG).with_overrides(**{"adaptive.enabled": True, **changes})


def test_adaptive_wraps_the_configured_weights_and_keeps_the_ledger_reachable():
    cfg = _cfg(**{"contribution.enabled": True})
    strategy = build_strategy(cfg)
    weight_fn = strategy.core.weight_fn
    assert isinstance(weight_fn, AdaptiveWeighting)
    assert isinstance(weight_fn.inner, ContributionWeighting)
    assert contribution_ledger(strategy) is weight_fn.inner.ledger
    names = [p.name for p in experiment_phases(cfg)]
    assert names == ["main", "local_only", "sample_count_weighting", "unadapted"]
    unadapted = [p for p in experiment_phases(cfg) if p.name == "unadapted"][0].build()
    assert isinstance(unadapted.core.weight_fn, ContributionWeighting)
    assert unadapted.phase == "unadapted"
    assert unadapted.driver.train(1, ["0"], {})["0"].config["flhet-phase"] == "unadapted"


def test_adaptive_is_refused_with_private_aggregation():
    with pytest.raises(ConfigError, match="adaptive"):
        _cfg(**{"dp.enabled": True, "dp.noise_multiplier": 1.0,
                "strategy.class_vote_weighting": False})


@pytest.mark.integration
def test_adaptive_run_reports_rounds_to_target_against_its_unadapted_twin(tmp_path):
    cfg = _cfg(num_rounds=4)
    results = run_experiment(cfg, tmp_path)
    section = results["adaptive"]
    unadapted = results["baselines"]["unadapted"]
    assert section["unadapted_final"] == pytest.approx(unadapted["global_accuracy_mean"])
    assert section["adaptive_final"] == pytest.approx(results["final"]["global_accuracy_mean"])
    assert section["target"] == pytest.approx(0.95 * section["unadapted_final"])
    assert section["unadapted_rounds"] is not None and section["unadapted_rounds"] <= 4
    # The random-predicting free-rider (client 4) is weighted down by the rule.
    factors = section["final_factors"]
    assert factors["4"] < 0.2 < min(factors[c] for c in ("0", "1", "2", "3"))
    last = results["history"][-1]
    assert "4" in last["per_client"]
