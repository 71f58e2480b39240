"""flhet clients: wrap any model and its data for model-heterogeneous FL.

- :class:`DistillationClient` -- a learner plus its private data, API-neutral.
- :class:`TorchLearner`, :class:`SklearnLearner` -- adapters for PyTorch and
  scikit-learn models (implement :class:`Learner` for anything else).
- :class:`DistillationNumPyClient` -- compat-API ``NumPyClient`` shell.
- :class:`PaillierNumPyClient` -- wraps any ``NumPyClient`` for secure (Paillier) FedAvg.
- :class:`DpUpdateNumPyClient` -- wraps any ``NumPyClient`` for distributed-DP FedAvg
  (clipped update plus a noise share; compat face of ``clients.mods.DpUpdateNoiseMod``).
- :class:`SecureConsensusNumPyClient` -- wraps a :class:`DistillationNumPyClient` for the
  Paillier secure consensus (compat face of ``clients.mods.PaillierConsensusMod``).
- :func:`distillation_client_app` -- Message-API ``ClientApp`` shell.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DistillationClient": "clients.distillation_client",
    "TorchLearner": "clients.learners.torch_learner",
    "SklearnLearner": "clients.learners.sklearn_learner",
    "Learner": "clients.learners.base",
    "DistillTarget": "clients.learners.base",
    "DistillationNumPyClient": "clients.numpy_client",
    "PaillierNumPyClient": "clients.paillier_numpy_client",
    "DpUpdateNumPyClient": "clients.dp_update_numpy_client",
    "SecureConsensusNumPyClient": "clients.secure_consensus_numpy_client",
    "distillation_client_app": "clients.client_app",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
