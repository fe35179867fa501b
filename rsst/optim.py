"""The learning-rate schedule of the original tool: linear warmup per step, then multistep decay per epoch."""

from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupMultiStep:
    """lr factor at optimiser step ``s``: ``min(1, (s+1)/(warmup*steps))`` times ``gamma^(milestones passed)``."""

    def __init__(self, steps_per_epoch: int, warmup_epochs: int, milestones: Sequence[int], gamma: float) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = warmup_epochs * steps_per_epoch
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self.gamma ** sum(epoch >= m for m in self.milestones)


def build_scheduler(
    optimizer: Optimizer, steps_per_epoch: int, warmup_epochs: int, milestones: Sequence[int], gamma: float
) -> LambdaLR:
    """A scheduler stepped once per optimiser step."""
    return LambdaLR(optimizer, WarmupMultiStep(steps_per_epoch, warmup_epochs, milestones, gamma))
