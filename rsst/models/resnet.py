"""ResNet-18 and ResNet-50 (He et al. 2016) on torchvision's implementation, with a CIFAR or an ImageNet stem.

The parameter names are torchvision's, so its ImageNet weights load as
``prune.rewind=pretrained`` checkpoints. ``stem: cifar`` swaps the 7x7 stride-2
stem conv and its max-pool for a 3x3 stride-1 conv (the usual CIFAR adaptation);
``auto`` uses it below 64 pixels. Shortcut projections (``downsample.0``) are
ordinary 1x1 convs and are prunable like every other conv but the stem.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.resnet import ResNet as TorchvisionResNet

from rsst.models.stem import resolve_stem


class ResNet(TorchvisionResNet):
    """torchvision's ResNet taking ``in_channels``, with the stem chosen for the image size."""

    stem_name = "conv1"
    classifier_name = "fc"

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        stem: str = "auto",
    ) -> None:
        super().__init__(block, layers, num_classes=num_classes)
        self.stem = resolve_stem(stem, image_size)
        if self.stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")


def resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, stem: str = "auto") -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2], 11.2M parameters for 10 classes."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, image_size, stem)


def resnet50(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, stem: str = "auto") -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3], 23.5M parameters for 10 classes."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, image_size, stem)
