"""FedProto and FedTGP end to end in Flower's simulation engine (Ray), on both API faces,
with heterogeneous architectures of different native feature widths."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.config import ConfigError, from_dict
from simulations.runner import run_experiment


def _raw(strategy: str, api: str, **extra) -> dict:
    return {
        "name": f"digits_{strategy}", "seed": 0, "num_rounds": 2, "api": api,
        "data": {"dataset": "digits", "num_clients": 4, "proxy_size": 100,
                 "proxy_validation_size": 20,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40}},
        "strategy": {"name": strategy, "feature_dim": 16, "server_epochs": 5},
        "recipe": {"local_epochs": 2, "warmup_epochs": 3, "proto_weight": 1.0},
        "clients": [{"architecture": "cnn_small", "lr": 0.03},
                    {"architecture": "lenet5", "lr": 0.03},
                    {"architecture": "mlp", "lr": 0.03},
                    {"architecture": "vit_tiny", "optimizer": "adamw", "lr": 0.002}],
        **extra,
    }


@pytest.mark.integration
@pytest.mark.parametrize("strategy, api", [("fedproto", "message"), ("fedtgp", "compat")])
def test_prototype_strategy_runs_in_the_simulation_engine(tmp_path, strategy, api) -> None:
    raw = _raw(strategy, api)
    results = run_experiment(from_dict(raw), tmp_path)
    assert results["strategy"] == strategy and results["api"] == api
    history = results["history"]
    assert [r["round"] for r in history] == [1, 2]
    assert all(r["num_failures"] == 0 for r in history)
    # every client uploads (C, 16) float32 prototypes and its counts: 10*16*4 + 10*8 bytes
    assert history[0]["bytes_up"] == 4 * (10 * 16 * 4 + 10 * 8)
    # and downloads the (C, 16) global prototypes and their uint8 class mask
    assert history[1]["bytes_down"] == 4 * (10 * 16 * 4 + 10)
    assert results["baselines"]["local_only"]["client_accuracy_mean"] > 0.3
    assert history[-1]["client_accuracy_mean"] > 0.3
    assert (tmp_path / "server_state.npz").is_file()
    state = np.load(tmp_path / "server_state.npz")
    assert state["prototypes"].shape == (10, 16) and state["mask"].any()


def test_prototype_strategies_refuse_clients_that_cannot_embed() -> None:
    raw = _raw("fedproto", "message")
    raw["clients"][-1] = {"architecture": "sklearn:sgd_logreg"}
    with pytest.raises(ConfigError, match="every client must embed.*sklearn:sgd_logreg"):
        from_dict(raw)


def test_prototype_strategies_need_a_feature_dim_and_their_own_recipe() -> None:
    raw = _raw("fedproto", "message")
    raw["strategy"].pop("feature_dim")
    with pytest.raises(ConfigError, match="feature_dim"):
        from_dict(raw)
    raw = _raw("fedproto", "message")
    raw["recipe"]["kd_weight"] = 0.5
    with pytest.raises(ConfigError, match="unknown key.*kd_weight"):
        from_dict(raw)


def test_fedtgp_refuses_privacy_it_cannot_have() -> None:
    raw = _raw("fedtgp", "message", paillier={"enabled": True})
    with pytest.raises(ConfigError, match="FedTGP trains on every client's prototypes"):
        from_dict(raw)
