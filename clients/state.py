"""Keep a learner's model between rounds in the Flower ``Context``.

Simulated and deployed ClientApps may be rebuilt for every message, so the model
lives in ``context.state`` (a ``RecordDict`` that Flower keeps per node), never in
process memory. Only the client ever holds it; nothing here travels to the server.
"""

from __future__ import annotations

from flwr.app import Context

from flhet_strategies.records import arrays_to_record, record_to_arrays

from .learners.base import Learner

STATE_KEY = "flhet-learner"
"""Prefix of the learner's ArrayRecord key in ``context.state`` (one per phase)."""


def _key(phase: str) -> str:
    return f"{STATE_KEY}:{phase}"


def restore_learner(learner: Learner, context: Context | None, phase: str = "main") -> bool:
    """Load the learner's saved state for ``phase`` if there is one; return whether found."""
    if context is None or _key(phase) not in context.state.array_records:
        return False
    learner.set_state(record_to_arrays(context.state.array_records[_key(phase)]))
    return True


def save_learner(learner: Learner, context: Context | None, phase: str = "main") -> None:
    """Store the learner's state for ``phase`` in ``context.state`` for the next round."""
    if context is not None:
        context.state[_key(phase)] = arrays_to_record(learner.get_state())


def client_id_from_context(context: Context) -> int:
    """The simulation's ``partition-id`` if set, else the node id."""
    node_config = context.node_config
    if "partition-id" in node_config:
        return int(node_config["partition-id"])
    return int(context.node_id)
