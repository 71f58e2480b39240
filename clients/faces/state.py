"""Keep a client's model and state between rounds in the Flower ``Context``.

Simulated and deployed ClientApps may be rebuilt for every message, so the model and
the client half's state live in ``context.state`` (a ``RecordDict`` Flower keeps per
node), one entry per phase. Nothing here travels to the server.
"""

from __future__ import annotations

from flwr.app import Context

from flhet_strategies.faces.records import arrays_to_record, record_to_arrays

from ..federated_client import FederatedClient

STATE_KEY = "flhet-learner"
"""Prefix of the learner's ArrayRecord key in ``context.state`` (one per phase)."""

ALGORITHM_STATE_KEY = "flhet-state"
"""Prefix of the client half's state (e.g. the last global prototypes), one per phase."""


def _key(prefix: str, phase: str) -> str:
    return f"{prefix}:{phase}"


def restore_client(client: FederatedClient, context: Context | None, phase: str = "main") -> bool:
    """Load the client's saved model and state for ``phase``; return whether found."""
    if context is None or _key(STATE_KEY, phase) not in context.state.array_records:
        return False
    client.learner.set_state(record_to_arrays(context.state.array_records[_key(STATE_KEY, phase)]))
    saved = context.state.array_records.get(_key(ALGORITHM_STATE_KEY, phase))
    client.state = record_to_arrays(saved) if saved is not None else {}
    return True


def save_client(client: FederatedClient, context: Context | None, phase: str = "main") -> None:
    """Store the client's model and state for ``phase`` in ``context.state``."""
    if context is not None:
        context.state[_key(STATE_KEY, phase)] = arrays_to_record(client.learner.get_state())
        context.state[_key(ALGORITHM_STATE_KEY, phase)] = arrays_to_record(client.state)


def client_id_from_context(context: Context) -> int:
    """The simulation's ``partition-id`` if set, else the node id."""
    node_config = context.node_config
    if "partition-id" in node_config:
        return int(node_config["partition-id"])
    return int(context.node_id)


__all__ = ["client_id_from_context", "restore_client", "save_client"]
