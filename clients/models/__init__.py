"""Heterogeneous model zoo: PyTorch CNNs, ResNet, MobileNet, ShuffleNet, ViT, an MLP, and
scikit-learn linear models, all built by name.

Examples
--------
>>> from clients.models import build_model, describe
>>> model = build_model("cnn_small", (1, 28, 28), num_classes=10, seed=0)
>>> describe("vit_tiny")["family"]
'transformer'
"""

from clients.models.sklearn_models import SKLEARN_MODELS, build_sklearn_model, full_class_proba
from clients.models.zoo import ALL_MODELS, ARCHITECTURES, build_model, count_parameters, describe

__all__ = [
    "ALL_MODELS",
    "ARCHITECTURES",
    "SKLEARN_MODELS",
    "build_model",
    "build_sklearn_model",
    "count_parameters",
    "describe",
    "full_class_proba",
]
