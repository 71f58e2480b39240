"""Compat-API shell: a ``NumPyClient`` around :class:`DistillationClient`."""

from __future__ import annotations

from flwr.app import Context
from flwr.client import NumPyClient

from flhet_strategies.consensus_server import PHASE_KEY
from flhet_strategies.core.distillation import PLAN_ARRAY_KEYS, RoundPlan
from flhet_strategies.core.recipe import DistillationRecipe

from .distillation_client import DistillationClient
from .state import restore_learner, save_learner


class DistillationNumPyClient(NumPyClient):
    """``NumPyClient`` for logit-consensus distillation with any learner.

    ``fit`` receives the round plan as ``[proxy_indices, consensus_indices,
    consensus]``, distills and trains, and returns ``[logits, class_counts]`` on the
    requested proxy samples; ``evaluate`` reports ``client_accuracy`` (own test split)
    and ``global_accuracy`` (global test set). The model never leaves the client.

    Parameters
    ----------
    client : DistillationClient
        The learner and its data.
    client_id : int
        Stable id reported to the server (e.g. the partition id).
    context : flwr.app.Context, optional
        Where the model is kept between rounds when Flower rebuilds the client per
        message (always the case in simulation). Without it the client must live
        for the whole run.

    Examples
    --------
    >>> def client_fn(context):
    ...     client = DistillationClient(TorchLearner(my_model), x_tr, y_tr, x_te, y_te,
    ...                                 proxy_x, num_classes=10)
    ...     return DistillationNumPyClient(client, client_id=0, context=context).to_client()
    """

    def __init__(self, client: DistillationClient, client_id: int, context: Context | None = None):
        self.client = client
        self.client_id = int(client_id)
        self._context = context
        self._phase: str | None = None

    def _ensure_restored(self, config) -> str:
        phase = str(config.get(PHASE_KEY, "main"))
        if phase != self._phase:
            restore_learner(self.client.learner, self._context, phase)
            self._phase = phase
        return phase

    def get_parameters(self, config):
        """There is no shared model: nothing to send."""
        return []

    def fit(self, parameters, config):
        """One distillation round; returns ``[logits, class_counts]``."""
        if len(parameters) != len(PLAN_ARRAY_KEYS):
            raise ValueError(f"expected {len(PLAN_ARRAY_KEYS)} plan arrays {PLAN_ARRAY_KEYS}, "
                             f"got {len(parameters)}")
        phase = self._ensure_restored(config)
        plan = RoundPlan.from_arrays(int(config["server-round"]), dict(zip(PLAN_ARRAY_KEYS, parameters)))
        reply = self.client.train(plan, DistillationRecipe.from_config(config))
        save_learner(self.client.learner, self._context, phase)
        metrics = {**reply.metrics, "client-id": self.client_id}
        return [reply.logits, reply.class_counts], reply.num_examples, metrics

    def evaluate(self, parameters, config):
        """Accuracy metrics; the loss returned is the error rate on the own test split."""
        self._ensure_restored(config)
        metrics = self.client.evaluate()
        loss = 1.0 - metrics["client_accuracy"]
        return float(loss), int(len(self.client.y_test)), {**metrics, "client-id": self.client_id}
