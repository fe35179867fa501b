"""The size of a structured ticket: parameters and MACs of the network its channel removal leaves.

Library code both the round loop (a Refill/RSST round records its exported size) and
``rsst.export`` use; the loop never imports the command-line module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rsst.models.shrink import shrink


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of a single input, over every ``Conv2d`` and ``Linear``.

    A conv costs ``output elements x in_channels / groups x kernel area``; a linear layer
    ``output elements x in_features``. Cached input-independent maps are not counted.
    """
    total = 0

    def hook(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        nonlocal total
        per_sample = output.numel() // output.shape[0]
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += per_sample * (module.in_channels // module.groups) * kh * kw
        else:
            total += per_sample * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    param = next(model.parameters())
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape[1:], device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
    return total


def dead_channels(masks: Mapping[str, Tensor]) -> int:
    """Output channels (rows of conv masks) with no surviving weight."""
    return sum(int((m.flatten(1).sum(1) == 0).sum()) for m in masks.values() if m.dim() == 4)


def is_channel_wise(masks: Mapping[str, Tensor]) -> bool:
    """Every conv row all ones or all zeros, and at least one row removed: a Refill/RSST ticket."""
    rows = [m.flatten(1) for m in masks.values() if m.dim() == 4]
    whole = all(bool(((r.sum(1) == 0) | (r.sum(1) == r.shape[1])).all()) for r in rows)
    return whole and dead_channels(masks) > 0


def structured_size(model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int]) -> dict[str, int]:
    """Parameters and MACs (batch 1) of the exported network; cheap, no timing."""
    exported = shrink(model, masks)
    return {"params": count_params(exported), "macs": count_macs(exported, input_shape)}
