"""ClientApp of the flhet Flower App.

``flwr run`` imports this module before any run config exists, so the app is built
without one: the client factory reads the experiment from each message's
``context.run_config`` (cached per process) and builds the node's client, whose model
state :func:`clients.faces.client_app.flhet_client_app` restores per phase.
"""

from __future__ import annotations

import torch
from flwr.app import Context

from clients.faces.client_app import flhet_client_app
from clients.faces.state import client_id_from_context
from clients.federated_client import FederatedClient
from simulations.experiment import build_client

from . import load_experiment


def client_from_context(context: Context) -> FederatedClient:
    """The node's client (fresh model, its data) for the experiment in ``context.run_config``.

    Parameters
    ----------
    context : Context
        The node's context; its ``partition-id`` picks the client.

    Returns
    -------
    FederatedClient
        With the model of the client's architecture group, freshly initialised.
    """
    cfg = load_experiment(context.run_config)
    torch.set_num_threads(cfg.simulation.threads_per_client)
    return build_client(cfg, client_id_from_context(context))


app = flhet_client_app(client_from_context)

__all__ = ["app", "client_from_context"]
