"""Aggregate runs and sweeps: a table of accuracy per remaining-weight level (mean, std over seeds) and a plot.

    python -m rsst.report PATH [--out DIR] [--metric test_acc] [--x remain_weight|macs]

PATH is a run folder or any folder above run folders (a sweep). Runs that differ
only in ``seed`` form one group; a group is labelled by the config keys that vary
between groups (method first).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rsst.io import atomic_write_text
from rsst.rundir import EXCLUDED_KEYS

log = logging.getLogger(__name__)

# Keys that never distinguish groups: the seed, and what the run folder's hash leaves out.
IGNORED = ("seed", *EXCLUDED_KEYS)


def ignored(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in IGNORED)


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    rounds: list[dict[str, Any]]

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


@dataclass
class Group:
    key: tuple[tuple[str, str], ...]
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    def levels(self, metric: str, x: str = "remain_weight") -> list[dict[str, Any]]:
        """Per round: remaining weight (mean over seeds), n, mean and std of ``metric``.

        With ``x="macs"`` only the rounds every seed recorded MACs for (channel-wise tickets)
        are kept, and each level carries ``macs`` (mean over seeds).
        """
        n_rounds = min(len(r.rounds) for r in self.runs)
        out = []
        for i in range(n_rounds):
            if any(x not in r.rounds[i] for r in self.runs):
                continue
            values = [float(r.rounds[i][metric]) for r in self.runs]
            remain = statistics.fmean(float(r.rounds[i]["remain_weight"]) for r in self.runs)
            out.append(
                {
                    "round": i,
                    "remain_weight": remain,
                    "n": len(values),
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    **({} if x == "remain_weight" else {x: statistics.fmean(float(r.rounds[i][x]) for r in self.runs)}),
                }
            )
        return out


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True)}


def find_runs(path: Path) -> list[Run]:
    """Every finished-or-running run folder at or below ``path`` (a folder with config.yaml and rounds.json)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder")
    candidates = [path] if (path / "rounds.json").exists() else sorted(p.parent for p in path.rglob("rounds.json"))
    runs = []
    for folder in candidates:
        cfg_file = folder / "config.yaml"
        if not cfg_file.exists():
            log.warning("skipping %s: it has rounds.json but no config.yaml", folder)
            continue
        rounds = json.loads((folder / "rounds.json").read_text())
        if rounds:
            runs.append(Run(folder, yaml.safe_load(cfg_file.read_text()), rounds))
    if not runs:
        raise FileNotFoundError(f"{path}: no run folders (config.yaml + rounds.json) at or below it")
    return runs


def short(value: str) -> str:
    """``"rsst.pruning.strategies.RSST"`` -> ``rsst``; other JSON values unquoted."""
    v = json.loads(value)
    if isinstance(v, str) and "." in v and v.replace(".", "").replace("_", "").isalnum():
        return v.rsplit(".", 1)[-1].lower()
    return str(v)


def group_runs(runs: Sequence[Run]) -> list[Group]:
    flat = [{k: v for k, v in flatten(r.config).items() if not ignored(k)} for r in runs]
    groups: dict[tuple, Group] = {}
    for run, f in zip(runs, flat, strict=True):
        key = tuple(sorted(f.items()))
        groups.setdefault(key, Group(key)).runs.append(run)
    all_keys = sorted({k for f in flat for k in f})
    varying = [k for k in all_keys if len({dict(g.key).get(k) for g in groups.values()}) > 1]
    varying.sort(key=lambda k: (not k.startswith("struct._target_"), k))
    for g in groups.values():
        d = dict(g.key)
        method = short(d.get("struct._target_", '"run"'))
        parts = [
            f"{k.removeprefix('struct.').removesuffix('._target_')}={short(d[k])}"
            for k in varying
            if k != "struct._target_" and k in d
        ]
        g.label = " ".join([method, *parts])
    return sorted(groups.values(), key=lambda g: g.label)


def long_table(groups: Sequence[Group], metric: str) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        for lvl in g.levels(metric):
            rows.append({"group": g.label, **lvl, "metric": metric})
    return rows


