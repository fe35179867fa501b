"""Benchmark: the lottery-ticket pattern on real Fashion-MNIST with LeNet-300-100, on the CPU.

    python benchmarks/lth_replication.py           # experiment=lth_fashion_mnist_lenet, seeds 1,2,3
    python benchmarks/lth_replication.py --quick   # 2 pruned rounds of 1 epoch on 600 images, 2 seeds

Runs the sweep ``python launch.py -m experiment=lth_fashion_mnist_lenet seed=1,2,3
hydra.sweep.dir=OUT`` (Hydra's sequential launcher; IMP with the paper's per-layer rates to
4.5% of the weights, the ``reinit`` and ``shuffle_layerwise`` controls on every pruned round),
then ``python -m rsst.report OUT`` (report.md, report.csv, report.png), and prints the report's
table, the wall time and whether the lottery-ticket pattern appeared:

* every ticket from 20% down to 5% of the weights (mean over seeds) is within one point of the
  dense network's test accuracy (or above it), and
* at the sparsest levels (the last three rounds) the ticket's mean is above both controls' means.

The numbers are read from the runs' ``rounds.json`` (rows with a ``branch`` are controls, rows
without one the ticket); the verdict also goes to ``OUT/pattern.json``. The launch's log goes to
stderr. Extra arguments are passed to ``launch.py`` as overrides (``dataset.root=...``). A rerun
with the same ``--out`` resumes: finished runs are reported without training. Training runs on
one thread (``OMP_NUM_THREADS=1`` unless set): LeNet's matrices at batch 60 gain nothing from a
second thread, and a second thread slows down badly on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rsst.runtime.precision import processor_name

ROOT = Path(__file__).resolve().parents[1]
PRESET = "lth_fashion_mnist_lenet"
CONTROLS = ("reinit", "shuffle_layerwise")
QUICK = ["prune.rounds=3", "train.epochs=1", "dataset.train_subset=600", "dataset.eval_subset=500"]


def sweep_command(out: Path, seeds: str, quick: bool, extra: list[str]) -> list[str]:
    """``launch.py -m`` over the seeds of the preset (the quick mode shrinks rounds, epochs and data)."""
    return [
        sys.executable,
        "launch.py",
        "-m",
        f"experiment={PRESET}",
        f"seed={seeds}",
        f"hydra.sweep.dir={out}",
        "progress=false",
        *(QUICK if quick else []),
        *extra,
    ]


def read_runs(out: Path) -> list[list[dict]]:
    """Every run's ``rounds.json`` under ``out`` (one folder per seed)."""
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/rounds.json"))]


def mean_std(values: list[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 2),
        "std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
        "n": len(values),
    }


def summarise(
    runs: list[list[dict]], band: tuple[float, float] = (5.0, 20.0), sparsest: int = 3, points: float = 1.0
) -> dict:
    """Per round: the ticket's and each control's test accuracy over seeds, and the lottery-ticket verdict.

    ``within_dense``: the ticket's mean is at least the dense mean minus ``points`` (checked for the rounds
    whose mean remaining weight lies in ``band``, in percent); ``above_controls``: the ticket's mean is above
    every control's mean (checked for the last ``sparsest`` pruned rounds). ``pattern`` is None when a part
    cannot be checked (no round in the band, or no control rows).
    """
    by_round: dict[int, dict[str, list[dict]]] = {}
    for rows in runs:
        for row in rows:
            by_round.setdefault(row["round"], {}).setdefault(row.get("branch", "ticket"), []).append(row)
    if 0 not in by_round or "ticket" not in by_round[0]:
        raise ValueError("no run has finished its dense round 0: nothing to compare with")
    dense = mean_std([row["test_acc"] for row in by_round[0]["ticket"]])
    pruned = sorted(r for r in by_round if r > 0 and "ticket" in by_round[r])
    last = set(pruned[-sparsest:]) if sparsest > 0 else set()
    rounds = []
    for r in sorted(by_round):
        branches = by_round[r]
        if "ticket" not in branches:
            continue
        weight = statistics.fmean(row["remain_weight"] for row in branches["ticket"])
        entry: dict = {"round": r, "remain_weight": round(weight, 3)}
        for name in ("ticket", *CONTROLS):
            if name in branches:
                entry[name] = mean_std([row["test_acc"] for row in branches[name]])
        ticket = entry["ticket"]["mean"]
        entry["ticket_minus_dense"] = round(ticket - dense["mean"], 2)
        if r > 0 and band[0] <= weight <= band[1]:
            entry["within_dense"] = ticket >= dense["mean"] - points
        if r in last and any(c in entry for c in CONTROLS):
            entry["above_controls"] = all(ticket > entry[c]["mean"] for c in CONTROLS if c in entry)
        rounds.append(entry)
    within = [e["within_dense"] for e in rounds if "within_dense" in e]
    above = [e["above_controls"] for e in rounds if "above_controls" in e]
    pattern = None if not within or not above else all(within) and all(above)
    return {
        "dense": dense,
        "rounds": rounds,
        "band": list(band),
        "sparsest": sorted(last),
        "points": points,
        "within_dense": None if not within else all(within),
        "above_controls": None if not above else all(above),
        "pattern": pattern,
    }


