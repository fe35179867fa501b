"""The model zoo: every architecture builds for every data-set shape, trains, and names its stem and classifier."""

from __future__ import annotations

import pytest
import torch
from helpers import CONF, compose_config
from torch import nn

from rsst.config.checks import build
from rsst.models import prunable_weights, stem_module_name
from rsst.models.cifar_resnet import resnet20, resnet56
from rsst.models.densenet import densenet121
from rsst.models.mobilenet import mobilenet
from rsst.models.resnet import resnet18, resnet50

ARCHS = sorted(p.stem for p in (CONF / "arch").glob("*.yaml"))
MLPS = {"lenet_300_100"}  # no conv, no conv stem: tests/test_lth_models.py
CONV_ARCHS = [a for a in ARCHS if a not in MLPS]
SHAPES = {"32x32x3": (3, 32), "64x64x3": (3, 64), "28x28x1": (1, 28)}


def factory(arch: str):
    return build(compose_config([f"arch={arch}"]).arch, "arch")


def test_the_zoo_has_every_architecture_of_the_original_tool():
    expected = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18", "resnet50"}
    assert expected | {"vgg16_bn", "mobilenet", "densenet161"} <= set(ARCHS)
    assert {"lenet_300_100", "conv2", "conv4", "conv6"} <= set(ARCHS)  # the lottery-ticket paper's models


def test_cifar_resnet_parameter_counts_match_the_paper():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(resnet20(num_classes=10)) == 269_722  # 0.27M (He et al. 2016, table 6)
    assert count(resnet56(num_classes=10)) == 853_018  # 0.85M


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("arch", CONV_ARCHS)
def test_every_architecture_builds_trains_and_prunes_all_but_its_stem(arch, shape):
    torch.manual_seed(0)
    channels, size = shape
    model = factory(arch)(num_classes=7, in_channels=channels, image_size=size)
    stem = model.get_submodule(stem_module_name(model))
    head = model.get_submodule(model.classifier_name)
    assert isinstance(stem, nn.Conv2d) and stem.in_channels == channels
    assert isinstance(head, nn.Linear) and head.out_features == 7
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and bool(out.isfinite().all())
    out.square().mean().backward()
    assert all(p.grad is not None and bool(p.grad.isfinite().all()) for p in model.parameters())
    weights = prunable_weights(model)
    stem_weight = f"{model.stem_name}.weight"
    assert weights and stem_weight not in weights and f"{model.classifier_name}.weight" not in weights
    convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(weights) == convs - {stem_weight}
    assert stem_weight in prunable_weights(model, include_stem=True)
    assert f"{model.classifier_name}.weight" in prunable_weights(model, include_fc=True)


@pytest.mark.parametrize("build_resnet", [resnet18, resnet50])
def test_resnet_stem_is_cifar_below_64_pixels_and_imagenet_from_64(build_resnet):
    small, large = build_resnet(image_size=32), build_resnet(image_size=64)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.Identity)
    assert (
        large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2) and isinstance(large.maxpool, nn.MaxPool2d)
    )
    forced = build_resnet(image_size=64, stem="cifar")
    assert forced.conv1.kernel_size == (3, 3) and isinstance(forced.maxpool, nn.Identity)
    with pytest.raises(ValueError, match="arch.stem='tiny': expected one of auto, cifar, imagenet"):
        build_resnet(stem="tiny")


def test_resnet_keeps_torchvision_parameter_names_for_pretrained_weights():
    from torchvision.models import resnet18 as torchvision_resnet18

    ours = resnet18(num_classes=1000, image_size=224).state_dict()
    theirs = torchvision_resnet18().state_dict()
    assert ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)


def test_densenet_refuses_images_too_small_for_its_stem():
    with pytest.raises(ValueError, match="imagenet stem needs images of at least 29 pixels, got image_size=28"):
        densenet121(image_size=28, stem="imagenet")
    assert densenet121(image_size=28).features.conv0.kernel_size == (3, 3)  # auto: the CIFAR stem


def test_mobilenet_depthwise_convs_are_prunable():
    model = mobilenet()
    depthwise = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13 and set(depthwise) <= set(prunable_weights(model))
