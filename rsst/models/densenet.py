"""DenseNet-121 and DenseNet-161 (Huang et al. 2017): a thin adapter over torchvision's DenseNet.

The original tool offered torchvision's ``densenet161``; this keeps its structure and
parameter names (so torchvision's ImageNet weights load as ``prune.rewind=pretrained``
checkpoints) and adds ``in_channels`` and the stem choice: ``stem: cifar`` swaps the
7x7 stride-2 conv and its max-pool for a 3x3 stride-1 conv; ``auto`` uses it below
64 pixels. Every conv but the stem ``features.conv0`` is prunable, the transition
1x1 convs included.
"""

from __future__ import annotations

import math

from torch import nn
from torchvision.models.densenet import DenseNet as TorchvisionDenseNet

from rsst.models.stem import resolve_stem


class DenseNet(TorchvisionDenseNet):
    """torchvision's DenseNet taking ``in_channels``, with the stem chosen for the image size."""

    stem_name = "features.conv0"
    classifier_name = "classifier"

    def __init__(
        self,
        growth_rate: int,
        block_config: tuple[int, int, int, int],
        num_init_features: int,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        stem: str = "auto",
        memory_efficient: bool = False,
    ) -> None:
        super().__init__(
            growth_rate, block_config, num_init_features, num_classes=num_classes, memory_efficient=memory_efficient
        )
        self.stem = resolve_stem(stem, image_size)
        # The ImageNet stem divides the side by 4 (rounding up), then three transitions halve it (rounding
        # down): the last dense block needs at least 1x1.
        side = image_size if self.stem == "cifar" else math.ceil(image_size / 4)
        if side < 8:
            raise ValueError(
                f"DenseNet with the {self.stem} stem needs images of at least {8 if self.stem == 'cifar' else 29} "
                f"pixels, got image_size={image_size}"
            )
        if self.stem == "cifar":
            self.features.conv0 = nn.Conv2d(in_channels, num_init_features, 3, 1, 1, bias=False)
            self.features.pool0 = nn.Identity()
        else:
            self.features.conv0 = nn.Conv2d(in_channels, num_init_features, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(self.features.conv0.weight)


def densenet121(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    stem: str = "auto",
    memory_efficient: bool = False,
) -> DenseNet:
    """DenseNet-121: growth 32, blocks (6, 12, 24, 16), 64 initial features; 7.0M parameters for 10 classes."""
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes, in_channels, image_size, stem, memory_efficient)


def densenet161(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    stem: str = "auto",
    memory_efficient: bool = False,
) -> DenseNet:
    """DenseNet-161: growth 48, blocks (6, 12, 36, 24), 96 initial features; 26.5M parameters for 10 classes."""
    return DenseNet(48, (6, 12, 36, 24), 96, num_classes, in_channels, image_size, stem, memory_efficient)
