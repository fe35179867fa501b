"""The classic lottery-ticket models (Frankle & Carbin 2019, Figure 2): LeNet-300-100 and Conv-2, Conv-4, Conv-6.

``lenet_300_100`` is a multi-layer perceptron on the flattened image: fully connected
layers of 300 and 100 units, then the output layer (266,610 parameters on 28x28x1 for
10 classes, as in the paper). ``conv2`` / ``conv4`` / ``conv6`` are the paper's small
VGG-like networks: pairs of 3x3 convs (64, 64 | 128, 128 | 256, 256, zero-padded, with
bias and ReLU, no BatchNorm), a 2x2 max-pool after each pair, then fully connected
layers of 256, 256 and the output layer. The first fully connected layer's width
follows from ``image_size`` (``channels * (image_size / 2^pairs)^2``), so the networks
build for any data set.

Initialisation: Gaussian Glorot (``xavier_normal_``) weights and zero biases, as the
paper. The paper prunes every layer, fully connected ones included, at per-layer rates
(LeNet: 20% of the hidden layers per round, 10% of the output layer; Conv-2/4/6: convs
10%/10%/15%, fully connected 20%, output 10%): run them with ``prune.include_fc=true``
and ``prune.rate_fc`` / ``prune.rate_output`` (docs/algorithms.md, section 1a).

Layers are named ``features.<i>`` (the convs, ``features.0`` is the stem), ``fc1``,
``fc2`` and ``fc3`` (the output layer, ``classifier_name``). The MLP has no conv: its
``stem_name`` is ``fc1``, the layer that reads the image (re-initialised, like a conv
stem, for ``prune.rewind=pretrained``); the stem rule of :mod:`rsst.models.prunable`
concerns convs only, so ``prune.include_fc=true`` prunes ``fc1`` too, as the paper did.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

CONV2 = (64, 64, "M")
CONV4 = (64, 64, "M", 128, 128, "M")
CONV6 = (64, 64, "M", 128, 128, "M", 256, 256, "M")


def _glorot_(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)


class LeNet300100(nn.Module):
    """LeNet-300-100: ``fc1`` (image -> 300), ``fc2`` (300 -> 100), ``fc3`` (100 -> classes), ReLU between."""

    stem_name = "fc1"
    classifier_name = "fc3"
    arch_name = "lenet_300_100"

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        _glorot_(self)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.relu(self.fc2(out)))


class ConvNet(nn.Module):
    """Conv-2/4/6: ``features`` (3x3 conv + ReLU, ``"M"`` a 2x2 max-pool), then ``fc1``, ``fc2`` (256) and ``fc3``."""

    stem_name = "features.0"
    classifier_name = "fc3"

    def __init__(
        self, plan: tuple[int | str, ...], name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32
    ) -> None:
        super().__init__()
        pools = plan.count("M")
        if image_size < 2**pools:
            raise ValueError(f"{name} needs images of at least {2**pools} pixels ({pools} max-pools), got {image_size}")
        self.arch_name = name
        layers: list[nn.Module] = []
        channels = in_channels
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.side = image_size // 2**pools  # the feature map's height and width at the flatten
        self.fc1 = nn.Linear(channels * self.side * self.side, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)
        _glorot_(self)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.fc1(torch.flatten(self.features(x), 1)))
        return self.fc3(torch.relu(self.fc2(out)))


def lenet_300_100(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> LeNet300100:
    """LeNet-300-100: 266,610 parameters on 28x28x1 for 10 classes."""
    return LeNet300100(num_classes, in_channels, image_size)


def conv2(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ConvNet:
    """Conv-2: 4,301,642 parameters on 32x32x3 for 10 classes (the paper: 4.3M)."""
    return ConvNet(CONV2, "conv2", num_classes, in_channels, image_size)


def conv4(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ConvNet:
    """Conv-4: 2,425,930 parameters on 32x32x3 for 10 classes (the paper: 2.4M)."""
    return ConvNet(CONV4, "conv4", num_classes, in_channels, image_size)


def conv6(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ConvNet:
    """Conv-6: 2,262,602 parameters on 32x32x3 for 10 classes (the paper's Figure 2 says 1.7M; see the tests)."""
    return ConvNet(CONV6, "conv6", num_classes, in_channels, image_size)
