"""Message-API shell: a ``ClientApp`` around :class:`DistillationClient`."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flhet_strategies.consensus_server import PHASE_KEY
from flhet_strategies.core.distillation import RoundPlan
from flhet_strategies.core.recipe import DistillationRecipe
from flhet_strategies.message_api import CONFIG_KEY, METRICS_KEY, PLAN_KEY, REPLY_KEY
from flhet_strategies.records import arrays_to_record, record_to_arrays

from .distillation_client import DistillationClient
from .state import client_id_from_context, restore_learner, save_learner

ClientFactory = Callable[[Context], DistillationClient]
"""Builds a node's :class:`DistillationClient` (fresh model, its data) from the context."""


def distillation_client_app(client_factory: ClientFactory, mods: list | None = None) -> ClientApp:
    """A Message-API ``ClientApp`` for :class:`~flhet_strategies.message_api.FedConsensus`.

    Parameters
    ----------
    client_factory : Callable[[Context], DistillationClient]
        Builds the node's client (learner with a fresh model, and its data). The
        model's trained state is restored from ``context.state`` after it.
    mods : list, optional
        Flower client mods (e.g. privacy mods) applied to every message.

    Returns
    -------
    flwr.clientapp.ClientApp
        With ``train`` and ``evaluate`` handlers.
    """
    app = ClientApp(mods=mods or [])

    def _client(context: Context, phase: str) -> DistillationClient:
        client = client_factory(context)
        restore_learner(client.learner, context, phase)
        return client

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content.config_records[CONFIG_KEY]
        phase = str(config.get(PHASE_KEY, "main"))
        client = _client(context, phase)
        plan = RoundPlan.from_arrays(int(config["server-round"]),
                                     record_to_arrays(msg.content.array_records[PLAN_KEY]))
        reply = client.train(plan, DistillationRecipe.from_config(config))
        save_learner(client.learner, context, phase)
        metrics = MetricRecord({**reply.metrics, "num-examples": reply.num_examples,
                                "client-id": client_id_from_context(context)})
        content = RecordDict({
            REPLY_KEY: arrays_to_record({"logits": reply.logits, "class_counts": reply.class_counts}),
            METRICS_KEY: metrics,
        })
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        config = msg.content.config_records.get(CONFIG_KEY, {})
        client = _client(context, str(config.get(PHASE_KEY, "main")))
        metrics = client.evaluate()
        record = MetricRecord({**metrics, "num-examples": len(client.y_test),
                               "client-id": client_id_from_context(context)})
        return Message(content=RecordDict({METRICS_KEY: record}), reply_to=msg)

    return app


__all__ = ["ClientFactory", "distillation_client_app"]
