"""The optimiser's multi-tensor kernels, and the original tool's learning-rate schedule:
linear warmup per step, then multistep decay per epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupMultiStep:
    """lr factor at optimiser step ``s``: ``min(1, (s+1)/(warmup*steps))`` times ``gamma^(milestones passed)``.

    ``start``: the scheduler's step 0 is step ``start`` of the schedule (a round rewound to step ``start`` of
    round 0 continues round 0's schedule from there).
    """

    def __init__(
        self, steps_per_epoch: int, warmup_epochs: int, milestones: Sequence[int], gamma: float, start: int = 0
    ) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = warmup_epochs * steps_per_epoch
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        self.start = start

    def __call__(self, step: int) -> float:
        step += self.start
        epoch = step // self.steps_per_epoch
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self.gamma ** sum(epoch >= m for m in self.milestones)


def build_scheduler(
    optimizer: Optimizer,
    steps_per_epoch: int,
    warmup_epochs: int,
    milestones: Sequence[int],
    gamma: float,
    start: int = 0,
) -> LambdaLR:
    """A scheduler stepped once per optimiser step, from step ``start`` of the schedule."""
    return LambdaLR(optimizer, WarmupMultiStep(steps_per_epoch, warmup_epochs, milestones, gamma, start))


def build_optimizer(factory: Callable[..., Optimizer], params: Iterable[Any], device: torch.device) -> Optimizer:
    """``factory(params)`` with multi-tensor kernels unless the config chose them.

    When the optimizer config sets neither ``fused`` nor ``foreach``: the fused
    kernel on CUDA (one launch per step for all parameters), ``foreach`` elsewhere.
    """
    chosen = getattr(factory, "keywords", {}) or {}
    if chosen.get("fused") is not None or chosen.get("foreach") is not None:
        return factory(params)
    try:
        return factory(params, **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    except (TypeError, RuntimeError):  # an optimiser without these options, or without a fused kernel here
        return factory(params)
