"""Benchmark: test accuracy of fp32 and bf16 training on real Fashion-MNIST, over seeds.

    python benchmarks/bf16_parity.py            # ResNet-20 (width 4), 1,500 train images, 3 epochs, 3 seeds
    python benchmarks/bf16_parity.py --quick    # a smoke run: 128 images, 1 epoch, width 4, 1 seed

Each seed and precision is one real run of ``launch.py`` (a subprocess): IMP with two rounds,
the dense round 0 and one pruning round (80% of the weights kept, rewound to the initial
weights), with ``train.amp=off`` (fp32) and ``train.amp=bf16`` (bf16 autocast). Every run of a
seed sees the same initial weights and the same batches; only the precision differs.

Prints one JSON line per run (test accuracy per round, wall time), then a Markdown table of
the per-seed accuracies, mean ± std (sample standard deviation over seeds) per precision and
round with the difference bf16 - fp32, the total wall time per precision, and a last JSON line
with the summary. The difference counts as within the seed-to-seed spread when its size is at
most the larger of the two precisions' standard deviations.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rsst.runtime.precision import fast_bf16_cpu, processor_name

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {"fp32": "off", "bf16": "bf16"}
ROUNDS = (0, 1)


def run_args(args: argparse.Namespace, seed: int, amp: str, root: Path) -> list[str]:
    """The ``launch.py`` overrides of one run (the same for both precisions but ``train.amp``)."""
    return [
        f"dataset={args.dataset}",
        f"dataset.train_subset={args.train_subset}",
        f"dataset.eval_subset={args.eval_subset}",
        "arch=resnet20",
        f"arch.width={args.width}",
        "struct=imp",
        "prune.rounds=2",
        f"train.epochs={args.epochs}",
        "train.batch_size=64",
        "optimizer.lr=0.1",
        "optimizer.nesterov=true",
        f"lr_schedule.milestones=[{args.epochs - 1}]" if args.epochs > 1 else "lr_schedule.milestones=[]",
        f"train.amp={amp}",
        "device=cpu",
        f"seed={seed}",
        "progress=false",
        "logger=csv",
        f"paths.root={root}",
    ]


def one_run(args: argparse.Namespace, seed: int, precision: str, root: Path) -> dict:
    """Run ``launch.py`` once; its test accuracy per round and its wall time."""
    out = root / f"{precision}_s{seed}"
    cmd = [sys.executable, "launch.py", *run_args(args, seed, PRECISIONS[precision], out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise SystemExit(f"launch.py failed for {precision}, seed {seed} (exit {proc.returncode}):\n" + "\n".join(tail))
    rounds_files = list(out.glob("*/rounds.json"))
    if len(rounds_files) != 1:
        raise SystemExit(f"expected one run folder with rounds.json under {out}, found {len(rounds_files)}")
    rounds = json.loads(rounds_files[0].read_text())
    return {
        "precision": precision,
        "seed": seed,
        "test_acc": {str(r["round"]): r["test_acc"] for r in rounds},
        "remain_weight": {str(r["round"]): r["remain_weight"] for r in rounds},
        "train_seconds": round(sum(r["seconds"] for r in rounds), 1),
        "wall_seconds": round(wall, 1),
        "run_dir": rounds_files[0].parent.name,
    }


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(runs: list[dict]) -> dict:
    """Mean ± std per precision and round, the bf16 - fp32 difference and whether the spread covers it."""
    out: dict = {"rounds": {}, "wall_seconds": {}}
    for precision in PRECISIONS:
        out["wall_seconds"][precision] = round(sum(r["wall_seconds"] for r in runs if r["precision"] == precision), 1)
    for rnd in ROUNDS:
        row: dict = {}
        for precision in PRECISIONS:
            accs = [r["test_acc"][str(rnd)] for r in runs if r["precision"] == precision]
            mean, std = mean_std(accs)
            row[precision] = {"mean": round(mean, 2), "std": None if std is None else round(std, 2), "n": len(accs)}
        diff = row["bf16"]["mean"] - row["fp32"]["mean"]
        stds = [row[p]["std"] for p in PRECISIONS if row[p]["std"] is not None]
        row["bf16_minus_fp32"] = round(diff, 2)
        row["within_seed_spread"] = None if not stds else abs(diff) <= max(stds)
        out["rounds"][str(rnd)] = row
    return out


def fmt(cell: dict) -> str:
    return f"{cell['mean']:.2f}" if cell["std"] is None else f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def table(runs: list[dict], summary: dict, seeds: list[int]) -> str:
    names = {0: "dense (round 0)", 1: "IMP round 1 (80% of weights)"}
    head = ["round", "precision", *(f"seed {s}" for s in seeds), "mean ± std", "bf16 - fp32", "within spread"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for rnd in ROUNDS:
        row = summary["rounds"][str(rnd)]
        for precision in PRECISIONS:
            by_seed = {r["seed"]: r["test_acc"][str(rnd)] for r in runs if r["precision"] == precision}
            extra = ["", ""]
            if precision == "bf16":
                within = row["within_seed_spread"]
                extra = [f"{row['bf16_minus_fp32']:+.2f}", "n/a" if within is None else ("yes" if within else "no")]
            cells = [names[rnd], precision, *(f"{by_seed[s]:.2f}" for s in seeds), fmt(row[precision]), *extra]
            lines.append("| " + " | ".join(cells) + " |")
    wall = summary["wall_seconds"]
    lines.append("")
    lines.append(f"wall time: fp32 {wall['fp32']:.0f} s, bf16 {wall['bf16']:.0f} s (all seeds, both rounds)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 images, 1 epoch, width 4, 1 seed")
    parser.add_argument("--dataset", default="fashion_mnist", help="a conf/dataset name (fashion_mnist)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1, each in both precisions")
    parser.add_argument("--train-subset", type=int, default=1500, help="training images (dataset.train_subset)")
    parser.add_argument("--eval-subset", type=int, default=1000, help="val and test images (dataset.eval_subset)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round; the lr drops 10x for the last")
    parser.add_argument("--width", type=int, default=4, help="arch.width of ResNet-20 (16: the paper's)")
    parser.add_argument("--out", default=None, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.train_subset, args.eval_subset, args.epochs, args.width = 1, 128, 128, 1, 4
    if args.seeds < 1 or args.epochs < 1:
        parser.error(f"--seeds={args.seeds} and --epochs={args.epochs}: both must be at least 1")
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory(prefix="bf16_parity_") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        runs = []
        for seed in seeds:
            for precision in PRECISIONS:
                run = one_run(args, seed, precision, root)
                runs.append(run)
                print(json.dumps(run), flush=True)
    summary = summarise(runs)
    settings = {
        "dataset": args.dataset,
        "train_subset": args.train_subset,
        "eval_subset": args.eval_subset,
        "epochs": args.epochs,
        "width": args.width,
        "seeds": args.seeds,
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "processor": processor_name(),
        "fast_bf16": fast_bf16_cpu()[0],
    }
    print(table(runs, summary, seeds), flush=True)
    print(json.dumps({"summary": summary, "settings": settings}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
