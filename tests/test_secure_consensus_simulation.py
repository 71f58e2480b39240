"""Two secure-consensus rounds through Flower's simulation engine (Ray) on scikit-learn digits.

Keys come from a key dealer's files: the ServerApp gets the public key file only, the
clients' mod the private key file.
"""

import pytest
import torch
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from clients.faces.client_app import flhet_client_app
from clients.faces.state import client_id_from_context
from clients.faces.wrappers import PaillierMod
from flhet_strategies.privacy.paillier import deal_keys, load_key_holder, load_public_key
from flhet_strategies.strategies import FedConsensus, SecureConsensus
from key_audit import assert_holds_no_private_key
from simulations.config import from_dict
from simulations.experiment import backend_config, build_client, build_split

pytestmark = pytest.mark.integration

ARCHS = ["cnn_small", "mlp", "mlp", "sklearn:sgd_logreg"]
ROWS, CLASSES = 120, 10


def _config():
    return from_dict({
        "name": "it-paillier", "seed": 0, "num_rounds": 2, "api": "message",
        "data": {"dataset": "digits", "num_clients": 4,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40},
                 "proxy_size": 300, "proxy_validation_size": 100},
        "strategy": {"proxy_per_round": ROWS},
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
                     proxy_per_round=ROWS, recipe=cfg.recipe, min_available_nodes=4),
        load_public_key(files.public_path), max_examples=max_examples)
    sink = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        sink["result"] = strategy.start(grid=grid, num_rounds=2)

    def factory(context):
        torch.set_num_threads(1)
        return build_client(cfg, client_id_from_context(context))

    client_app = flhet_client_app(factory, mods=[PaillierMod(files.private_path)])
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=4,
                   backend_config=backend_config(cfg))

    history = strategy.history
    assert [h["round"] for h in history] == [1, 2]
    spec = strategy.algorithm.spec(1, 4)
    share_bytes = spec.layout(2047).num_ciphertexts * 512
    for h in history:
        assert h["accepted"] == ["0", "1", "2", "3"] and h["num_failures"] == 0
        assert h["bytes_up"] > 4 * share_bytes       # four encrypted shares (plus headers)
        assert 0.0 <= h["client_accuracy_mean"] <= 1.0
        assert 0.0 <= h["global_accuracy_mean"] <= 1.0
    # Round 1's evaluation carries round 1's sum to one client (the decryptor), with its
    # proxy indices; round 2 ships the seal it made (float32 consensus and its int64
    # indices, plus 28 bytes of AES-GCM) and the indices it is bound to, to all four.
    proxy_bytes = ROWS * 8
    assert history[0]["bytes_down"] >= 4 * proxy_bytes + share_bytes + proxy_bytes
    sealed_bytes = ROWS * CLASSES * 4 + ROWS * 8 + 28
    assert history[1]["bytes_down"] >= 4 * (proxy_bytes + sealed_bytes + proxy_bytes)
    # The torch clients distilled on what they received.
    train_metrics = sink["result"].train_metrics_clientapp
    assert train_metrics[1]["kd_loss"] == 0.0 and train_metrics[2]["kd_loss"] > 0.0
    assert train_metrics[2]["num-decrypt-failed"] == 0.0
    # One client decrypted round 1's sum for the cohort (through its mod in the ClientApp).
    assert [h["sum_decryption"] for h in history] == [None, "delegated"]
    assert strategy.core.consensus[1].size == 0      # never formed in plaintext
    assert_holds_no_private_key(strategy, load_key_holder(files.private_path))
