"""Registry of the heterogeneous model zoo: build any member by name.

PyTorch models come from :mod:`clients.models.small_nets` and
:mod:`clients.models.torchvision_nets`; scikit-learn models from
:mod:`clients.models.sklearn_models`. Every PyTorch model takes ``(N, C, H, W)`` images
and returns ``(N, num_classes)`` logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from clients.models import small_nets, torchvision_nets
from clients.models.sklearn_models import SKLEARN_MODELS

InputShape = tuple[int, int, int]


@dataclass(frozen=True)
class _TorchSpec:
    family: str
    min_side: int
    square_only: bool
    build: Callable[[InputShape, int], nn.Module]


_TORCH_SPECS: dict[str, _TorchSpec] = {
    "cnn_small": _TorchSpec("cnn", 4, False, lambda s, k: small_nets.SmallCNN(s[0], k)),
    "cnn_wide": _TorchSpec("cnn", 4, False, lambda s, k: small_nets.WideCNN(s[0], k)),
    "mlp": _TorchSpec("mlp", 1, False, lambda s, k: small_nets.MLP(s, k)),
    "resnet18": _TorchSpec("resnet", 8, False, lambda s, k: torchvision_nets.resnet18(s[0], k)),
    "mobilenet_v3_small": _TorchSpec(
        "mobilenet", 8, False, lambda s, k: torchvision_nets.mobilenet_v3_small(s[0], k)
    ),
    "shufflenet_v2": _TorchSpec(
        "shufflenet", 8, False, lambda s, k: torchvision_nets.shufflenet_v2(s[0], k)
    ),
    "vit_tiny": _TorchSpec(
        "transformer", 8, True, lambda s, k: torchvision_nets.vit_tiny(s[0], s[1], k)
    ),
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


def build_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, seed: int = 0
) -> nn.Module:
    """Build a freshly initialised PyTorch classifier of the zoo.

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

    Returns
    -------
    torch.nn.Module
        A model in training mode mapping ``(N, C, H, W)`` float images to ``(N, num_classes)``
        logits. No pretrained weights are ever loaded.

    Raises
    ------
    ValueError
        For an unknown ``name`` (the message lists valid names), a malformed or too small
        ``input_shape``, or ``num_classes < 2``.
    """
    if name not in _TORCH_SPECS:
        if name in SKLEARN_MODELS:
            raise ValueError(
                f"{name!r} is a scikit-learn model: build it with build_sklearn_model. "
                f"PyTorch architectures are: {', '.join(ARCHITECTURES)}."
            )
        raise _unknown_name(name, ARCHITECTURES, "architecture")
    shape = _check_input_shape(name, input_shape)
    is_integer = isinstance(num_classes, (int, np.integer)) and not isinstance(num_classes, bool)
    if not is_integer or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _TORCH_SPECS[name].build(shape, int(num_classes))


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
