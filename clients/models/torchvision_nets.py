"""torchvision architectures adapted to small images (28x28, 32x32, down to 8x8).

Every builder passes ``weights=None``: nothing is ever downloaded. The adaptation is the
usual CIFAR one: the stem convolution takes ``C`` input channels with stride 1 and the
stem max-pool is removed, so a 28x28 image is not shrunk to 7x7 before the first block.
Replaced layers are re-initialised the way torchvision initialises the original ones.
These builders return the whole torchvision model; :func:`clients.models.build_model`
then splits its last linear layer off as the head (see :mod:`clients.models.split`).
"""

from __future__ import annotations

import math

from torch import nn


def _models():
    """``torchvision.models``, imported on first use.

    A process that builds no torchvision model (a Deployment Engine ClientApp of a small
    CNN, started afresh for every message) saves the ~2 s import.
    """
    from torchvision import models

    return models


def _kaiming_fan_out(conv: nn.Conv2d) -> nn.Conv2d:
    """Initialise ``conv`` like torchvision's ResNet and MobileNet convolutions."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def resnet18(in_channels: int, num_classes: int) -> nn.Module:
    """ResNet-18 with a 3x3 stride-1 stem and no stem max-pool (the CIFAR variant).

    Parameters
    ----------
    in_channels : int
        Number of image channels ``C``.
    num_classes : int
        Number of output logits.

    Returns
    -------
    torch.nn.Module
        A ``torchvision.models.ResNet`` (about 11.2M parameters for 10 classes).
    """
    model = _models().resnet18(weights=None, num_classes=num_classes)
    model.conv1 = _kaiming_fan_out(
        nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    )
    model.maxpool = nn.Identity()
    return model


def mobilenet_v3_small(in_channels: int, num_classes: int) -> nn.Module:
    """MobileNetV3-Small with a stride-1 first convolution taking ``in_channels`` channels.

    Its batch norms use PyTorch's default momentum 0.1 instead of torchvision's 0.01: a
    federated client takes a few dozen steps a round, and with 0.01 the running statistics
    lag so far behind that the model in eval mode predicts one class while it trains well.

    Parameters
    ----------
    in_channels : int
        Number of image channels ``C``.
    num_classes : int
        Number of output logits.

    Returns
    -------
    torch.nn.Module
        A ``torchvision.models.MobileNetV3`` (about 1.5M parameters for 10 classes).
    """
    model = _models().mobilenet_v3_small(weights=None, num_classes=num_classes)
    stem = model.features[0][0]
    model.features[0][0] = _kaiming_fan_out(
        nn.Conv2d(in_channels, stem.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return model


def shufflenet_v2(in_channels: int, num_classes: int) -> nn.Module:
    """ShuffleNetV2 x0.5 with a stride-1 first convolution and no stem max-pool.

    Parameters
    ----------
    in_channels : int
        Number of image channels ``C``.
    num_classes : int
        Number of output logits.

    Returns
    -------
    torch.nn.Module
        A ``torchvision.models.ShuffleNetV2`` (about 0.35M parameters for 10 classes).
    """
    model = _models().shufflenet_v2_x0_5(weights=None, num_classes=num_classes)
    stem = model.conv1[0]
    # torchvision leaves ShuffleNetV2 at PyTorch's default init, so a fresh Conv2d matches it.
    model.conv1[0] = nn.Conv2d(
        in_channels, stem.out_channels, kernel_size=3, stride=1, padding=1, bias=False
    )
    model.maxpool = nn.Identity()
    return model


VIT_PATCH_SIZES: dict[int, int] = {28: 7, 32: 4}
"""Patch size used by :func:`vit_tiny` for the common image sides (a 4x4 or 8x8 token grid)."""


def vit_patch_size(side: int) -> int:
    """Patch size :func:`vit_tiny` uses for square images of ``side`` pixels.

    ``VIT_PATCH_SIZES`` for 28 and 32; otherwise the largest divisor of ``side`` that
    still leaves a grid of at least 4x4 patches (2 for 8x8 digits).

    Parameters
    ----------
    side : int
        Image height (= width) in pixels.

    Returns
    -------
    int
        A patch size that divides ``side``.

    Raises
    ------
    ValueError
        If no patch size of at least 2 pixels divides ``side`` with a 4x4 or finer grid
        (1-pixel patches would make one token per pixel: far too slow).
    """
    if side in VIT_PATCH_SIZES:
        return VIT_PATCH_SIZES[side]
    candidates = [p for p in range(2, side // 4 + 1) if side % p == 0]
    if not candidates:
        raise ValueError(
            f"vit_tiny needs an image side divisible by a patch size >= 2 that leaves at least "
            f"a 4x4 patch grid; side {side} has none. Resize the images (e.g. to 28 or 32)."
        )
    return max(candidates)


def vit_tiny(in_channels: int, side: int, num_classes: int) -> nn.Module:
    """A 2-layer Vision Transformer (4 heads, width 64, MLP width 128) for ``side x side`` images.

    Parameters
    ----------
    in_channels : int
        Number of image channels ``C``.
    side : int
        Image height (= width); the model only accepts exactly this size.
    num_classes : int
        Number of output logits.

    Returns
    -------
    torch.nn.Module
        A ``torchvision.models.VisionTransformer``. Its head starts at zero, as in torchvision,
        so an untrained model outputs all-zero logits.
    """
    patch = vit_patch_size(side)
    model = _models().VisionTransformer(
        image_size=side,
        patch_size=patch,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=num_classes,
    )
    conv_proj = nn.Conv2d(in_channels, 64, kernel_size=patch, stride=patch)
    nn.init.trunc_normal_(conv_proj.weight, std=math.sqrt(1 / (in_channels * patch * patch)))
    nn.init.zeros_(conv_proj.bias)
    model.conv_proj = conv_proj
    return model
