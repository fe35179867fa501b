"""The model side of a multi-process run: batch statistics over the global batch, and the DDP wrapper.

Every rank trains on its shard of each global batch (``rsst.parallel.dist.shard_windows``). With
plain BatchNorm each rank would normalise with its shard's statistics, so the trained network,
and the ticket, would depend on the number of processes. :func:`global_batch_norm` turns a
model's BatchNorm layers into :class:`GlobalBatchNorm` layers, which, while :func:`synced`
is on, normalise with the mean and variance of the whole global batch (one all-reduce of
per-channel sums per layer, differentiable, as ``torch.nn.SyncBatchNorm`` does on CUDA) and
update their running statistics from them, so every rank's running statistics stay the same.
Outside :func:`synced` (evaluation, scoring a criterion on rank 0 alone) they are plain BatchNorm.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from rsst.parallel.dist import DistEnv, active


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with its gradient: every rank's output depends on every rank's input."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


class GlobalBatchNorm:
    """Mixin for a BatchNorm class: training statistics over every rank's part of the batch."""

    sync = False

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.sync and active()):
            return super().forward(x)  # type: ignore[misc]
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        local = torch.cat(
            [
                xf.sum(dims).double(),
                (xf * xf).sum(dims).double(),
                torch.tensor([x.numel() // max(channels, 1)], dtype=torch.float64, device=x.device),
            ]
        )
        total = _SumOverRanks.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels : 2 * channels] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:  # type: ignore[attr-defined]
            self._update_running(mean.detach(), var.detach(), count.detach())
        shape = [1, channels, *([1] * (x.dim() - 2))]
        y = (xf - mean.float().view(shape)) * torch.rsqrt(var.float().view(shape) + self.eps)  # type: ignore[attr-defined]
        if self.affine:  # type: ignore[attr-defined]
            y = y * self.weight.view(shape) + self.bias.view(shape)  # type: ignore[attr-defined]
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """Momentum update of the running statistics, on the device (no host synchronisation)."""
        self.num_batches_tracked.add_(1)  # type: ignore[attr-defined]
        momentum = self.momentum  # type: ignore[attr-defined]
        if momentum is None:  # a cumulative average: 1 / batches seen so far
            factor = 1.0 / self.num_batches_tracked.to(torch.float64)  # type: ignore[attr-defined]
        else:
            factor = torch.tensor(float(momentum), dtype=torch.float64, device=mean.device)
        unbiased = var * count / (count - 1.0).clamp_min(1.0)
        running_mean, running_var = self.running_mean, self.running_var  # type: ignore[attr-defined]
        running_mean.copy_(running_mean * (1 - factor) + mean * factor)
        running_var.copy_(running_var * (1 - factor) + unbiased * factor)


class GlobalBatchNorm1d(GlobalBatchNorm, nn.BatchNorm1d):
    pass


class GlobalBatchNorm2d(GlobalBatchNorm, nn.BatchNorm2d):
    pass


class GlobalBatchNorm3d(GlobalBatchNorm, nn.BatchNorm3d):
    pass


GLOBAL = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d, nn.BatchNorm3d: GlobalBatchNorm3d}


def global_batch_norm(model: nn.Module) -> int:
    """Give ``model``'s BatchNorm layers global-batch statistics in place (same parameters, same
    state_dict, still ``isinstance`` of their class); returns how many were converted."""
    converted = 0
    for module in model.modules():
        cls = GLOBAL.get(type(module))
        if cls is not None:
            module.__class__ = cls
            converted += 1
    return converted


@contextmanager
def synced(model: nn.Module, on: bool = True) -> Iterator[None]:
    """Within the block, ``model``'s :class:`GlobalBatchNorm` layers reduce their statistics over the ranks."""
    layers = [m for m in model.modules() if isinstance(m, GlobalBatchNorm)]
    for m in layers:
        m.sync = on
    try:
        yield
    finally:
        for m in layers:
            m.sync = False


def wrap(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged over the ranks during ``backward``).

    Only training runs through the wrapper, every rank step for step; evaluation uses ``model``
    itself, as each rank may evaluate a different number of batches. :class:`GlobalBatchNorm`
    keeps the ranks' running statistics identical; DDP's buffer broadcast before each training
    step keeps them bit for bit so.
    """
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
