"""One epoch of training and one pass of evaluation, with masks applied in place after every step."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from rsst.pruning.masks import apply_masks_


class GradientHook(Protocol):
    """Called between ``backward`` and ``step`` (the RSST penalty implements this)."""

    def __call__(self) -> None: ...


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=auto or device=cpu")
    return device


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    weights: Sequence[Tensor],
    masks: Sequence[Tensor],
    grad_hook: GradientHook | None = None,
    progress=None,
) -> dict[str, float]:
    """Train for one pass over ``batches``; after every step the pruned weights are exactly zero.

    Loss and accuracy are accumulated on the device and read once at the end.
    """
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in batches:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_hook is not None:
            grad_hook()
        optimizer.step()
        scheduler.step()
        apply_masks_(weights, masks)
        loss_sum += loss.detach() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.shape[0]
        if progress is not None:
            progress.update(1)
    return {"train_loss": float(loss_sum) / max(seen, 1), "train_acc": 100.0 * float(correct) / max(seen, 1)}


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in batches:
        correct += (model(x).argmax(1) == y).sum()
        seen += y.shape[0]
    return 100.0 * float(correct) / max(seen, 1)
