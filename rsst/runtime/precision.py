"""``train.amp``: the precision a run computes in, and how the CPU's bf16 units are found.

``auto`` is bf16 on a CUDA device that supports it and on a CPU where bf16 trains faster than
fp32 (on x86: AMX), fp32 elsewhere. The resolved name, not ``auto``, is part of a run's identity.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path

import torch

from rsst.config.schema import AMP_CHOICES as AMP_CHOICES  # the schema owns the choices

AMP_MODES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


assert ("auto", *AMP_MODES) == AMP_CHOICES, "rsst.config.schema.AMP_CHOICES and AMP_MODES disagree"


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
