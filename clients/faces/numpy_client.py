"""One compat-API ``NumPyClient`` for every flhet algorithm."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.client import NumPyClient

from flhet_strategies import wire
from flhet_strategies.faces.records import instruction_from_compat, reply_to_compat

from .. import algorithms
from ..federated_client import FederatedClient
from .state import checkpoint_dir as node_checkpoint_dir
from .state import restore_for, save_for


class FlhetNumPyClient(NumPyClient):
    """``NumPyClient`` that answers any flhet compat strategy with any learner.

    ``fit`` and ``evaluate`` receive the instruction's arrays in the order the config
    entry ``flhet-arrays`` names; the entry ``flhet-algorithm`` picks the client half.
    The model never leaves the client.

    Parameters
    ----------
    client : FederatedClient
        The learner and its data.
    client_id : int
        Stable id reported to the server (e.g. the partition id).
    context : flwr.app.Context, optional
        Where the model and state are kept between rounds when Flower rebuilds the
        client per message (always the case in simulation). Without it the client must
        live for the whole run.
    checkpoint_dir : str or Path, optional
        Folder the state is also written to after every training round, so a restarted
        node continues (default: the node config ``checkpoint-dir``, if set).

    Examples
    --------
    >>> def client_fn(context):                                    # doctest: +SKIP
    ...     client = FederatedClient(TorchLearner(my_model), x_tr, y_tr, x_te, y_te,
    ...                              proxy_x, num_classes=10)
    ...     return FlhetNumPyClient(client, client_id=0, context=context).to_client()
    """

    def __init__(self, client: FederatedClient, client_id: int, context: Context | None = None,
                 checkpoint_dir: str | Path | None = None):
        self.client = client
        self.client_id = int(client_id)
        self._context = context
        self._phase: str | None = None
        self._dir = node_checkpoint_dir(context, checkpoint_dir)

    def _restored(self, instruction, training: bool) -> None:
        if instruction.phase != self._phase:
            restore_for(self.client, self._context, instruction, training=training,
                        directory=self._dir)
            self._phase = instruction.phase

    def get_parameters(self, config):
        """There is no shared model: nothing to send."""
        return []

    def fit(self, parameters, config):
        """One round of the instructed algorithm; its reply arrays, named in the metrics."""
        instruction = instruction_from_compat(parameters, config)
        self._restored(instruction, training=True)
        reply = algorithms.fit(instruction, self.client)
        save_for(self.client, self._context, instruction, directory=self._dir)
        arrays, metrics = reply_to_compat(reply)
        num_examples = int(metrics.pop(wire.NUM_EXAMPLES, self.client.num_examples))
        return arrays, num_examples, {**metrics, wire.CLIENT_ID: self.client_id}

    def evaluate(self, parameters, config):
        """Accuracy metrics; the loss is the error rate on the own test split."""
        instruction = instruction_from_compat(parameters, config)
        if not instruction.config.get(wire.EVALUATE, True):
            return 0.0, 0, {wire.CLIENT_ID: self.client_id}
        self._restored(instruction, training=False)
        metrics = algorithms.evaluate(instruction, self.client)
        loss = 1.0 - metrics["client_accuracy"]
        return float(loss), int(len(self.client.y_test)), {**metrics,
                                                           wire.CLIENT_ID: self.client_id}


DistillationNumPyClient = FlhetNumPyClient
"""Earlier name of :class:`FlhetNumPyClient` (kept for existing apps)."""

__all__ = ["DistillationNumPyClient", "FlhetNumPyClient"]
