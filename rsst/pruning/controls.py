"""Lottery-ticket controls: the evidence that a ticket is a ticket (Frankle & Carbin 2019, section 2).

A round's ticket (its mask and its rewind weights) is compared with two networks trained the same way:

- ``reinit``: the same mask, trained from a fresh random initialisation (not ``theta_0``);
- ``shuffle_layerwise``: a random mask with the same number of surviving weights in every layer
  (for a channel ticket, the same number of surviving output channels in every conv layer),
  trained from the ticket's rewind point.

Both are pure functions of the ticket and a seed, so a control is reproducible and resumable.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from rsst.pruning.masks import Masks
from rsst.seeds import derive_seed

CONTROLS = ("reinit", "shuffle_layerwise")


def control_seed(seed: int, round_: int, control: str) -> int:
    """The seed of one control of one round (32 bits, hashed: see :mod:`rsst.seeds`)."""
    return derive_seed("control", control, seed, round_)


def _whole_rows(m: Tensor) -> bool:
    rows = m.flatten(1).sum(1)
    return bool(((rows == 0) | (rows == m[0].numel())).all())


def is_channel_ticket(masks: Mapping[str, Tensor]) -> bool:
    """Every conv mask made of whole output channels, with at least one channel removed."""
    convs = [m for m in masks.values() if m.dim() == 4]
    return bool(convs) and all(_whole_rows(m) for m in convs) and any((m.flatten(1).sum(1) == 0).any() for m in convs)


def shuffle_layerwise(masks: Mapping[str, Tensor], generator: torch.Generator) -> Masks:
    """A random mask with each layer's alive count of ``masks`` (whole channels for a channel ticket's convs)."""
    channels = is_channel_ticket(masks)
    out = Masks()
    for name, m in masks.items():
        cpu = m.detach().to("cpu", torch.float32)
        if channels and cpu.dim() == 4:
            rows = cpu.flatten(1).sum(1) > 0
            keep = torch.randperm(rows.numel(), generator=generator)[: int(rows.sum())]
            new_rows = torch.zeros(rows.numel())
            new_rows[keep] = 1.0
            new = new_rows.view(-1, *([1] * (cpu.dim() - 1))).expand_as(cpu).clone()
        else:
            flat = torch.zeros(cpu.numel())
            flat[torch.randperm(cpu.numel(), generator=generator)[: int(cpu.count_nonzero())]] = 1.0
            new = flat.view_as(cpu)
        out[name] = new.to(m.device)
    return out
