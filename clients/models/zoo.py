"""Registry of the heterogeneous model zoo: build any member by name.

PyTorch models come from :mod:`clients.models.small_nets` and
:mod:`clients.models.torchvision_nets`; scikit-learn models from
:mod:`clients.models.sklearn_models`. Every PyTorch model is a
:class:`~clients.models.split.SplitModel`: a ``body`` from ``(N, C, H, W)`` images to
features and a linear ``head`` from features to ``(N, num_classes)`` logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from clients.models import small_nets, torchvision_nets
from clients.models.sklearn_models import SKLEARN_MODELS
from clients.models.split import SplitModel, split_off_head, split_sequential, with_projection

InputShape = tuple[int, int, int]


@dataclass(frozen=True)
class _TorchSpec:
    family: str
    min_side: int
    square_only: bool
    build: Callable[[InputShape, int], nn.Module]
    """Builds the whole (unsplit) network, exactly as before the body/head split."""
    head_path: str | None
    """Submodule holding the last ``nn.Linear``; ``None`` for an ``nn.Sequential`` net."""
    feature_dim: int
    """Width of the body's output (the head's input), whatever the input shape."""

    def split(self, model: nn.Module) -> SplitModel:
        if self.head_path is None:
            return split_sequential(model)
        return split_off_head(model, self.head_path)


_TORCH_SPECS: dict[str, _TorchSpec] = {
    "cnn_small": _TorchSpec(
        "cnn", 4, False, lambda s, k: small_nets.SmallCNN(s[0], k), None, 128
    ),
    "cnn_wide": _TorchSpec("cnn", 4, False, lambda s, k: small_nets.WideCNN(s[0], k), None, 128),
    "mlp": _TorchSpec("mlp", 1, False, lambda s, k: small_nets.MLP(s, k), None, 128),
    "resnet18": _TorchSpec(
        "resnet", 8, False, lambda s, k: torchvision_nets.resnet18(s[0], k), "fc", 512
    ),
    "mobilenet_v3_small": _TorchSpec(
        "mobilenet", 8, False, lambda s, k: torchvision_nets.mobilenet_v3_small(s[0], k),
        "classifier.3", 1024,
    ),
    "shufflenet_v2": _TorchSpec(
        "shufflenet", 8, False, lambda s, k: torchvision_nets.shufflenet_v2(s[0], k), "fc", 1024
    ),
    "vit_tiny": _TorchSpec(
        "transformer", 8, True, lambda s, k: torchvision_nets.vit_tiny(s[0], s[1], k),
        "heads.head", 64,
    ),
    "lenet5": _TorchSpec("cnn", 4, False, lambda s, k: small_nets.LeNet5(s[0], k), None, 84),
}

ARCHITECTURES: tuple[str, ...] = tuple(_TORCH_SPECS)
"""Names accepted by :func:`build_model` (PyTorch models)."""

ALL_MODELS: tuple[str, ...] = ARCHITECTURES + SKLEARN_MODELS
"""Every name :func:`describe` knows: PyTorch architectures, then scikit-learn models."""


def _unknown_name(name: object, valid: tuple[str, ...], kind: str) -> ValueError:
    return ValueError(f"Unknown {kind} {name!r}; valid names are: {', '.join(valid)}.")


def _check_input_shape(name: str, input_shape: Any) -> InputShape:
    """Validate ``input_shape`` for architecture ``name`` and return it as a tuple of ints."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape
    ):
        raise ValueError(
            f"input_shape must be (channels, height, width) as three integers, got {input_shape!r}."
        )
    channels, height, width = (int(d) for d in shape)
    if channels < 1 or height < 1 or width < 1:
        raise ValueError(f"input_shape dimensions must be positive, got {shape}.")
    spec = _TORCH_SPECS[name]
    if spec.square_only and height != width:
        raise ValueError(f"{name} needs square images (height == width), got {height}x{width}.")
    if min(height, width) < spec.min_side:
        raise ValueError(
            f"{name} needs images of at least {spec.min_side}x{spec.min_side} pixels, "
            f"got {height}x{width}."
        )
    return channels, height, width


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_name(name: str) -> None:
    if name not in _TORCH_SPECS:
        if name in SKLEARN_MODELS:
            raise ValueError(
                f"{name!r} is a scikit-learn model: build it with build_sklearn_model. "
                f"PyTorch architectures are: {', '.join(ARCHITECTURES)}."
            )
        raise _unknown_name(name, ARCHITECTURES, "architecture")


