"""One Message-API ``ClientApp`` for every flhet algorithm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flhet_strategies import wire
from flhet_strategies.faces.records import instruction_of, reply_content
from flhet_strategies.protocol import Reply

from .. import algorithms
from ..federated_client import FederatedClient
from .state import checkpoint_dir as node_checkpoint_dir
from .state import client_id_from_context, restore_for, save_for

ClientFactory = Callable[[Context], FederatedClient]
"""Builds a node's :class:`FederatedClient` (fresh model, its data) from the context.

Flower calls it for every message: cache the data (e.g. ``functools.lru_cache``) and
seed the model's initialisation (the trained state is restored after it).
"""


def flhet_client_app(client_factory: ClientFactory, mods: list | None = None,
                     checkpoint_dir: str | Path | None = None) -> ClientApp:
    """A Message-API ``ClientApp`` that answers any flhet strategy.

    The instruction's ``flhet-algorithm`` picks the client half
    (:func:`clients.algorithms.client_algorithm`); the client's model and state are
    restored per phase (``flhet-phase``) before it runs and saved after -- in the
    node's ``context.state`` and, with the node config ``checkpoint-dir`` (or
    ``checkpoint_dir``), on disk after every training round, so a restarted node
    continues from its last round (docs/resume.md).

    Parameters
    ----------
    client_factory : Callable[[Context], FederatedClient]
        Builds the node's client (learner with a freshly initialised model, its data).
    mods : list, optional
        Flower client mods applied to every message (e.g. :mod:`clients.mods`).
    checkpoint_dir : str or Path, optional
        Folder for the on-disk state when the node config does not name one.

    Returns
    -------
    flwr.clientapp.ClientApp
        With ``train`` and ``evaluate`` handlers.
    """
    app = ClientApp(mods=mods or [])

    def _client(context: Context, instruction, training: bool) -> FederatedClient:
        client = client_factory(context)
        restore_for(client, context, instruction, training=training,
                    directory=node_checkpoint_dir(context, checkpoint_dir))
        return client

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        instruction = instruction_of(msg)
        client = _client(context, instruction, training=True)
        reply = algorithms.fit(instruction, client)
        save_for(client, context, instruction,
                 directory=node_checkpoint_dir(context, checkpoint_dir))
        reply.metrics.update({wire.CLIENT_ID: client_id_from_context(context)})
        reply.metrics.setdefault(wire.NUM_EXAMPLES, client.num_examples)
        return Message(content=reply_content(reply), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        instruction = instruction_of(msg)
        metrics: dict = {wire.CLIENT_ID: client_id_from_context(context)}
        if instruction.config.get(wire.EVALUATE, True):
            client = _client(context, instruction, training=False)
            metrics.update(algorithms.evaluate(instruction, client))
            metrics[wire.NUM_EXAMPLES] = len(client.y_test)
        return Message(content=reply_content(Reply("", {}, metrics)), reply_to=msg)

    return app


distillation_client_app = flhet_client_app
"""Earlier name of :func:`flhet_client_app` (kept for existing apps)."""

__all__ = ["ClientFactory", "distillation_client_app", "flhet_client_app"]
