"""MobileNet v1 (Howard et al. 2017), CIFAR variant: a 3x3 stride-1 stem, then 13 depthwise-separable blocks.

The ImageNet network's stride-2 stem is stride 1 here, so a 32x32 input ends at 2x2
before the global average pool (the usual CIFAR adaptation). The depthwise 3x3
convs are ``Conv2d`` with ``groups=channels`` and, like every conv but the stem,
are prunable: the original tool pruned all convs alike, and a depthwise filter's
output channel is a channel that refill can keep or drop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (output channels, stride) of each depthwise-separable block
PLAN = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5 + ((1024, 2), (1024, 1))


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class MobileNet(nn.Module):
    """``conv1`` is the stem and ``fc`` the classifier."""

    stem_name = "conv1"
    classifier_name = "fc"

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, in_planes = [], 32
        for planes, stride in PLAN:
            blocks.append(DepthwiseSeparable(in_planes, planes, stride))
            in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def mobilenet(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> MobileNet:
    """MobileNet v1, CIFAR variant: 3.2M parameters for 10 classes; ``image_size`` is accepted for a uniform API."""
    return MobileNet(num_classes, in_channels)