def markdown_table(groups: Sequence[Group], metric: str) -> str:
    """Rows: groups; columns: remaining weight levels (from the first group with the most rounds)."""
    widest = max(groups, key=lambda g: len(g.levels(metric)))
    levels = [lvl["remain_weight"] for lvl in widest.levels(metric)]
    head = ["method", "seeds", *[f"{w:.1f}%" for w in levels]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [f"{lvl['mean']:.2f} ± {lvl['std']:.2f}" for lvl in g.levels(metric)]
        cells += ["-"] * (len(levels) - len(cells))
        lines.append("| " + " | ".join([g.label, str(len(g.runs)), *cells]) + " |")
    return "\n".join(lines)


def plot(groups: Sequence[Group], metric: str, out: Path, x: str = "remain_weight") -> None:
    """Accuracy against remaining weight or MACs (log x), a line per group with a band of one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    dense = [float(r.rounds[0][metric]) for g in groups for r in g.runs if r.rounds[0]["remain_weight"] >= 99.999]
    for g in groups:
        lv = g.levels(metric, x)
        xs = [v[x] for v in lv]
        y = [v["mean"] for v in lv]
        s = [v["std"] for v in lv]
        (line,) = ax.plot(xs, y, marker="o", ms=3, label=f"{g.label} (n={len(g.runs)})")
        ax.fill_between(
            xs,
            [a - b for a, b in zip(y, s, strict=True)],
            [a + b for a, b in zip(y, s, strict=True)],
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
    if dense:
        ax.axhline(statistics.fmean(dense), color="k", ls="--", lw=1, label="dense baseline")
    ax.set_xscale("log")
    if x == "remain_weight":
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
    ax.invert_xaxis()
    ax.set_xlabel("remaining weights (%)" if x == "remain_weight" else "MACs per image (structured export)")
    ax.set_ylabel(metric.replace("_", " ") + " (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def report(
    path: str | Path, out: str | Path | None = None, metric: str = "test_acc", x: str = "remain_weight"
) -> dict[str, Any]:
    """Write ``report.csv``, ``report.md`` and ``report.png`` for the runs under ``path``; return the table.

    ``x="macs"`` plots against the MACs of the structured export, which ``rounds.json`` holds for
    channel-wise (Refill/RSST) rounds; groups without them are left out.
    """
    path = Path(path)
    out_dir = Path(out) if out else path
    groups = group_runs(find_runs(path))
    if x != "remain_weight":
        groups = [g for g in groups if g.levels(metric, x)]
        if not groups:
            raise KeyError(f"no round under {path} records {x!r} (only channel-wise refill/rsst rounds do)")
    bad = [r.path for g in groups for r in g.runs if any(metric not in row for row in r.rounds)]
    if bad:
        raise KeyError(f"metric {metric!r} is missing from rounds.json of {bad[0]}")
    rows = long_table(groups, metric)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "report.csv", buf.getvalue())
    md = markdown_table(groups, metric)
    atomic_write_text(out_dir / "report.md", md + "\n")
    plot(groups, metric, out_dir / "report.png", x)
    return {"groups": groups, "rows": rows, "markdown": md, "out": out_dir}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsst.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a run folder, or a sweep folder with run folders below it")
    parser.add_argument("--out", help="where to write report.{csv,md,png} (default: PATH)")
    parser.add_argument(
        "--metric",
        default="test_acc",
        help="a rounds.json column: test_acc (at the best-val epoch, default), final_test_acc, ...",
    )
    parser.add_argument(
        "--x",
        default="remain_weight",
        choices=("remain_weight", "macs"),
        help="the plot's x axis: remaining weights (default) or MACs of the structured export",
    )
    args = parser.parse_args(argv)
    try:
        result = report(args.path, args.out, args.metric, args.x)
    except (FileNotFoundError, KeyError) as exc:
        sys.stderr.write(f"rsst.report: {exc}\n")
        return 2
    sys.stdout.write(result["markdown"] + "\n")
    sys.stdout.write(f"wrote report.csv, report.md, report.png to {result['out']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
