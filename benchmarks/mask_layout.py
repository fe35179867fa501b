"""The per-step mask multiply with masks in their weights' memory format, against masks in the standard layout.

    python benchmarks/mask_layout.py [--repeats 2000] [--device cpu|cuda]

ResNet-20's prunable weights in channels-last (the CPU and CUDA default, ``train.channels_last=auto``) times
their masks with ``torch._foreach_mul_``, as ``rsst.pruning.masks.apply_masks_`` does after every step:
masks made :meth:`~rsst.pruning.masks.Masks.like` their weights (what the round loop makes) against the same
masks left in the standard NCHW layout (what rounds from 1 on held before). Prints one JSON line: the median
time of each in microseconds and their ratio, measured in one process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rsst.models.cifar_resnet import resnet20  # noqa: E402
from rsst.models.prunable import prunable_weights  # noqa: E402
from rsst.pruning.masks import Masks, apply_masks_, global_magnitude_prune  # noqa: E402
from rsst.runtime.precision import processor_name  # noqa: E402


def median_us(weights: list[torch.Tensor], masks: list[torch.Tensor], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        apply_masks_(weights, masks)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats}: expected an integer >= 1")
    device = torch.device(args.device)
    model = resnet20(num_classes=10, in_channels=3, image_size=32).to(device, memory_format=torch.channels_last)
    named = prunable_weights(model)
    masks = global_magnitude_prune(named, Masks.ones_like(named), 0.2)
    standard = [m.contiguous() for m in masks.values()]
    matched = list(masks.like(named).values())
    weights = list(named.values())
    with torch.no_grad():
        for _ in range(20):  # warm up both
            apply_masks_(weights, standard)
            apply_masks_(weights, matched)
        figures = {
            "standard_layout_us": round(median_us(weights, standard, args.repeats, device), 1),
            "weights_layout_us": round(median_us(weights, matched, args.repeats, device), 1),
        }
    figures["speedup"] = round(figures["standard_layout_us"] / figures["weights_layout_us"], 2)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else processor_name()
    print(json.dumps({**figures, "device": where, "threads": torch.get_num_threads(), "layers": len(weights)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
