"""How a batch runs: the device, autocast dtype, memory layout, loss scaler and ``torch.compile``.

The hot loop's knobs (``train.amp``, ``train.channels_last``, ``train.compile``) are resolved
here into an :class:`Execution`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rsst.config.schema import COMPILE_MODES as COMPILE_MODES  # the schema owns the choices
from rsst.runtime.precision import off_if_false, resolve_amp


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=auto or device=cpu")
    return device


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
