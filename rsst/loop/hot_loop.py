"""The hot loop: one epoch of training and one pass of evaluation, with masks applied in place after every step."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from rsst.parallel.dist import all_reduce_sum_, loss_scale
from rsst.pruning.masks import apply_masks_
from rsst.runtime.execution import Execution


class GradientHook(Protocol):
    """Called between ``backward`` and ``step`` (the RSST penalty implements this)."""

    def __call__(self) -> None: ...


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    weights: Sequence[Tensor],
    masks: Sequence[Tensor],
    grad_hook: GradientHook | None = None,
    progress=None,
    execution: Execution | None = None,
    global_sizes: Sequence[int] | None = None,
    after_step: tuple[int, Callable[[], None]] | None = None,
) -> dict[str, float]:
    """Train for one pass over ``batches``; after every step the pruned weights are exactly zero.

    The gradient hook sees unscaled gradients (with fp16 the scaler unscales first); in a
    multi-process run (``model`` in DistributedDataParallel) it runs after ``backward`` has
    averaged them over the ranks. There ``batches`` are this rank's shards and
    ``global_sizes[b]`` is the size of global batch ``b``: the shard's summed loss is scaled by
    :func:`rsst.parallel.dist.loss_scale`, so the averaged gradient is the mean-loss gradient of
    the whole global batch. Loss and accuracy are accumulated on the device, summed over the
    ranks, and read once at the end. ``after_step=(i, call)``: ``call()`` once step ``i`` (0-based, of
    these batches) has updated the weights and the lr (where round 0 keeps its rewind point).
    """
    run = execution or Execution()
    scaler = run.scaler
    world_size = dist.get_world_size() if global_sizes is not None and dist.is_initialized() else 1
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = torch.zeros((), device=device, dtype=torch.int64)
    for step, (x, y) in enumerate(batches):
        with run.autocast(device):
            logits = model(run.layout(x))
            if world_size > 1:
                assert global_sizes is not None
                sample_sum = F.cross_entropy(logits, y, reduction="sum")
                loss = sample_sum * loss_scale(global_sizes[step], world_size)
            else:
                loss = F.cross_entropy(logits, y)
                sample_sum = loss * y.shape[0]
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        if grad_hook is not None:
            grad_hook()
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
        apply_masks_(weights, masks)
        if after_step is not None and step == after_step[0]:
            after_step[1]()
        loss_sum += sample_sum.detach().float()
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.shape[0]
        if progress is not None:
            progress.update(1)
    totals = [loss_sum.double(), correct, seen]
    if world_size > 1:
        all_reduce_sum_(totals)
    loss_total, correct_total, seen_total = float(totals[0]), int(totals[1]), max(int(totals[2]), 1)
    return {"train_loss": loss_total / seen_total, "train_acc": 100.0 * correct_total / seen_total}


@torch.inference_mode()
def evaluate_counts(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], execution: Execution | None = None
) -> tuple[int, int]:
    """(correct top-1 predictions, samples seen) over ``batches``, under ``inference_mode``."""
    run = execution or Execution()
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in batches:
        with run.autocast(device):
            logits = model(run.layout(x))
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    return int(correct), seen


def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], execution: Execution | None = None) -> float:
    """Top-1 accuracy in percent (under ``inference_mode``, in the execution's precision and layout)."""
    correct, seen = evaluate_counts(model, batches, execution)
    return 100.0 * correct / max(seen, 1)
