"""Heterogeneous model zoo: PyTorch CNNs (LeNet-5 among them), ResNet, MobileNet,
ShuffleNet, ViT, an MLP, and scikit-learn linear models, all built by name.

Every PyTorch model is a :class:`SplitModel` (``body`` to features, linear ``head`` to
logits); ``feature_dim=d`` adds a :class:`ProjectionAdapter` into a common feature space.

Examples
--------
>>> from clients.models import build_model, describe, native_feature_dim
>>> model = build_model("cnn_small", (1, 28, 28), num_classes=10, seed=0)
>>> model.feature_dim == native_feature_dim("cnn_small", (1, 28, 28)) == 128
True
>>> build_model("vit_tiny", (1, 28, 28), 10, feature_dim=256).feature_dim
256
>>> describe("vit_tiny")["family"]
'transformer'
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
