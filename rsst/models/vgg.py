"""VGG-16 with batch norm (Simonyan & Zisserman 2015), CIFAR variant.

The thirteen 3x3 convs of VGG-16 (with BN and ReLU) and five 2x2 max-pools, then a
global average pool and a single linear classifier in place of the three 4096-wide
ImageNet layers, as in the lottery-ticket CIFAR code the original tool builds on.
The pools use ``ceil_mode`` so that 28x28 (and smaller) inputs still reach 1x1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """``features.0`` is the stem conv and ``classifier`` the classifier."""

    stem_name = "features.0"
    classifier_name = "classifier"

    def __init__(self, plan: tuple[int | str, ...], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier(out)


def vgg16_bn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> VGG:
    """VGG-16-bn, CIFAR variant: 14.7M parameters for 10 classes; ``image_size`` is accepted for a uniform API."""
    return VGG(VGG16, num_classes, in_channels)
