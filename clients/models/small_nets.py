"""Small hand-written PyTorch classifiers: three CNNs (one is LeNet-5) and an MLP.

The CNNs end in adaptive average pooling, so their parameter count does not depend
on the image size; the MLP's first layer does (it sees every pixel). All take
``(N, C, H, W)`` images and return ``(N, num_classes)`` logits; each is an
``nn.Sequential`` whose last layer is the linear head (the zoo splits it off).
"""

from __future__ import annotations

import math

from torch import nn


class SmallCNN(nn.Sequential):
    """Two 3x3 conv layers (16 and 32 channels) with max pooling, then a 2-layer head.

    About 72k parameters for 10 classes, whatever the input size.

    Parameters
    ----------
    in_channels : int
        Number of image channels ``C``.
    num_classes : int
        Number of output logits.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class WideCNN(nn.Sequential):
    """Three 3x3 conv + batch-norm layers (32, 64, 128 channels), global pooling, linear head.

    About 94k parameters for 10 classes, whatever the input size; a max pooling after
    every convolution keeps it cheap enough for CPU clients (about 7.5M multiply-adds
    per 28x28 image).

    Parameters
    ----------
    in_channels : int
        Number of image channels ``C``.
    num_classes : int
        Number of output logits.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(
            *_conv_bn_relu(in_channels, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, num_classes),
        )


class MLP(nn.Sequential):
    """Flatten the image, then two hidden layers (256 and 128 units) with ReLU.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` of one image; the first layer has ``C * H * W`` inputs.
    num_classes : int
        Number of output logits.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )



class LeNet5(nn.Sequential):
    """LeNet-5 (LeCun et al., 1998, "Gradient-based learning applied to document recognition").

    Two 5x5 convolutions (6 and 16 channels, padding 2) with ReLU and 2x2 max pooling,
    an adaptive average pooling to 5x5 (so any image of at least 4x4 pixels works), then
    fully connected layers 400 -> 120 -> 84 with ReLU and the linear head 84 -> classes.
    About 62k parameters for 10 classes.

    Parameters
    ----------
    in_channels : int
        Number of image channels ``C``.
    num_classes : int
        Number of output logits.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )
