"""What a client does around its algorithm's answer: a :class:`ClientStep` (Flower-free).

A step edits the instruction before the client half runs (decrypt a relayed sum) and
the reply after (add a noise share, encrypt). ``clients.faces.steps`` runs any step as
a Message-API mod or as a compat ``NumPyClient`` wrapper, so both faces share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flhet_strategies.protocol import Instruction, Reply

KINDS = ("train", "evaluate")
"""The messages a step sees."""


class StepRefusal(ValueError):
    """A step refuses a message (the node then answers with an error)."""


@dataclass(frozen=True)
class StepEnv:
    """Where a step runs: the node's config and the run's config (key paths, ...)."""

    node_config: Mapping[str, Any] = field(default_factory=dict)
    run_config: Mapping[str, Any] = field(default_factory=dict)


class ClientStep:
    """Base of a client step: passes everything through unchanged."""

    def before(self, instruction: Instruction, env: StepEnv,
               kind: str) -> tuple[Instruction, dict]:
        """The instruction the client half gets, and a memo for :meth:`after`.

        Raises
        ------
        StepRefusal
            To refuse the message (the node answers with an error).
        """
        return instruction, {}

    def after(self, instruction: Instruction, memo: dict, reply: Reply, env: StepEnv,
              kind: str) -> Reply:
        """The reply that leaves the client (``instruction`` as the step received it)."""
        return reply


__all__ = ["KINDS", "ClientStep", "StepEnv", "StepRefusal"]
