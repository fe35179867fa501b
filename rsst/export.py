"""Structured export: turn a round's channel-wise ticket into a smaller dense network and measure its speed-up.

    python -m rsst.export RUN_DIR --round R [--out FILE] [--repeats N]

Loads ``weights/round_<R>.pt`` and ``masks/round_<R>.pt``, removes the output channels
whose filters are all zero (:func:`rsst.models.shrink.shrink`), saves the exported
network whole (``torch.save(model)``; load it with ``torch.load(FILE, weights_only=False)``)
and writes ``export_round_<R>.json``: parameters, MACs, and batch-1 / batch-256 latency of
the dense (masked) and the exported network on the current device, with their ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from rsst.config import build
from rsst.io import atomic_torch_save, atomic_write_text
from rsst.models.shrink import shrink
from rsst.training import resolve_device


class NothingToRemove(ValueError):
    """The ticket has no output channel whose filter is entirely zero (an unstructured ticket)."""


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of a single input, over every ``Conv2d`` and ``Linear``.

    A conv costs ``output elements x in_channels / groups x kernel area``; a linear layer
    ``output elements x in_features``. Cached input-independent maps are not counted.
    """
    total = 0

    def hook(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        nonlocal total
        per_sample = output.numel() // output.shape[0]
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += per_sample * (module.in_channels // module.groups) * kh * kw
        else:
            total += per_sample * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    param = next(model.parameters())
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape[1:], device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
    return total


def latency_ms(model: nn.Module, x: Tensor, repeats: int = 10, warmup: int = 3) -> float:
    """Median wall time of ``model(x)`` in milliseconds, after ``warmup`` untimed runs, in inference mode."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def dead_channels(masks: Mapping[str, Tensor]) -> int:
    """Output channels (rows of conv masks) with no surviving weight."""
    return sum(int((m.flatten(1).sum(1) == 0).sum()) for m in masks.values() if m.dim() == 4)


def is_channel_wise(masks: Mapping[str, Tensor]) -> bool:
    """Every conv row all ones or all zeros, and at least one row removed: a Refill/RSST ticket."""
    rows = [m.flatten(1) for m in masks.values() if m.dim() == 4]
    whole = all(bool(((r.sum(1) == 0) | (r.sum(1) == r.shape[1])).all()) for r in rows)
    return whole and dead_channels(masks) > 0


def structured_size(model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int]) -> dict[str, int]:
    """Parameters and MACs (batch 1) of the exported network; cheap, no timing."""
    exported = shrink(model, masks)
    return {"params": count_params(exported), "macs": count_macs(exported, input_shape)}


def channel_counts(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def load_round(run_dir: Path, round_: int, device: torch.device) -> tuple[nn.Module, dict[str, Tensor], tuple]:
    """The run's model with round ``round_``'s weights, its masks, and the input shape ``(1, C, H, W)``."""
    weights_file = run_dir / "weights" / f"round_{round_}.pt"
    masks_file = run_dir / "masks" / f"round_{round_}.pt"
    for f in (run_dir / "config.yaml", weights_file, masks_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing: is {run_dir} a run folder that finished round {round_}?")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = build(cfg.dataset, "dataset")
    shape = (1, data.in_channels, data.image_size, data.image_size)
    model = build(cfg.arch, "arch")(
        num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size
    )
    model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    masks = {n: m.float() for n, m in torch.load(masks_file, map_location="cpu", weights_only=True).items()}
    return model.to(device).eval(), {n: m.to(device) for n, m in masks.items()}, shape


def measure(
    dense: nn.Module, exported: nn.Module, input_shape: Sequence[int], repeats: int = 10, batches=(1, 256)
) -> dict[str, Any]:
    """Parameters, MACs and latency of both networks, and exported / dense ratios."""
    param = next(dense.parameters())
    out: dict[str, Any] = {"device": str(param.device)}
    for key, fn in (("params", count_params), ("macs", lambda m: count_macs(m, input_shape))):
        d, e = fn(dense), fn(exported)
        out[key] = {"dense": d, "exported": e, "ratio": e / d}
    for b in batches:
        x = torch.randn(b, *input_shape[1:], device=param.device, dtype=param.dtype)
        d, e = latency_ms(dense, x, repeats), latency_ms(exported, x, repeats)
        out[f"latency_ms_batch{b}"] = {"dense": d, "exported": e, "ratio": e / d}
    return out


def export_round(
    run_dir: str | Path, round_: int, out: str | Path | None = None, device: str = "auto", repeats: int = 10
) -> dict[str, Any]:
    """Export round ``round_`` of the run in ``run_dir``; write the model and ``export_round_<r>.json``."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    dense, masks, shape = load_round(run_dir, round_, dev)
    if dead_channels(masks) == 0:
        density = sum(float(m.sum()) for m in masks.values()) / max(1, sum(m.numel() for m in masks.values()))
        raise NothingToRemove(
            f"{run_dir} round {round_}: nothing to remove: no output channel is entirely zero "
            f"({100 * density:.2f}% of the prunable weights remain, scattered inside filters). Structured "
            "export removes whole channels only; an unstructured (imp) ticket is exactly as large as dense."
        )
    exported = shrink(dense, masks)
    with torch.no_grad():
        for name, param in dense.named_parameters():
            if name in masks:
                param.mul_(masks[name])
    out_file = Path(out) if out else run_dir / f"export_round_{round_}.pt"
    result = {
        "run_dir": str(run_dir),
        "round": round_,
        "model_file": str(out_file),
        "channel_wise": is_channel_wise(masks),
        "dead_channels": dead_channels(masks),
        "input_shape": list(shape),
        "channels": {
            n: [c, channel_counts(exported).get(n, 0)]
            for n, c in channel_counts(dense).items()
            if c != channel_counts(exported).get(n, 0)
        },
        **measure(dense, exported, shape, repeats),
    }
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(exported.cpu(), out_file)
    atomic_write_text(run_dir / f"export_round_{round_}.json", json.dumps(result, indent=2) + "\n")
    return result


def summary(result: dict[str, Any]) -> str:
    lines = [f"exported round {result['round']} of {result['run_dir']} to {result['model_file']}"]
    lines.append(f"{'':24}{'dense':>14}{'exported':>14}{'ratio':>8}")
    for key in ("params", "macs", *[k for k in result if k.startswith("latency_ms")]):
        d, e, r = result[key]["dense"], result[key]["exported"], result[key]["ratio"]
        fmt = "{:>14.3f}" if key.startswith("latency") else "{:>14,}"
        lines.append(f"{key:24}" + fmt.format(d) + fmt.format(e) + f"{r:>8.3f}")
    lines.append(f"device: {result['device']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsst.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder (with config.yaml, weights/ and masks/)")
    parser.add_argument("--round", type=int, required=True, help="the round whose ticket to export")
    parser.add_argument("--out", help="where to save the exported model (default: RUN_DIR/export_round_<R>.pt)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per latency (median reported)")
    args = parser.parse_args(argv)
    try:
        result = export_round(args.run_dir, args.round, args.out, args.device, args.repeats)
    except (NothingToRemove, FileNotFoundError) as exc:
        sys.stderr.write(f"rsst.export: {exc}\n")
        return 2
    sys.stdout.write(summary(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
