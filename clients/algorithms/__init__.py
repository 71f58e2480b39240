"""Client halves of flhet's algorithms, one module per family (mirroring the server's).

:func:`client_algorithm` finds the half that answers an instruction from its
``flhet-algorithm`` config entry, so one ClientApp serves every algorithm.
"""

from __future__ import annotations

from importlib import import_module

from flhet_strategies import wire
from flhet_strategies.protocol import ClientAlgorithm, Instruction, Reply

_HALVES = {
    "consensus": ("clients.algorithms.consensus", "ConsensusClient"),
    "fedproto": ("clients.algorithms.prototypes", "PrototypeClient"),
    "fedtgp": ("clients.algorithms.prototypes", "PrototypeClient"),
    "lgfedavg": ("clients.algorithms.shared_head", "LGFedAvgClient"),
    "fedgh": ("clients.algorithms.shared_head", "FedGHClient"),
    "feddf": ("clients.algorithms.feddf", "FedDFClient"),
}


def client_algorithm(name: str) -> ClientAlgorithm:
    """The client half named ``name`` (a fresh instance).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    if name not in _HALVES:
        raise ValueError(f"unknown algorithm {name!r} in the instruction; this client knows "
                         f"{sorted(_HALVES)}")
    module, cls = _HALVES[name]
    return getattr(import_module(module), cls)()


def fit(instruction: Instruction, client) -> Reply:
    """The instructed client half's reply, with the client's record-level privacy spent
    (:meth:`~clients.federated_client.FederatedClient.privacy_metrics`) in its metrics."""
    reply = client_algorithm(_name(instruction)).fit(instruction, client)
    reply.metrics.update(client.privacy_metrics())
    return reply


def evaluate(instruction: Instruction, client) -> dict[str, float]:
    """The instructed client half's evaluation metrics, with the privacy spent."""
    return {**client_algorithm(_name(instruction)).evaluate(instruction, client),
            **client.privacy_metrics()}


def _name(instruction: Instruction) -> str:
    return str(instruction.config.get(wire.ALGORITHM, "consensus"))


__all__ = ["client_algorithm", "evaluate", "fit"]
