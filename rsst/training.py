"""One epoch of training and one pass of evaluation, with masks applied in place after every step.

The hot loop's knobs (``train.amp``, ``train.channels_last``, ``train.compile``) are
resolved here into a :class:`Execution`: how a batch is laid out, cast and run.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from rsst.distributed import all_reduce_sum_, loss_scale
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


AMP_MODES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
AMP_CHOICES = ("auto", *AMP_MODES)
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")

# Native bf16 units, as PyTorch names them (``torch.cpu.get_capabilities()``) and as /proc/cpuinfo does:
# x86's AMX tiles and AVX-512 BF16 dot products; Arm's BF16 and SVE BF16 instructions.
TORCH_BF16_UNITS = {"x86": ("amx_bf16", "avx512_bf16"), "arm": ("bf16", "sve_bf16")}
CPUINFO_BF16_UNITS = {"x86": ("amx_bf16", "avx512_bf16"), "arm": ("bf16", "svebf16")}
# The units with which bf16 training is faster than fp32 (``train.amp=auto`` picks bf16 on them). On x86 only
# AMX: with AVX-512 BF16 alone, ResNet-20 trains at 0.85x of fp32 (docs/speed.md), with AMX at 1.7x. Arm's
# units are kept as native (not measured here).
FAST_BF16_UNITS = {"x86": ("amx_bf16",), "arm": ("bf16", "sve_bf16", "svebf16")}
CPUINFO = Path("/proc/cpuinfo")


def off_if_false(value: object) -> object:
    """A bare ``off`` in a YAML file reads as ``false``: both spellings mean ``off``."""
    return "off" if value is False else value


def _isa() -> str:
    return "arm" if platform.machine().lower() in ("aarch64", "arm64") else "x86"


def _or_list(names: Sequence[str]) -> str:
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def torch_bf16_units() -> list[str] | None:
    """The native bf16 units PyTorch reports on this CPU ([] for none); None when this PyTorch cannot say."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return None
    try:
        found = capabilities()
    except RuntimeError:  # cpuinfo could not initialise
        return None
    return [unit for units in TORCH_BF16_UNITS.values() for unit in units if found.get(unit) is True]


