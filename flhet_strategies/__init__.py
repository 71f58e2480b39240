"""flhet strategies: Flower server-side strategies for model-heterogeneous FL.

An algorithm is a Flower-free server half (:mod:`flhet_strategies.algorithms`) driven by
one generic face per Flower API (:class:`MessageStrategy`, :class:`CompatStrategy`);
the named strategies (:class:`FedConsensus`, :class:`FedProto`, :class:`LGFedAvg`, ...)
are a server half in a face. Differential privacy (:class:`DifferentialPrivacy`) and
the Paillier secure sum (:class:`SecureSum`) wrap any server half whose aggregate is a
weighted sum. Imports are lazy, so the Flower-free modules stay free of Flower.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    # generic faces and the protocol
    "MessageStrategy": "flhet_strategies.faces.message",
    "CompatStrategy": "flhet_strategies.faces.compat",
    "Instruction": "flhet_strategies.protocol",
    "Reply": "flhet_strategies.protocol",
    "Outcome": "flhet_strategies.protocol",
    "ServerAlgorithm": "flhet_strategies.protocol",
    "ClientAlgorithm": "flhet_strategies.protocol",
    # named strategies
    "FedConsensus": "flhet_strategies.strategies",
    "FedConsensusCompat": "flhet_strategies.strategies",
    "SecureConsensus": "flhet_strategies.strategies",
    "SecureConsensusCompat": "flhet_strategies.strategies",
    "FedProto": "flhet_strategies.strategies",
    "FedProtoCompat": "flhet_strategies.strategies",
    "FedTGP": "flhet_strategies.strategies",
    "FedTGPCompat": "flhet_strategies.strategies",
    "LGFedAvg": "flhet_strategies.strategies",
    "LGFedAvgCompat": "flhet_strategies.strategies",
    "FedGH": "flhet_strategies.strategies",
    "FedGHCompat": "flhet_strategies.strategies",
    "FedDF": "flhet_strategies.strategies",
    "FedDFCompat": "flhet_strategies.strategies",
    # server halves and recipes
    "ConsensusDistillation": "flhet_strategies.algorithms.consensus",
    "ConsensusConfig": "flhet_strategies.aggregation.logit_consensus",
    "DistillationRecipe": "flhet_strategies.algorithms.recipes",
    "PrototypeRecipe": "flhet_strategies.algorithms.recipes",
    "SharedHeadRecipe": "flhet_strategies.algorithms.recipes",
    "FedDFRecipe": "flhet_strategies.algorithms.recipes",
    "DistillSettings": "flhet_strategies.distill_settings",
    # privacy
    "DifferentialPrivacy": "flhet_strategies.privacy.dp.mechanism",
    "DpSettings": "flhet_strategies.privacy.dp.settings",
    "PrivateConsensus": "flhet_strategies.privacy.dp.settings",
    "RoundBudget": "flhet_strategies.privacy.dp.budget",
    "SecureSum": "flhet_strategies.privacy.paillier.secure_sum",
    # wrappers around Flower's own FedAvg
    "DpFedAvg": "flhet_strategies.privacy.dp.fedavg",
    "DpFedAvgCompat": "flhet_strategies.privacy.dp.fedavg",
    "SecureFedAvg": "flhet_strategies.privacy.paillier.fedavg",
    "SecureFedAvgCompat": "flhet_strategies.privacy.paillier.fedavg",
    "ContributionWeightedFedAvg": "flhet_strategies.weighting.contribution_fedavg",
    "ContributionWeightedFedAvgCompat": "flhet_strategies.weighting.contribution_fedavg",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
