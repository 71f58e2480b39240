"""Your own Flower app with flhet: four clients with four different models learn together
through logit consensus, next to their local-only twin, in Flower's simulation engine.

Run it with ``python examples/own_app.py`` (about two minutes on two CPU cores).
"""

import os
from dataclasses import replace

import numpy as np
import torch
from datasets import Dataset
from flwr.app import Context
from flwr_datasets.partitioner import DirichletPartitioner
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from sklearn.datasets import load_digits

from clients import FederatedClient, TorchLearner, flhet_client_app
from clients.models import build_model
from flhet_strategies import ConsensusConfig, DistillationRecipe, FedConsensus

NUM_CLIENTS = 4
NUM_ROUNDS = int(os.environ.get("FLHET_EXAMPLE_ROUNDS", "20"))
ARCHITECTURES = ["cnn_small", "cnn_wide", "mlp", "vit_tiny"]   # one model per client


_DATA: dict = {}


def dataset():
    """Digits: a public proxy set, a global test set and four label-skewed private parts.

    The client factory runs for every message: load and split once per process.
    """
    if _DATA:
        return _DATA["split"]
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]   # (N, 1, 8, 8) images
    y = digits.target
    order = np.random.default_rng(0).permutation(len(y))
    proxy, global_test, private = order[:300], order[300:700], order[700:]
    # label skew: each client mostly holds a few digits
    # label skew: a Dirichlet(0.3) share of every class per client (flwr-datasets)
    table = Dataset.from_dict({"label": y[private], "index": private})
    partitioner = DirichletPartitioner(NUM_CLIENTS, partition_by="label", alpha=0.3,
                                       min_partition_size=60, seed=0)
    partitioner.dataset = table
    parts = [np.random.default_rng(i).permutation(partitioner.load_partition(i)["index"])
             for i in range(NUM_CLIENTS)]
    _DATA["split"] = (x, y, proxy, global_test, parts)
    return _DATA["split"]


def client_factory(context: Context) -> FederatedClient:
    """The node's client: its data and a freshly initialised, seeded model (flhet restores
    the trained state from ``context.state`` after this)."""
    torch.set_num_threads(1)
    x, y, proxy, global_test, parts = dataset()
    cid = int(context.node_config["partition-id"])
    own = parts[cid]
    cut = int(0.75 * len(own))
    model = build_model(ARCHITECTURES[cid], (1, 8, 8), num_classes=10, seed=cid)
    optimizer, lr = ("adamw", 0.002) if ARCHITECTURES[cid] == "vit_tiny" else ("sgd", 0.05)
    learner = TorchLearner(model, lr=lr, optimizer=optimizer, batch_size=16, seed=cid)
    return FederatedClient(learner, x[own[:cut]], y[own[:cut]], x[own[cut:]], y[own[cut:]],
                           proxy_x=x[proxy], num_classes=10,
                           global_test=(x[global_test], y[global_test]), seed=cid)


# The measured recipe of the main job: private CE + 0.5 KD every step, then 2 gentle
# private epochs (5% of the learning rate) after the last reply.
RECIPE = DistillationRecipe(warmup_epochs=2, kd_weight=0.5, final_private_epochs=2,
                            final_lr_scale=0.05)
finished: dict[str, FedConsensus] = {}
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """The federation, then its local-only twin (same clients, nothing shared)."""
    for phase, kd_weight in (("main", 0.5), ("local_only", 0.0)):
        strategy = FedConsensus(num_proxy=300, num_classes=10, proxy_per_round=200,
                                consensus=ConsensusConfig(mode="dsfl", era_temperature=0.1),
                                recipe=replace(RECIPE, kd_weight=kd_weight),
                                min_available_nodes=NUM_CLIENTS, phase=phase)
        strategy.start(grid=grid, num_rounds=NUM_ROUNDS)
        finished[phase] = strategy


if __name__ == "__main__":
    run_simulation(server_app=server_app, client_app=flhet_client_app(client_factory),
                   num_supernodes=NUM_CLIENTS,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    for phase, strategy in finished.items():
        last = strategy.history[-1]
        print(f"{phase}: client accuracy {last['client_accuracy_mean']:.3f}, "
              f"global accuracy {last['global_accuracy_mean']:.3f}")
