"""FedDF end to end in Flower's simulation engine (Ray): architecture groups of PyTorch
clients plus a scikit-learn client, on both API faces, against the local-only baseline."""

from __future__ import annotations

import numpy as np
import pytest

from clients.models.zoo import build_model
from simulations.config import from_dict
from simulations.runner import run_experiment


def _raw(api: str) -> dict:
    return {
        "name": "digits_feddf", "seed": 0, "num_rounds": 2, "api": api,
        "data": {"dataset": "digits", "num_clients": 4, "proxy_size": 100,
                 "proxy_validation_size": 20,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40}},
        "strategy": {"name": "feddf", "proxy_per_round": 0, "distill_steps": 40,
                     "distill_batch_size": 32, "distill_eval_every": 10,
                     "distill_patience": 20},
        "recipe": {"local_epochs": 2, "warmup_epochs": 3},
        "clients": [{"architecture": "mlp", "count": 2, "lr": 0.05},
                    {"architecture": "cnn_wide", "lr": 0.05},
                    {"architecture": "sklearn:sgd_logreg"}],
    }


def _model_bytes(arch: str) -> int:
    model = build_model(arch, (1, 8, 8), 10)
    return sum(v.numpy().nbytes for v in model.state_dict().values())


@pytest.mark.integration
@pytest.mark.parametrize("api", ["message"])     # the compat face: test_face_parity.py
def test_feddf_runs_in_the_simulation_engine(tmp_path, api) -> None:
    results = run_experiment(from_dict(_raw(api)), tmp_path)
    assert results["strategy"] == "feddf" and results["api"] == api
    history = results["history"]
    assert [r["round"] for r in history] == [1, 2]
    assert all(r["num_failures"] == 0 and len(r["per_client"]) == 4
               for r in history)
    report = history[-1]["feddf"]
    assert report["teachers"] == 4
    assert {a: g["members"] for a, g in report["groups"].items()} == {"mlp": 2, "cnn_wide": 1}
    # round 2: each torch node gets its own group's model to train and to score with, the
    # scikit-learn node its round plan (100 proxy indices, 80 consensus rows of 10 classes)
    groups = 2 * _model_bytes("mlp") + _model_bytes("cnn_wide")
    plan = 100 * 8 + 80 * 8 + 80 * 10 * 4
    assert history[1]["bytes_down"] == 2 * groups + plan
    assert history[0]["bytes_down"] > history[1]["bytes_down"]     # round 1: every group
    local = results["baselines"]["local_only"]
    assert all(r["bytes_down"] == 0 for r in local["history"][1:])
    # the group models (averaged and distilled) beat the clients' own on the global test
    assert history[-1]["global_accuracy_mean"] > local["history"][-1]["global_accuracy_mean"]
    state = np.load(tmp_path / "server_state.npz")
    assert {k.split("/")[1] for k in state.files if k.startswith("model/")} == {"mlp", "cnn_wide"}