def cell(stat: dict | None) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.2f}" if stat["std"] is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")


def pattern_table(summary: dict) -> str:
    head = ["round", "weights", "ticket", *CONTROLS, "ticket - dense", "within 1 pt", "above controls"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for e in summary["rounds"]:
        cells = [
            str(e["round"]),
            f"{e['remain_weight']:.2f}%",
            cell(e["ticket"]),
            *(cell(e.get(c)) for c in CONTROLS),
            f"{e['ticket_minus_dense']:+.2f}",
            yes_no(e.get("within_dense")),
            yes_no(e.get("above_controls")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(summary: dict) -> str:
    low, high = summary["band"]
    if summary["pattern"] is None:
        missing = "no round between" if summary["within_dense"] is None else "no control rows at"
        where = f"{low:g}% and {high:g}% of the weights" if summary["within_dense"] is None else "the sparsest levels"
        return f"The lottery-ticket pattern cannot be judged here: {missing} {where}."
    parts = [
        f"tickets from {high:g}% to {low:g}% of the weights are "
        + ("" if summary["within_dense"] else "not all ")
        + f"within {summary['points']:g} point of dense ({summary['dense']['mean']:.2f}%)",
        "above both controls at the sparsest levels"
        if summary["above_controls"]
        else "not above both controls at every one of the sparsest levels",
    ]
    head = "The lottery-ticket pattern appeared" if summary["pattern"] else "The lottery-ticket pattern did not appear"
    return f"{head}: {parts[0]}, and {parts[1]}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 pruned rounds, 1 epoch, 600 images")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 1,2,3; --quick: 1,2)")
    parser.add_argument(
        "--out", default=None, help="the sweep folder (default multirun_outputs/lth_replication[_quick])"
    )
    parser.add_argument("overrides", nargs="*", help="extra launch.py overrides, e.g. dataset.root=DIR")
    args = parser.parse_args(argv)
    seeds = args.seeds or ("1,2" if args.quick else "1,2,3")
    if not all(s.strip().isdigit() for s in seeds.split(",")):
        parser.error(f"--seeds={seeds!r}: expected comma-separated integers >= 0, e.g. 1,2,3")
    out = Path(args.out or f"multirun_outputs/lth_replication{'_quick' if args.quick else ''}").resolve()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    env.setdefault("OMP_NUM_THREADS", "1")

    start = time.perf_counter()
    proc = subprocess.run(sweep_command(out, seeds, args.quick, args.overrides), cwd=ROOT, env=env, stdout=sys.stderr)
    sweep_seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the sweep failed (launch.py exit {proc.returncode}); its log is above")
    from rsst.commands.report import main as report_main  # in this process: no second start-up

    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = report_main([str(out)])
    if code != 0:
        raise SystemExit(f"rsst.report failed (exit {code}): {errors.getvalue().strip()}")
    wall = time.perf_counter() - start

    summary = summarise(read_runs(out))
    settings = {
        "preset": PRESET,
        "quick": args.quick,
        "seeds": [int(s) for s in seeds.split(",")],
        "overrides": [*(QUICK if args.quick else []), *args.overrides],
        "processor": processor_name(),
        "cpus": os.cpu_count(),
        "threads": env["OMP_NUM_THREADS"],
        "sweep_seconds": round(sweep_seconds, 1),
        "wall_seconds": round(wall, 1),
    }
    (out / "pattern.json").write_text(json.dumps({"summary": summary, "settings": settings}, indent=2) + "\n")
    print(printed.getvalue().strip())
    print()
    print(pattern_table(summary))
    print()
    print(f"wall time: {wall:.0f} s ({wall / 60:.1f} min; the sweep {sweep_seconds:.0f} s) on {settings['processor']}")
    print(verdict(summary))
    print(json.dumps({"summary": summary, "settings": settings}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
