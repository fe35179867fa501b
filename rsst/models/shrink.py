"""Structured export: remove the output channels a channel-wise ticket zeroed, for real, keeping the function exact.

A conv filter that is all zero still outputs a constant after its BatchNorm (``beta``
minus the scaled running mean, plus the conv bias) and ReLU. Removing the channel
is exact only if that constant's effect on the consumer is kept:

- into a ``Linear`` (after global pooling) or an unpadded conv (1x1), it is a bias;
- into a zero-padded KxK conv it is an input-independent *map* (the border taps see
  padding, not the constant): :class:`FoldedConv2d` adds ``conv(ones, sum_j c_j W[:, j])``,
  computed once per input size and cached.

A filter row that is all zero receives no fold, so the order in which links are
shrunk does not matter. Channels added to a residual sum (the last conv of a
residual block, its projection shortcut, the stem of a ResNet) are kept: their
zero filters stay, which is exact. See docs/algorithms.md, "Structured export".
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.densenet import DenseNet as TorchvisionDenseNet
from torchvision.models.resnet import BasicBlock as TorchvisionBasicBlock
from torchvision.models.resnet import Bottleneck
from torchvision.models.resnet import ResNet as TorchvisionResNet

from rsst.models.cifar_resnet import BasicBlock as CifarBasicBlock
from rsst.models.cifar_resnet import CifarResNet
from rsst.models.lth import ConvNet
from rsst.models.mobilenet import MobileNet
from rsst.models.vgg import VGG


class FoldedConv2d(nn.Conv2d):
    """A conv plus the input-independent contribution of removed constant input channels.

    ``fold_kernel`` (``[C_out, 1, kh, kw]``) is ``sum_j c_j W[:, j]`` over the removed
    channels ``j`` with post-activation constant ``c_j``; through zero padding it adds
    ``conv(ones, fold_kernel)``, a map that differs at the borders.
    """

    def __init__(self, conv: nn.Conv2d, fold_kernel: Tensor) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        self.load_state_dict(conv.state_dict())
        self.register_buffer("fold_kernel", fold_kernel.detach().clone())
        self._fold_cache: dict[tuple, Tensor] = {}

    def fold_map(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape[-2:]), x.device, x.dtype)
        cached = self._fold_cache.get(key)
        if cached is None:
            with torch.no_grad():
                ones = torch.ones(1, 1, *x.shape[-2:], device=x.device, dtype=x.dtype)
                kernel = self.fold_kernel.to(x.dtype)
                cached = F.conv2d(ones, kernel, None, self.stride, self.padding, self.dilation)
            self._fold_cache = {key: cached}
        return cached

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.fold_map(x)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fold_cache"] = {}
        return state


# -- primitives -------------------------------------------------------------------------------------


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _conv(like: nn.Conv2d, weight: Tensor, bias: Tensor | None, groups: int, fold: Tensor | None = None) -> nn.Conv2d:
    """A conv with ``like``'s geometry and the given tensors (a :class:`FoldedConv2d` when ``fold`` is set)."""
    out_ch, in_per_group = weight.shape[:2]
    conv = nn.Conv2d(
        in_per_group * groups,
        out_ch,
        like.kernel_size,
        like.stride,
        like.padding,
        like.dilation,
        groups,
        bias is not None,
        like.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv if fold is None else FoldedConv2d(conv, fold)


def _fold_of(conv: nn.Conv2d) -> Tensor | None:
    return conv.fold_kernel if isinstance(conv, FoldedConv2d) else None


def bn_constant(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """Eval-mode BatchNorm of a per-channel constant ``x``: ``(x - mean) / sqrt(var + eps) * gamma + beta``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("structured export needs BatchNorm running statistics (track_running_stats=True)")
    y = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    if bn.affine:
        y = y * bn.weight + bn.bias
    return y


def _slice_bn(bn: nn.BatchNorm2d, keep: Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(
        int(keep.sum()),
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        device=bn.running_mean.device,
        dtype=bn.running_mean.dtype,
    )
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[keep])
            new.bias.copy_(bn.bias[keep])
        new.running_mean.copy_(bn.running_mean[keep])
        new.running_var.copy_(bn.running_var[keep])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def _slice_out(conv: nn.Conv2d, keep: Tensor) -> nn.Conv2d:
    """Keep the output channels ``keep`` (a depthwise conv loses the matching input channels too)."""
    fold = _fold_of(conv)
    fold = None if fold is None else fold[keep]
    bias = None if conv.bias is None else conv.bias[keep]
    if conv.groups == 1:
        return _conv(conv, conv.weight[keep], bias, 1, fold)
    if conv.groups == conv.in_channels == conv.out_channels:
        return _conv(conv, conv.weight[keep], bias, int(keep.sum()), fold)
    raise ValueError(f"cannot remove output channels of a grouped conv with groups={conv.groups}")


def _consume(consumer: nn.Module, keep: Tensor, const: Tensor) -> nn.Module:
    """``consumer`` without its input channels ``~keep``, whose constant values ``const`` are folded in exactly."""
    removed = ~keep
    if isinstance(consumer, nn.Linear):
        new = nn.Linear(int(keep.sum()), consumer.out_features, True, consumer.weight.device, consumer.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(consumer.weight[:, keep])
            bias = consumer.bias if consumer.bias is not None else torch.zeros_like(new.bias)
            new.bias.copy_(bias + consumer.weight[:, removed] @ const)
        return new
    if not isinstance(consumer, nn.Conv2d) or consumer.groups != 1:
        raise ValueError(f"cannot fold removed channels into {consumer!r}")
    weight = consumer.weight
    kernel = torch.einsum("oikl,i->okl", weight[:, removed], const).unsqueeze(1)
    bias, fold = consumer.bias, _fold_of(consumer)
    if bool(kernel.any()) and all(p == 0 for p in _padding(consumer)):  # every tap sees the constant: a bias
        bias = (bias if bias is not None else torch.zeros_like(kernel[:, 0, 0, 0])) + kernel.sum((1, 2, 3))
    elif bool(kernel.any()):  # zero padding: the border taps do not see it, so it is a map
        fold = kernel if fold is None else fold + kernel
    return _conv(consumer, weight[:, keep], bias, 1, fold)


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    if isinstance(conv.padding, str):
        return (0,) if conv.padding == "valid" else (1,)
    return tuple(conv.padding)


def _dead_rows(masks: Mapping[str, Tensor], conv_name: str) -> Tensor | None:
    mask = masks.get(f"{conv_name}.weight")
    if mask is None or mask.dim() != 4:
        return None
    return mask.flatten(1).sum(1) == 0


def _link(model: nn.Module, producer: str, norm: str, consumer: str, dead: Tensor | None) -> None:
    """Remove ``producer``'s dead output channels, followed by ``norm`` and ReLU, from it, ``norm`` and ``consumer``."""
    if dead is None or not bool(dead.any()):
        return
    conv, bn = _get(model, producer), _get(model, norm)
    dead = dead.to(conv.weight.device)
    keep = ~dead
    pre = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    const = F.relu(bn_constant(bn, pre))[dead]
    _set(model, consumer, _consume(_get(model, consumer), keep, const))
    _set(model, producer, _slice_out(conv, keep))
    _set(model, norm, _slice_bn(bn, keep))


# -- architecture families --------------------------------------------------------------------------

RESIDUAL_BLOCKS = (CifarBasicBlock, TorchvisionBasicBlock, Bottleneck)


def _shrink_resnet(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Residual blocks: the internal convs (all but the last) shrink; the last conv feeds the sum and is kept."""
    for name, block in model.named_modules():
        if not isinstance(block, RESIDUAL_BLOCKS):
            continue
        depth = 3 if isinstance(block, Bottleneck) else 2
        for i in range(1, depth):
            p, n, c = (f"{name}.conv{i}", f"{name}.bn{i}", f"{name}.conv{i + 1}")
            _link(model, p, n, c, _dead_rows(masks, p))


def _shrink_vgg(model: VGG, masks: Mapping[str, Tensor]) -> None:
    """Plain chain conv-BN-ReLU(-maxpool); the last conv's consumer is the classifier (after global pooling)."""
    convs = [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    for k, name in enumerate(convs):
        idx = int(name.split(".")[1])
        if not isinstance(model.features[idx + 1], nn.BatchNorm2d):
            continue
        consumer = convs[k + 1] if k + 1 < len(convs) else model.classifier_name
        _link(model, name, f"features.{idx + 1}", consumer, _dead_rows(masks, name))


def _shrink_lth_conv(model: ConvNet, masks: Mapping[str, Tensor]) -> None:
    """Conv-2/4/6: a chain conv(+bias)-ReLU(-maxpool) without BatchNorm, flattened into ``fc1``.

    A zero filter outputs the constant ``relu(bias)``, unchanged by max-pooling. It folds into
    the next conv (a map, through zero padding) or, for the last conv, into ``fc1``'s bias:
    channel ``j`` is the ``side * side`` consecutive inputs of ``fc1`` from ``j * side * side``.
    """
    convs = [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    for k, name in enumerate(convs):
        dead = _dead_rows(masks, name)
        if dead is None or not bool(dead.any()):
            continue
        conv = _get(model, name)
        dead = dead.to(conv.weight.device)
        keep, const = ~dead, F.relu(conv.bias)[dead]
        if k + 1 < len(convs):
            consumer, cols_keep, cols_const = convs[k + 1], keep, const
        else:
            area = model.side * model.side
            consumer, cols_keep, cols_const = "fc1", keep.repeat_interleave(area), const.repeat_interleave(area)
        _set(model, consumer, _consume(_get(model, consumer), cols_keep, cols_const))
        _set(model, name, _slice_out(conv, keep))


def _shrink_mobilenet(model: MobileNet, masks: Mapping[str, Tensor]) -> None:
    """Channel ``j`` of a depthwise conv and of its producer go together.

    They are removed when the depthwise output is input-independent: its filter is zero,
    or the producer's filter is zero with a post-BN-ReLU constant of exactly 0. Then the
    depthwise output is ``relu(bn1(0))``, folded into the pointwise conv's bias. A zero
    producer filter with a non-zero constant is kept (exact, not smaller).
    """
    producer, pnorm = "conv1", "bn1"
    for i in range(len(model.layers)):
        block = f"layers.{i}"
        dw, dwn, pw = f"{block}.conv1", f"{block}.bn1", f"{block}.conv2"
        p_conv, p_bn, dw_conv, dw_bn = (_get(model, n) for n in (producer, pnorm, dw, dwn))
        channels = dw_conv.out_channels
        device = dw_conv.weight.device
        dead = torch.zeros(channels, dtype=torch.bool, device=device)
        dw_dead = _dead_rows(masks, dw)
        if dw_dead is not None:
            dead |= dw_dead.to(device)
        p_dead = _dead_rows(masks, producer)
        if p_dead is not None:
            pre = p_conv.bias if p_conv.bias is not None else torch.zeros_like(p_bn.running_mean)
            p_zero = F.relu(bn_constant(p_bn, pre)) == 0
            dead |= p_dead.to(device) & p_zero
        if bool(dead.any()):
            keep = ~dead
            const = F.relu(bn_constant(dw_bn, torch.zeros_like(dw_bn.running_mean)))[dead]
            _set(model, pw, _consume(_get(model, pw), keep, const))
            _set(model, dw, _slice_out(dw_conv, keep))
            _set(model, dwn, _slice_bn(dw_bn, keep))
            _set(model, producer, _slice_out(p_conv, keep))
            _set(model, pnorm, _slice_bn(p_bn, keep))
        producer, pnorm = pw, f"{block}.bn2"
    _link(model, producer, pnorm, model.classifier_name, _dead_rows(masks, producer))


def _shrink_densenet(model: TorchvisionDenseNet, masks: Mapping[str, Tensor]) -> None:
    """Pre-activation dense blocks: every zero filter is an exact zero in the concatenated stream.

    Inside a dense layer, conv1 -> norm2 -> ReLU -> conv2 is an ordinary link. A zero
    stream channel (a dense layer's conv2 or a transition conv, neither has a bias)
    reaches every consumer as ``relu(norm(0))`` before a 1x1 conv (dense layers'
    conv1, transitions) or the classifier, so it folds into a bias exactly.
    """
    features = model.features
    names = [n for n, _ in features.named_children()]
    stream: list[Tensor] = [torch.zeros(features.conv0.out_channels, dtype=torch.bool)]
    producers: list[tuple[str, Tensor]] = []

    def consume_stream(norm: str, consumer: str) -> None:
        dead = torch.cat(stream)
        if not bool(dead.any()):
            return
        bn = _get(model, norm)
        dead = dead.to(bn.running_mean.device)
        const = F.relu(bn_constant(bn, torch.zeros_like(bn.running_mean)))[dead]
        _set(model, consumer, _consume(_get(model, consumer), ~dead, const))
        _set(model, norm, _slice_bn(bn, ~dead))

    for child in names:
        module = getattr(features, child)
        prefix = f"features.{child}"
        if child.startswith("denseblock"):
            for layer_name, _ in module.named_children():
                layer = f"{prefix}.{layer_name}"
                _link(model, f"{layer}.conv1", f"{layer}.norm2", f"{layer}.conv2", _dead_rows(masks, f"{layer}.conv1"))
                consume_stream(f"{layer}.norm1", f"{layer}.conv1")
                conv2 = f"{layer}.conv2"
                dead = _dead_rows(masks, conv2)
                dead = torch.zeros(_get(model, conv2).out_channels, dtype=torch.bool) if dead is None else dead.cpu()
                stream.append(dead)
                producers.append((conv2, dead))
        elif child.startswith("transition"):
            consume_stream(f"{prefix}.norm", f"{prefix}.conv")
            conv = f"{prefix}.conv"
            dead = _dead_rows(masks, conv)
            dead = torch.zeros(_get(model, conv).out_channels, dtype=torch.bool) if dead is None else dead.cpu()
            stream = [dead]
            producers.append((conv, dead))
    consume_stream("features.norm5", model.classifier_name)
    for name, dead in producers:
        if bool(dead.any()):
            conv = _get(model, name)
            _set(model, name, _slice_out(conv, ~dead.to(conv.weight.device)))


def shrink(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``model`` (eval mode, masks applied) with the channels the masks zeroed removed where exact.

    Supported families: CIFAR ResNets, torchvision ResNets, VGG, MobileNet v1, DenseNet, Conv-2/4/6.
    Any other architecture comes back masked but unshrunk (never a different function).
    """
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, param in out.named_parameters():
            if name in masks:
                param.mul_(masks[name].to(param.device, param.dtype))
        if isinstance(out, (CifarResNet, TorchvisionResNet)):
            _shrink_resnet(out, masks)
        elif isinstance(out, VGG):
            _shrink_vgg(out, masks)
        elif isinstance(out, MobileNet):
            _shrink_mobilenet(out, masks)
        elif isinstance(out, ConvNet):
            _shrink_lth_conv(out, masks)
        elif isinstance(out, TorchvisionDenseNet):
            _shrink_densenet(out, masks)
    return out
