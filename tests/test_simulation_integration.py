"""Two rounds through Flower's simulation engine (Ray), heterogeneous clients, both API faces.

Small real data (scikit-learn digits) and small real models keep these to well under a
minute each on two CPU cores.
"""

import numpy as np
import pytest
import torch
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from clients.faces.client_app import flhet_client_app
from clients.faces.state import client_id_from_context
from flhet_strategies.strategies import FedConsensus
from simulations.config import from_dict
from simulations.experiment import backend_config, build_client, build_split
from simulations.runner import simulate

pytestmark = pytest.mark.integration

ARCHS = ["cnn_small", "mlp", "vit_tiny", "sklearn:sgd_logreg"]


def _config(api: str, rounds: int = 2):
    return from_dict({
        "name": f"it-{api}", "seed": 0, "num_rounds": rounds, "api": api,
        "data": {"dataset": "digits", "num_clients": 4,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40},
                 "proxy_size": 300, "proxy_validation_size": 100},
        "strategy": {"proxy_per_round": 120},
        "recipe": {"warmup_epochs": 1, "local_epochs": 1, "final_private_epochs": 1},
        "clients": [{"architecture": a, "count": 1, "lr": 0.05} for a in ARCHS],
    })


def _check_history(history, cfg, num_accepted):
    assert [h["round"] for h in history] == [1, 2]
    reply_bytes = 120 * 10 * 4 + 10 * 8  # float32 logits + int64 class counts
    for h in history:
        assert len(h["accepted"]) == num_accepted
        assert h["bytes_up"] == 4 * reply_bytes
        assert 0.0 <= h["client_accuracy_mean"] <= 1.0
        assert 0.0 <= h["global_accuracy_mean"] <= 1.0
        assert set(h["per_client"]) == {"0", "1", "2", "3"}
    # Round 1 ships no consensus; round 2 ships round 1's consensus (120 x 10 float32).
    assert history[1]["bytes_down"] > history[0]["bytes_down"] + 4 * 120 * 10 * 4 - 1


@pytest.mark.parametrize("api", ["message", "compat"])
def test_two_rounds_heterogeneous_clients(api):
    cfg = _config(api)
    history = simulate(cfg)
    _check_history(history, cfg, num_accepted=4)
    # The clients really are different architectures and frameworks.
    kinds = {type(build_client(cfg, i).learner).__name__ for i in range(4)}
    assert kinds == {"TorchLearner", "SklearnLearner"}


def test_diverged_client_is_rejected_and_the_round_goes_on():
    """A client whose model diverged (NaN weights) sends NaN logits; it is rejected."""
    cfg = _config("message")
    split = build_split(cfg)

    def factory(context):
        torch.set_num_threads(1)
        cid = client_id_from_context(context)
        client = build_client(cfg, cid)
        if cid == 0:  # diverged model: every output is NaN
            with torch.no_grad():
                for p in client.learner.model.parameters():
                    p.fill_(float("nan"))
            client.learner.lr = 1e-12
        return client

    strategy = FedConsensus(num_proxy=len(split.proxy_x), num_classes=split.num_classes,
                            proxy_per_round=120, recipe=cfg.recipe, min_available_nodes=4)
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        strategy.start(grid=grid, num_rounds=2)

    run_simulation(server_app=server_app, client_app=flhet_client_app(factory),
                   num_supernodes=4, backend_config=backend_config(cfg))
    history = strategy.history
    assert [h["round"] for h in history] == [1, 2]
    for h in history:
        assert h["accepted"] == ["1", "2", "3"]
        assert "NaN" in h["rejected"]["0"] and h["num_failures"] == 1
    consensus = strategy.core.consensus[1]
    assert consensus.shape == (120, 10) and np.all(np.isfinite(consensus))