def native_feature_dim(name: str, input_shape: tuple[int, int, int]) -> int:
    """Width of an architecture's features without a projection adapter.

    This is what the body of ``build_model(name, input_shape, ...)`` outputs per image
    (the input width of its native last linear layer): 128 for ``cnn_small``,
    ``cnn_wide`` and ``mlp``, 84 for ``lenet5``, 512 for ``resnet18``, 1024 for
    ``mobilenet_v3_small`` and ``shufflenet_v2``, 64 for ``vit_tiny``.

    Parameters
    ----------
    name : str
        One of :data:`ARCHITECTURES`.
    input_shape : tuple of int
        ``(C, H, W)`` of one image; validated as in :func:`build_model` (no zoo member's
        width depends on it).

    Returns
    -------
    int
        The native feature width.

    Raises
    ------
    ValueError
        For an unknown ``name`` or an ``input_shape`` the architecture does not accept.
    """
    _check_name(name)
    _check_input_shape(name, input_shape)
    return _TORCH_SPECS[name].feature_dim


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    seed: int = 0,
    feature_dim: int | None = None,
) -> SplitModel:
    """Build a freshly initialised PyTorch classifier of the zoo, split into body and head.

    Parameters
    ----------
    name : str
        One of :data:`ARCHITECTURES`.
    input_shape : tuple of int
        ``(C, H, W)`` of one image, e.g. ``(1, 28, 28)`` or ``(3, 32, 32)``. Any ``C >= 1``;
        ``vit_tiny`` needs ``H == W`` and accepts only exactly that size.
    num_classes : int
        Number of output logits (at least 2).
    seed : int, optional
        Seed of the weight initialisation, by default 0. The global torch RNG is left as
        it was (the seed is applied inside ``torch.random.fork_rng``).
    feature_dim : int, optional
        Width ``d`` of a common feature space. By default (``None``) the network is the
        architecture's own: ``body`` ends where its last linear layer began (width
        :func:`native_feature_dim`) and ``head`` is that layer, so outputs and parameters
        are those of the unsplit network. With ``d``, the body is followed by a
        :class:`~clients.models.split.ProjectionAdapter` to ``d`` features and the head is a
        fresh ``nn.Linear(d, num_classes)`` (the native last layer is discarded); the
        adapter is there even when ``d`` equals the native width.

    Returns
    -------
    SplitModel
        A model in training mode mapping ``(N, C, H, W)`` float images to ``(N, num_classes)``
        logits, with submodules ``body`` (images to ``(N, feature_dim)`` features) and
        ``head`` (features to logits), the int attribute ``feature_dim`` and the str
        attribute ``architecture`` (``name``). No pretrained weights are ever loaded.

    Raises
    ------
    ValueError
        For an unknown ``name`` (the message lists valid names), a malformed or too small
        ``input_shape``, ``num_classes < 2`` or ``feature_dim < 1``.
    """
    _check_name(name)
    shape = _check_input_shape(name, input_shape)
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if feature_dim is not None:
        if not _is_int(feature_dim) or feature_dim < 1:
            raise ValueError(f"feature_dim must be None or an integer >= 1, got {feature_dim!r}.")
    spec = _TORCH_SPECS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.split(spec.build(shape, int(num_classes)))
        if feature_dim is not None:
            model = with_projection(model, int(feature_dim), int(num_classes))
    model.architecture = name
    return model


def count_parameters(model: Any) -> int:
    """Number of parameters of a PyTorch model or a fitted scikit-learn linear model.

    Parameters
    ----------
    model : torch.nn.Module or fitted scikit-learn estimator
        For PyTorch, every parameter (trainable or not) counts; batch-norm running
        statistics are buffers and do not. For scikit-learn, ``coef_`` plus ``intercept_``.

    Returns
    -------
    int
        Total number of scalar parameters.

    Raises
    ------
    ValueError
        If a scikit-learn estimator is not fitted yet.
    TypeError
        If ``model`` is neither a ``torch.nn.Module`` nor a linear scikit-learn estimator.
    """
    if isinstance(model, nn.Module):
        return sum(p.numel() for p in model.parameters())
    if hasattr(model, "get_params") and hasattr(model, "fit"):
        if not hasattr(model, "coef_"):
            raise ValueError(
                f"{type(model).__name__} is not fitted yet: its parameter count is known after fit."
            )
        return int(np.size(model.coef_) + np.size(getattr(model, "intercept_", 0)))
    raise TypeError(
        f"count_parameters expects a torch.nn.Module or a fitted scikit-learn linear model, "
        f"got {type(model).__name__}."
    )


def describe(name: str) -> dict[str, str]:
    """Architecture, family and framework of a zoo member, for logs and results tables.

    Parameters
    ----------
    name : str
        One of :data:`ALL_MODELS`.

    Returns
    -------
    dict
        ``{"architecture": name, "family": ..., "framework": ...}`` where family is one of
        ``"cnn"``, ``"resnet"``, ``"mobilenet"``, ``"shufflenet"``, ``"transformer"``,
        ``"mlp"``, ``"linear"`` and framework is ``"pytorch"`` or ``"scikit-learn"``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists valid names).
    """
    if name in _TORCH_SPECS:
        return {"architecture": name, "family": _TORCH_SPECS[name].family, "framework": "pytorch"}
    if name in SKLEARN_MODELS:
        return {"architecture": name, "family": "linear", "framework": "scikit-learn"}
    raise _unknown_name(name, ALL_MODELS, "model")
