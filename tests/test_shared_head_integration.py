"""LG-FedAvg and FedGH end to end in Flower's simulation engine (Ray), on both API faces,
with heterogeneous architectures of different native feature widths."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.config import ConfigError, from_dict
from simulations.runner import run_experiment

HEAD_BYTES = 10 * (16 + 1) * 4          # a (C, d + 1) float32 head, C = 10, d = 16


def _raw(strategy: str, api: str, **extra) -> dict:
    return {
        "name": f"digits_{strategy}", "seed": 0, "num_rounds": 2, "api": api,
        "data": {"dataset": "digits", "num_clients": 4, "proxy_size": 100,
                 "proxy_validation_size": 20,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40}},
        "strategy": {"name": strategy, "feature_dim": 16, "server_epochs": 5},
        "recipe": {"local_epochs": 2, "warmup_epochs": 3},
        "clients": [{"architecture": "cnn_small", "lr": 0.03},
                    {"architecture": "lenet5", "lr": 0.03},
                    {"architecture": "mlp", "lr": 0.03},
                    {"architecture": "vit_tiny", "optimizer": "adamw", "lr": 0.002}],
        **extra,
    }


@pytest.mark.integration
@pytest.mark.parametrize("strategy, api", [("lgfedavg", "message"), ("fedgh", "compat")])
def test_shared_head_strategy_runs_in_the_simulation_engine(tmp_path, strategy, api) -> None:
    results = run_experiment(from_dict(_raw(strategy, api)), tmp_path)
    assert results["strategy"] == strategy and results["api"] == api
    history = results["history"]
    assert [r["round"] for r in history] == [1, 2]
    assert all(r["num_failures"] == 0 and len(r["per_client"]) == 4 for r in history)
    up = HEAD_BYTES if strategy == "lgfedavg" else 10 * 16 * 4 + 10 * 8   # head, or prototypes
    assert history[0]["bytes_up"] == 4 * up
    # each round every client gets the head to train with and to score with
    assert history[1]["bytes_down"] == 4 * 2 * HEAD_BYTES
    assert history[-1]["client_accuracy_mean"] > 0.3
    local = results["baselines"]["local_only"]
    assert local["client_accuracy_mean"] > 0.3
    assert all(r["bytes_down"] == 0 for r in local["history"])   # no head exchange
    state = np.load(tmp_path / "server_state.npz")
    assert state["head"].shape == (10, 17) and bool(state["released"])


def test_shared_head_strategies_refuse_clients_that_cannot_embed() -> None:
    raw = _raw("lgfedavg", "message")
    raw["clients"][-1] = {"architecture": "sklearn:sgd_logreg"}
    with pytest.raises(ConfigError, match="shares a head over features: every client must "
                                          "embed.*sklearn:sgd_logreg"):
        from_dict(raw)


def test_shared_head_strategies_need_a_feature_dim_and_their_own_recipe() -> None:
    raw = _raw("fedgh", "message")
    raw["strategy"].pop("feature_dim")
    with pytest.raises(ConfigError, match="feature_dim"):
        from_dict(raw)
    raw = _raw("lgfedavg", "message")
    raw["recipe"]["proto_weight"] = 1.0
    with pytest.raises(ConfigError, match="unknown key.*proto_weight"):
        from_dict(raw)
    raw = _raw("lgfedavg", "message")
    raw["strategy"]["weighting"] = "class_counts"
    with pytest.raises(ConfigError, match="weighting must be one of.*sample_count"):
        from_dict(raw)


def test_fedgh_refuses_privacy_and_lgfedavg_takes_it() -> None:
    with pytest.raises(ConfigError, match="FedGH trains on every client's prototypes.*lgfedavg"):
        from_dict(_raw("fedgh", "message", dp={"enabled": True, "noise_multiplier": 1.0}))
    cfg = from_dict(_raw("lgfedavg", "message", paillier={"enabled": True},
                         dp={"enabled": True, "mode": "distributed", "noise_multiplier": 1.0}))
    assert cfg.strategy.features and cfg.dp.enabled and cfg.paillier.enabled
