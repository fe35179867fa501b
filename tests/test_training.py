"""The training step keeps pruned weights at exactly zero; the lr schedule follows the original tool's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsst.loop.hot_loop import train_epoch
from rsst.loop.optim import WarmupMultiStep, build_scheduler
from rsst.models.cifar_resnet import resnet20
from rsst.models.prunable import prunable_weights
from rsst.pruning.masks import Masks, apply_masks_, global_magnitude_prune


class StepChecker:
    """Stands in for the progress bar: after every optimiser step, checks that masked weights are zero."""

    def __init__(self, weights: dict[str, torch.Tensor], masks: Masks) -> None:
        self.weights, self.masks, self.steps, self.nonzero = weights, masks, 0, 0

    def update(self, n: int) -> None:
        self.steps += n
        self.nonzero += sum(int((w[self.masks[k] == 0] != 0).sum()) for k, w in self.weights.items())


def test_masked_weights_are_exactly_zero_after_every_optimiser_step():
    torch.manual_seed(0)
    model = resnet20(num_classes=4, in_channels=1, width=8)
    weights = prunable_weights(model)
    masks = global_magnitude_prune(weights, Masks.ones_like(weights), 0.6)
    apply_masks_(weights.values(), masks.values())
    # momentum and weight decay would move pruned weights off zero without the in-place mask
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    sched = build_scheduler(opt, steps_per_epoch=6, warmup_epochs=0, milestones=[], gamma=0.1)
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))) for _ in range(6)]
    checker = StepChecker(weights, masks)
    train_epoch(model, batches, opt, sched, list(weights.values()), list(masks.values()), progress=checker)
    assert checker.steps == 6
    assert checker.nonzero == 0
    alive_moved = sum(int((w[masks[k] == 1] != 0).sum()) for k, w in weights.items())
    assert alive_moved == masks.alive()


def test_train_epoch_calls_the_gradient_hook_between_backward_and_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_scheduler(opt, 1, 0, [], 0.1)
    seen = []
    w = model[1].weight

    def hook() -> None:
        seen.append(w.grad is not None and w.grad.abs().sum().item() > 0)
        w.grad.zero_()  # a hook that blocks the update: the step must then leave w unchanged

    before = w.detach().clone()
    train_epoch(model, [(torch.randn(3, 4), torch.tensor([0, 1, 0]))], opt, sched, [], [], grad_hook=hook)
    assert seen == [True]
    assert torch.equal(w.detach(), before)


@pytest.mark.parametrize(
    ("step", "factor"),
    [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (20, 1.0), (29, 1.0), (30, 0.1), (49, 0.1), (50, 0.1**2)],
)
def test_warmup_is_linear_per_step_and_milestones_decay_per_epoch(step, factor):
    sched = WarmupMultiStep(steps_per_epoch=10, warmup_epochs=2, milestones=[3, 5], gamma=0.1)
    assert sched(step) == pytest.approx(factor)


def test_scheduler_sets_the_optimiser_lr_per_step():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    sched = build_scheduler(opt, steps_per_epoch=2, warmup_epochs=1, milestones=[2], gamma=0.1)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.5, 0.5, 0.05, 0.05])
