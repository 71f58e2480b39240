"""flhet clients: wrap any model and its data for model-heterogeneous FL.

:class:`FederatedClient` (a learner, its data and its state), the learners
:class:`TorchLearner` and :class:`SklearnLearner`, one client face per Flower API
(:func:`flhet_client_app`, :class:`FlhetNumPyClient`) and the privacy steps on both
faces. Earlier names (``DistillationClient``, ...) remain as aliases. See
docs/architecture.md.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FederatedClient": "clients.federated_client",
    "DistillationClient": "clients.federated_client",
    "TorchLearner": "clients.learners.torch_learner",
    "SklearnLearner": "clients.learners.sklearn_learner",
    "Learner": "clients.learners.base",
    "FeatureLearner": "clients.learners.base",
    "DistillTarget": "clients.learners.base",
    "require_features": "clients.learners.base",
    "flhet_client_app": "clients.faces.client_app",
    "distillation_client_app": "clients.faces.client_app",
    "FlhetNumPyClient": "clients.faces.numpy_client",
    "DistillationNumPyClient": "clients.faces.numpy_client",
    "PaillierMod": "clients.faces.wrappers",
    "DpNoiseMod": "clients.faces.wrappers",
    "SecureSumNumPyClient": "clients.faces.wrappers",
    "DpNoiseNumPyClient": "clients.faces.wrappers",
    "SecureConsensusNumPyClient": "clients.faces.wrappers",
    "DpPredictionsNumPyClient": "clients.faces.wrappers",
    "PaillierFedAvgMod": "clients.fedavg.paillier",
    "PaillierNumPyClient": "clients.fedavg.paillier",
    "DpUpdateNoiseMod": "clients.fedavg.dp",
    "DpUpdateNumPyClient": "clients.fedavg.dp",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
