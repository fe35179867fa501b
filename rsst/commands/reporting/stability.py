"""Linear-mode stability in ``rsst.report``: the error barrier per round (a table) and the error along the path
between a round's two copies (a figure), mean over seeds, for runs trained with ``prune.stability=true``."""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsst.commands.reporting.groups import Group, pct
from rsst.commands.reporting.runs import TICKET, numeric
from rsst.folder.atomic import atomic_write_bytes

SPLITS = ("test", "val")


def barrier_of(row: dict[str, Any], split: str) -> float | None:
    barrier = row.get("stability_barrier")
    return numeric(barrier.get(split)) if isinstance(barrier, dict) else None


def curve_of(row: dict[str, Any], split: str) -> list[float] | None:
    """The error along the path on ``split`` (one value per point), or None when the row has no usable curve."""
    curve = row.get("stability_curve")
    errors = curve.get(f"{split}_error") if isinstance(curve, dict) else None
    if not isinstance(errors, list) or len(errors) < 2:
        return None
    values = [numeric(e) for e in errors]
    return None if None in values else values  # type: ignore[return-value]


def levels(group: Group, split: str = "test") -> list[dict[str, Any]]:
    """Per round that every run of the group measured: remaining weight, n, mean and std of the barrier, and the
    mean curve (when every run's has the same number of points)."""
    per_run = [run.rows(TICKET) for run in group.runs]
    common = set.intersection(*(set(rows) for rows in per_run)) if per_run else set()
    out = []
    for r in sorted(common):
        rows = [rows[r] for rows in per_run]
        barriers = [barrier_of(row, split) for row in rows]
        if None in barriers:
            continue
        curves = [curve_of(row, split) for row in rows]
        same = all(c is not None for c in curves) and len({len(c) for c in curves}) == 1  # type: ignore[arg-type]
        out.append(
            {
                "round": r,
                "remain_weight": statistics.fmean(float(row["remain_weight"]) for row in rows),
                "n": len(barriers),
                "mean": statistics.fmean(barriers),  # type: ignore[arg-type]
                "std": statistics.stdev(barriers) if len(barriers) > 1 else 0.0,  # type: ignore[arg-type]
                "curve": [statistics.fmean(point) for point in zip(*curves, strict=True)] if same else None,
            }
        )
    return out


def measured(groups: Sequence[Group]) -> list[Group]:
    """The groups with at least one round that recorded a barrier."""
    return [g for g in groups if levels(g)]


def markdown_table(groups: Sequence[Group]) -> str:
    """Rows: each group on test and on validation; columns: rounds; cells: the barrier's mean ± std over seeds."""
    by_group = {(g.label, split): {lv["round"]: lv for lv in levels(g, split)} for g in groups for split in SPLITS}
    rounds = sorted({r for lv in by_group.values() for r in lv})
    head = ["error barrier (points): mean ± std", "split", "seeds", *(f"round {r}" for r in rounds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (label, split), lv in by_group.items():
        cells = [label, split, str(max((v["n"] for v in lv.values()), default=0))]
        for r in rounds:
            cells.append(f"{pct(lv[r]['remain_weight'])}: {lv[r]['mean']:.2f} ± {lv[r]['std']:.2f}" if r in lv else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(groups: Sequence[Group], out: Path, split: str = "test") -> int:
    """A panel per group: the error along the path from a round's network (0: its ticket) to its copy (1), a line
    per round (mean over seeds), darker for sparser rounds. Returns the number of lines drawn."""
    import matplotlib  # noqa: PLC0415  (matplotlib only when plotting)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    drawn = 0
    with plt.rc_context({"font.size": 9, "legend.fontsize": 7}):
        size = (max(4.2 * cols, 6.0), 3.4 * rows)  # wide enough for the title over a single panel
        fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, sharey=True)
        cmap = matplotlib.colormaps["viridis"]
        for ax, g in zip(axes.flat, groups, strict=False):
            lv = [v for v in levels(g, split) if v["curve"] is not None]
            for i, v in enumerate(lv):
                xs = [j / (len(v["curve"]) - 1) for j in range(len(v["curve"]))]
                shade = cmap(0.85 * (1 - i / max(len(lv) - 1, 1)))
                label = f"round {v['round']} ({pct(v['remain_weight'])}): {v['mean']:.2f}"
                ax.plot(xs, v["curve"], color=shade, marker="o", ms=2.5, lw=1.1, label=label)
                drawn += 1
            seeds = max((v["n"] for v in lv), default=0)
            ax.set_title(f"{g.label} (n={seeds})", fontsize=9)
            ax.set_xlabel("interpolation: 0 = the round's network, 1 = its copy")
            ax.grid(True, alpha=0.3)
            ax.legend(  # below the panel, never over the lines
                title="round (weights): barrier, mean over seeds",
                title_fontsize=7,
                frameon=False,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.2),
                ncol=2,
            )
        for ax in axes.flat[len(groups) :]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel(f"{split} error (%)")
        fig.suptitle(f"linear-mode stability: {split} error along the path, mean over seeds", fontsize=10)
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=120, bbox_inches="tight")  # the figure grows to hold the legends
        atomic_write_bytes(out, png.getvalue())  # a temporary file, then a rename: never through a link
        plt.close(fig)
    return drawn
