"""Benchmark: exported ResNet-20 at 50% channel sparsity vs dense, batch 256, on CPU.

    OMP_NUM_THREADS=1 python benchmarks/export_speed.py [--repeats 10] [--threshold 0.9]

Half of every prunable conv's filters are zeroed (the residual-sum convs keep theirs in
the export, see docs/algorithms.md "Structured export"); prints latency, MACs and the
exported / dense ratios, and exits 1 when the latency ratio is not below ``--threshold``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from rsst.commands.export import measure
from rsst.models import prunable_weights
from rsst.models.cifar_resnet import resnet20
from rsst.models.shrink import shrink


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.9)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = resnet20().eval()
    masks = {}
    for name, w in prunable_weights(model).items():
        rows = torch.zeros(w.shape[0])
        rows[torch.randperm(w.shape[0])[: w.shape[0] // 2]] = 1.0
        masks[name] = rows.view(-1, 1, 1, 1).expand_as(w).clone()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    exported = shrink(model, masks)
    result = measure(model, exported, (1, 3, 32, 32), args.repeats, batches=(256,))
    lat = result["latency_ms_batch256"]
    sys.stdout.write(
        f"ResNet-20, 50% channel sparsity, batch 256, {torch.get_num_threads()} CPU threads\n"
        f"params  {result['params']['dense']:>12,} -> {result['params']['exported']:>12,}"
        f"  ratio {result['params']['ratio']:.3f}\n"
        f"MACs    {result['macs']['dense']:>12,} -> {result['macs']['exported']:>12,}"
        f"  ratio {result['macs']['ratio']:.3f}\n"
        f"latency {lat['dense']:>10.1f}ms -> {lat['exported']:>10.1f}ms  ratio {lat['ratio']:.3f}\n"
    )
    return 0 if lat["ratio"] < args.threshold else 1


if __name__ == "__main__":
    raise SystemExit(main())
