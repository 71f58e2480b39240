"""flhet strategies: Flower server-side strategies for model-heterogeneous FL.

Public API (imported lazily, so ``flhet_strategies.core`` stays free of Flower):

- :class:`FedConsensus` -- logit-consensus distillation (FedMD / DS-FL), Message API.
- :class:`FedConsensusCompat` -- the same for the compat API (``NumPyClient``).
- :class:`SecureConsensus` -- wraps a :class:`FedConsensus` so that the server only adds
  Paillier ciphertexts (clients run ``clients.mods.PaillierConsensusMod``);
  :class:`SecureConsensusCompat` -- the same around :class:`FedConsensusCompat` (clients
  are wrapped in ``clients.SecureConsensusNumPyClient``).
- :class:`ConsensusConfig` -- the consensus rule; :class:`DistillationRecipe` -- the
  client recipe sent each round.
- :class:`SecureFedAvg` / :class:`SecureFedAvgCompat` -- wrap Flower's FedAvg (Message API /
  compat) so that the server only multiplies Paillier ciphertexts of the clients' weights
  (clients run ``clients.mods.PaillierFedAvgMod`` / ``clients.PaillierNumPyClient``).
- :class:`DpFedAvg` / :class:`DpFedAvgCompat` -- Flower's fixed-clipping DP wrappers
  around FedAvg (Message API / compat) with per-round epsilon and an epsilon budget
  (``clipping="distributed"``: the clients add the noise as shares);
  :class:`RoundBudget` -- the API-neutral budget they share.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FedConsensus": "flhet_strategies.message_api",
    "FedConsensusCompat": "flhet_strategies.compat_api",
    "SecureConsensus": "flhet_strategies.secure_consensus_strategy",
    "SecureConsensusCompat": "flhet_strategies.secure_consensus_compat",
    "SecureFedAvg": "flhet_strategies.secure_fedavg",
    "SecureFedAvgCompat": "flhet_strategies.secure_fedavg_compat",
    "ContributionWeightedFedAvg": "flhet_strategies.contribution_fedavg",
    "ContributionWeightedFedAvgCompat": "flhet_strategies.contribution_fedavg_compat",
    "DpFedAvg": "flhet_strategies.dp_fedavg",
    "DpFedAvgCompat": "flhet_strategies.dp_fedavg_compat",
    "RoundBudget": "flhet_strategies.privacy.round_budget",
    "ConsensusConfig": "flhet_strategies.core.consensus",
    "DistillationRecipe": "flhet_strategies.core.recipe",
    "ConsensusDistillation": "flhet_strategies.core.distillation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
