"""Heterogeneous model zoo: PyTorch CNNs (LeNet-5 among them), ResNet, MobileNet,
ShuffleNet, ViT, an MLP, and scikit-learn linear models, all built by name.

Every PyTorch model is a :class:`SplitModel` (``body`` to features, linear ``head`` to
logits); ``feature_dim=d`` adds a :class:`ProjectionAdapter` into a common feature space.
See docs/model_zoo.md.
"""

from clients.models.sklearn_models import SKLEARN_MODELS, build_sklearn_model, full_class_proba
from clients.models.split import ProjectionAdapter, SplitModel
from clients.models.zoo import (
    ALL_MODELS,
    ARCHITECTURES,
    build_model,
    count_parameters,
    describe,
    native_feature_dim,
)

__all__ = [
    "ALL_MODELS",
    "ARCHITECTURES",
    "SKLEARN_MODELS",
    "ProjectionAdapter",
    "SplitModel",
    "build_model",
    "build_sklearn_model",
    "count_parameters",
    "describe",
    "full_class_proba",
    "native_feature_dim",
]
