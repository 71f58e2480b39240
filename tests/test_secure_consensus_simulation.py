"""Two secure-consensus rounds through Flower's simulation engine (Ray) on scikit-learn digits.

Keys come from a key dealer's files: the ServerApp gets the public key file only, the
clients' mod the private key file.
"""

import pytest
import torch
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from clients.client_app import distillation_client_app
from clients.mods.paillier_consensus import PaillierConsensusMod
from clients.state import client_id_from_context
from flhet_strategies.core.secure_consensus import SecureConsensusSpec
from flhet_strategies.privacy.paillier import deal_keys, load_public_key
from flhet_strategies.message_api import FedConsensus
from flhet_strategies.secure_consensus_strategy import SecureConsensus
from simulations.config import from_dict
from simulations.experiment import backend_config, build_client, build_split

pytestmark = pytest.mark.integration

ARCHS = ["cnn_small", "mlp", "mlp", "sklearn:sgd_logreg"]


def _config():
    return from_dict({
        "name": "it-paillier", "seed": 0, "num_rounds": 2, "api": "message",
        "data": {"dataset": "digits", "num_clients": 4,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40},
                 "proxy_size": 300, "proxy_validation_size": 100},
        "strategy": {"proxy_per_round": 120},
        "recipe": {"warmup_epochs": 1, "local_epochs": 1, "final_private_epochs": 1},
        "clients": [{"architecture": a, "count": 1, "lr": 0.05} for a in ARCHS],
    })


def test_two_secure_rounds_in_the_simulation_engine(tmp_path):
    cfg = _config()
    split = build_split(cfg)
    files = deal_keys(tmp_path / "keys")
    max_examples = max(len(client.train) for client in split.clients)
    strategy = SecureConsensus(
        FedConsensus(num_proxy=len(split.proxy_x), num_classes=split.num_classes,
                     proxy_per_round=120, recipe=cfg.recipe, min_available_nodes=4),
        load_public_key(files.public_path), max_examples=max_examples)
    sink = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        sink["result"] = strategy.start(grid=grid, num_rounds=2)

    def factory(context):
        torch.set_num_threads(1)
        return build_client(cfg, client_id_from_context(context))

    client_app = distillation_client_app(factory, mods=[PaillierConsensusMod(files.private_path)])
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=4,
                   backend_config=backend_config(cfg))

    history = strategy.history
    assert [h["round"] for h in history] == [1, 2]
    spec = strategy.spec(1, 4)
    share_bytes = SecureConsensusSpec.layout(spec, 2047).num_ciphertexts * 512
    for h in history:
        assert h["accepted"] == ["0", "1", "2", "3"] and h["num_failures"] == 0
        assert h["bytes_up"] > 4 * share_bytes       # four encrypted shares (plus headers)
        assert 0.0 <= h["client_accuracy_mean"] <= 1.0
        assert 0.0 <= h["global_accuracy_mean"] <= 1.0
    # Round 2 ships round 1's sum: encrypted to one client, sealed (float32 + 28 bytes of
    # AES-GCM) to all four; the torch clients distilled on what they received.
    sealed_bytes = 120 * 10 * 4 + 28
    assert history[1]["bytes_down"] >= history[0]["bytes_down"] + 4 * sealed_bytes + share_bytes
    train_metrics = sink["result"].train_metrics_clientapp
    assert train_metrics[1]["kd_loss"] == 0.0 and train_metrics[2]["kd_loss"] > 0.0
    assert train_metrics[2]["num-decrypt-failed"] == 0.0
    # One client decrypted round 1's sum for the cohort (through its mod in the ClientApp).
    assert [h["consensus_decryption"] for h in history] == [None, "delegated"]