def cpuinfo_flags(path: Path = CPUINFO) -> set[str]:
    """The processor's feature flags (x86 ``flags``, Arm ``Features``) from /proc/cpuinfo; empty if unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def processor_name() -> str:
    """The CPU's model: /proc/cpuinfo's ``model name`` (x86), else what PyTorch or the platform reports."""
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return " ".join(value.split())
    capabilities = getattr(torch.cpu, "get_capabilities", dict)
    return str(capabilities().get("cpu_name") or platform.processor() or platform.machine())


def fast_bf16_cpu(torch_units: Sequence[str] | None = None, cpu_flags: set[str] | None = None) -> tuple[bool, str]:
    """Whether bf16 training is faster than fp32 on this CPU, and why (a short reason for the log).

    It is where the CPU has the units in :data:`FAST_BF16_UNITS` (on x86, AMX): native bf16 units
    without them (AVX-512 BF16 alone) compute bf16 convolutions slower than fp32. PyTorch's own
    report (``torch.cpu.get_capabilities()``) decides where it exists; the processor's flags in
    /proc/cpuinfo are the fall-back. Either can be injected (tests): ``torch_units`` stands for the
    bf16 units PyTorch reports, ``cpu_flags`` alone for the flags (PyTorch not asked).
    """
    isa = _isa()
    fast = FAST_BF16_UNITS[isa]
    if torch_units is None and cpu_flags is None:
        torch_units = torch_bf16_units()
    if torch_units is not None:
        found, source, verb = list(torch_units), "PyTorch", "reports"
    else:
        flags = cpuinfo_flags() if cpu_flags is None else set(cpu_flags)
        if not flags:
            return False, "neither PyTorch nor /proc/cpuinfo reports the CPU's features"
        names = {u for units in CPUINFO_BF16_UNITS.values() for u in units}
        found, source, verb = sorted(flags & names), "/proc/cpuinfo", "lists"
    winners = [u for u in found if u in fast]
    if winners:
        return True, f"{source} {verb} {', '.join(winners)} on this CPU: bf16 is faster than fp32 there"
    if found:
        return False, (
            f"{source} {verb} {', '.join(found)} but no {_or_list(fast)} on this CPU: "
            "bf16 would be slower than fp32 there"
        )
    return False, f"{source} {verb} no {_or_list(TORCH_BF16_UNITS[isa])} on this CPU"


def resolve_amp_name(
    name: str | bool, device: torch.device, native_cpu: tuple[bool, str] | None = None
) -> tuple[str, str]:
    """``train.amp`` as the precision a run computes in: (``bf16``, ``fp16`` or ``off``; the reason).

    ``auto`` is bf16 on a CUDA device that supports it and on a CPU where bf16 is faster than fp32
    (:func:`fast_bf16_cpu`, or ``native_cpu`` when given), and ``off`` (fp32) elsewhere,
    including MPS. An explicit value is kept (a YAML ``false`` is ``off``).
    """
    name = off_if_false(name)
    if name not in AMP_CHOICES:
        raise ValueError(f"train.amp={name!r} is invalid: expected one of {', '.join(AMP_CHOICES)}")
    if name != "auto":
        return str(name), "set by train.amp"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto, this CUDA device supports bf16"
        return "off", "auto, this CUDA device does not support bf16"
    if device.type == "cpu":
        native, why = native_cpu if native_cpu is not None else fast_bf16_cpu()
        return ("bf16" if native else "off"), f"auto, {why}"
    return "off", f"auto, autocast stays off on {device.type}"


def resolve_amp(name: str | bool, device: torch.device) -> torch.dtype | None:
    """``train.amp`` as an autocast dtype (None: fp32); see :func:`resolve_amp_name`."""
    return AMP_MODES[resolve_amp_name(name, device)[0]]


def resolve_channels_last(value: bool | str, device: torch.device) -> bool:
    """``train.channels_last``: ``auto`` is on for CUDA and the CPU, whose convolution kernels
    (cuDNN's tensor-core ones, oneDNN's) are fastest in NHWC; off elsewhere (e.g. MPS)."""
    if value == "auto":
        return device.type in ("cuda", "cpu")
    if not isinstance(value, bool):
        raise ValueError(f"train.channels_last={value!r} is invalid: expected auto, true or false")
    return value


@dataclass(frozen=True)
class Execution:
    """How batches run: autocast dtype (None: fp32), channels_last layout, and a loss scaler for fp16."""

    amp: torch.dtype | None = None
    channels_last: bool = False
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def from_config(cls, amp: str, channels_last: bool | str, device: torch.device) -> Execution:
        dtype = resolve_amp(amp, device)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        return cls(dtype, resolve_channels_last(channels_last, device), scaler)

    def autocast(self, device: torch.device) -> AbstractContextManager:
        return torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None)

    def layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put ``model``'s parameters in this execution's memory format (in place; the same tensors' values)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def compile_model(model: nn.Module, mode: str | bool) -> nn.Module:
    """``train.compile``: the model compiled once (``off`` returns it as is).

    The compiled module shares ``model``'s parameters and buffers, which the loop
    only ever updates in place (rewinding copies into them, masks multiply them),
    so one compilation serves every round of a run.
    """
    mode = off_if_false(mode)
    if mode not in COMPILE_MODES:
        raise ValueError(f"train.compile={mode!r} is invalid: expected one of {', '.join(COMPILE_MODES)}")
    if mode == "off":
        return model
    return torch.compile(model, mode=mode)


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
) -> dict[str, float]:
    """Train for one pass over ``batches``; after every step the pruned weights are exactly zero.

    The gradient hook sees unscaled gradients (with fp16 the scaler unscales first); in a
    multi-process run (``model`` in DistributedDataParallel) it runs after ``backward`` has
    averaged them over the ranks. There ``batches`` are this rank's shards and
    ``global_sizes[b]`` is the size of global batch ``b``: the shard's summed loss is scaled by
    :func:`rsst.distributed.loss_scale`, so the averaged gradient is the mean-loss gradient of
    the whole global batch. Loss and accuracy are accumulated on the device, summed over the
    ranks, and read once at the end.
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
