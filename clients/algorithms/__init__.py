"""Client halves of flhet's algorithms, one module per family (mirroring the server's).

:func:`client_algorithm` finds the half that answers an instruction from its
``flhet-algorithm`` config entry, so one ClientApp serves every algorithm.
"""

from __future__ import annotations

from importlib import import_module

from flhet_strategies.protocol import ClientAlgorithm

_HALVES = {
    "consensus": ("clients.algorithms.consensus", "ConsensusClient"),
    "fedproto": ("clients.algorithms.prototypes", "PrototypeClient"),
    "fedtgp": ("clients.algorithms.prototypes", "PrototypeClient"),
    "lgfedavg": ("clients.algorithms.shared_head", "LGFedAvgClient"),
    "fedgh": ("clients.algorithms.shared_head", "FedGHClient"),
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


__all__ = ["client_algorithm"]
