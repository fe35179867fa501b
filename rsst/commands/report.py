"""Aggregate runs and sweeps: a table of accuracy per pruning round (mean, std over seeds) and a plot.

    python -m rsst.report PATH [--out DIR] [--metric test_acc] [--x remain_weight|channel_density|macs]
    python -m rsst.report --provenance RUN_DIR

PATH is a run folder or any folder above run folders (a sweep). Each run's config is the
hash-checked one (:func:`rsst.folder.naming.read_verified_config`); nothing from a run folder is
instantiated. A run whose config is refused or whose ``rounds.json`` cannot be read is skipped
with a warning naming the file. Runs that differ only in ``seed`` form one group; an unfinished
run (fewer rounds than ``prune.rounds``) forms its own group, labelled e.g. ``imp (2/3 rounds)``,
and is never merged with finished runs. A group is labelled by its method and the config keys
that vary among the runs of that method. Lottery-ticket controls (rows with a ``branch``) are
drawn as their own lines beside their ticket.
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import io
import json
import logging
import math
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsst.errors import RsstError
from rsst.folder.atomic import RunIOError, atomic_write_bytes, atomic_write_text
from rsst.folder.layout import CHECKPOINT, CONFIG, ROUNDS, ReportFiles, RunFiles, printable
from rsst.folder.naming import EXCLUDED_KEYS, RunFolderError, read_verified_config
from rsst.folder.safeload import load_tensors

log = logging.getLogger(__name__)

# Keys that never distinguish groups: the seed, and what the run folder's hash leaves out.
IGNORED = ("seed", *EXCLUDED_KEYS)

TICKET = "ticket"
# Known lottery-ticket controls, in the order they are drawn; their line style in the plot.
CONTROL_STYLES = {"reinit": ("--", "s"), "shuffle_layerwise": (":", "^")}
OTHER_CONTROL_STYLE = ("-.", "v")

# What each rounds.json column measures, for the table header and the plot's title.
MEASURED = {
    "test_acc": "ticket, best-val epoch",
    "final_test_acc": "ticket, last epoch",
    "trained_test_acc": "network as trained, best-val epoch",
}

# The plot's x axes: remaining weights, remaining output channels (channel-wise tickets), MACs of the export.
X_LABELS = {
    "remain_weight": "remaining weights (%)",
    "channel_density": "remaining channels (%)",
    "macs": "MACs per image (structured export)",
}
PERCENT_AXES = ("remain_weight", "channel_density")

# The plot's axes box in inches; the figure grows around it to fit labels and legend.
AXES_SIZE = (6.4, 4.2)
DPI = 120
MIN_AXES_AREA = 0.55  # the layout grows the axes until they hold at least this fraction of the figure


class ReportError(RsstError):
    """Nothing to report (every run skipped, or the metric found nowhere); the message says why."""


class Skip(Exception):
    """A run folder that cannot be reported; the message names the file and why."""


def ignored(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in IGNORED)


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    diverged: str | None = None  # where training diverged (``round 2, epoch 3``), from ``diverged.json``

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def planned(self) -> int | None:
        """``prune.rounds`` of the run's config: the rounds a finished run has."""
        prune = self.config.get("prune")
        rounds = prune.get("rounds") if isinstance(prune, dict) else None
        return rounds if isinstance(rounds, int) and not isinstance(rounds, bool) else None

    def rows(self, branch: str = TICKET) -> dict[int, dict[str, Any]]:
        """The rows of one branch (the ticket, or a control such as ``reinit``), by round."""
        return {row["round"]: row for row in self.rounds if row.get("branch", TICKET) == branch}

    @property
    def controls(self) -> list[str]:
        """The controls the config asks for (``prune.controls``), and any other branch its rows hold."""
        prune = self.config.get("prune")
        listed = prune.get("controls") if isinstance(prune, dict) else None
        listed = [c for c in listed if isinstance(c, str)] if isinstance(listed, list) else []
        found = {row.get("branch", TICKET) for row in self.rounds} - {TICKET}
        return ordered_branches([*listed, *found])[1:]

    @property
    def done(self) -> int:
        """Rounds finished in order: the ticket's row and, from round 1 on, every control's row."""
        branches = {b: self.rows(b) for b in [TICKET, *self.controls]}
        r = 0
        while r in branches[TICKET] and all(r == 0 or r in rows for rows in branches.values()):
            r += 1
        return r

    @property
    def finished(self) -> bool:
        return self.planned is None or self.done >= self.planned


def ordered_branches(names: Iterable[str]) -> list[str]:
    """The ticket first, then the known controls in their order, then any other branch by name."""
    names = set(names) | {TICKET}
    known = [TICKET, *CONTROL_STYLES]
    return [b for b in known if b in names] + sorted(names - set(known))


@dataclass
class Group:
    key: tuple[tuple[str, str], ...]
    runs: list[Run] = field(default_factory=list)
    label: str = ""
    done: int | None = None  # rounds done, for a group of unfinished runs (None: finished)
    planned: int | None = None
    diverged: str | None = None  # where the group's runs diverged

    @property
    def branches(self) -> list[str]:
        return ordered_branches(row.get("branch", TICKET) for r in self.runs for row in r.rounds)

    def levels(self, metric: str, x: str = "remain_weight", branch: str = TICKET) -> list[dict[str, Any]]:
        """Per round every seed recorded: remaining weight (mean over seeds), n, mean and std of ``metric``.

        A control row without ``remain_weight`` (or ``x``) takes its round's ticket value. With
        ``x="macs"`` only the rounds that record MACs (channel-wise tickets) are kept, and each level
        carries ``macs`` (mean over seeds).
        """
        per_run = [(r.rows(branch), r.rows(TICKET)) for r in self.runs]
        common = set.intersection(*(set(rows) for rows, _ in per_run))
        out = []
        for i in sorted(common):
            picked = [(rows[i], ticket.get(i, {})) for rows, ticket in per_run]
            if any(numeric(row.get(metric)) is None for row, _ in picked):
                continue
            xs = [numeric(row.get(x, ticket.get(x))) for row, ticket in picked]
            remain = [numeric(row.get("remain_weight", ticket.get("remain_weight"))) for row, ticket in picked]
            if None in xs or None in remain:
                continue
            values = [float(row[metric]) for row, _ in picked]
            out.append(
                {
                    "round": i,
                    "remain_weight": statistics.fmean(remain),
                    "n": len(values),
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    **({} if x == "remain_weight" else {x: statistics.fmean(xs)}),
                }
            )
        return out


def numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True)}


def checkpoint_rounds(run_dir: Path) -> list[dict[str, Any]] | None:
    """The round rows the run's checkpoint holds (the truth ``rounds.json`` is written from), as JSON has them.

    None when the checkpoint cannot be read or records none; the checkpoint is memory-mapped and read
    through :func:`rsst.folder.safeload.load_tensors`, so this costs a look, not a load.
    """
    try:
        state = load_tensors(RunFiles(run_dir).checkpoint, mmap=True)
        rows = state.get("round_rows") if isinstance(state, dict) else None
        return json.loads(json.dumps(rows)) if isinstance(rows, list) else None
    except (OSError, RsstError, TypeError, ValueError, RecursionError):
        return None


def read_rounds(path: Path, truth: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``rounds.json`` as a list of rows, each with an integer ``round``; :class:`Skip` says what is wrong.

    With ``truth`` (the checkpoint's rows), a file that differs from it is named in a warning and the
    checkpoint's rows are reported instead.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise Skip(f"{path} is unreadable ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise Skip(f"{path} is not text (binary content)") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Skip(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}; truncated?)"
        ) from None
    except RecursionError:
        raise Skip(f"{path} is nested too deeply to be a list of rounds") from None
    if truth is not None and rows != truth:
        log.warning("%s differs from the run's checkpoint: reported from the checkpoint (a rerun rewrites it)", path)
        rows = truth
    if not isinstance(rows, list):
        raise Skip(f"{path} is not a list of rounds (found a JSON {type(rows).__name__})")
    seen = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise Skip(f"{path}: row {i} is not an object (found {type(row).__name__})")
        r, branch = row.get("round"), row.get("branch", TICKET)
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise Skip(f"{path}: row {i} has round={r!r}, expected an integer >= 0")
        if not isinstance(branch, str):
            raise Skip(f"{path}: row {i} has branch={branch!r}, expected a name such as 'ticket' or 'reinit'")
        if branch == TICKET and numeric(row.get("remain_weight")) is None:
            raise Skip(f"{path}: round {r} has remain_weight={row.get('remain_weight')!r}, expected a number")
        if (branch, r) in seen:
            raise Skip(f"{path}: round {r} of branch {branch!r} appears twice")
        seen.add((branch, r))
        sparsity = numeric(row.get("channel_sparsity"))
        if sparsity is not None:  # the x axis of --x channel_density
            row["channel_density"] = 100.0 - sparsity
    return rows


def read_diverged(path: Path) -> str | None:
    """Where the run diverged (``round 2, epoch 3``) from its ``diverged.json``; None if it has none.

    The file is small and plain; one that is not what the run writes is named in a warning and read as
    ``diverged at an unknown point``, since only a diverged run writes it.
    """
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 16).decode("utf-8"))
        r, e, branch = data["round"], data["epoch"], data.get("branch")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (r, e)):
            raise TypeError("round and epoch are not integers")
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
        log.warning("%s is not what a diverged run writes (%s)", printable(path), type(exc).__name__)
        return "an unknown point"
    return f"round {r}{f' {printable(branch)} control' if isinstance(branch, str) else ''}, epoch {e}"


def find_runs(path: Path) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The run folders at or below ``path`` that can be reported, and the skipped ones with why.

    A run folder is one holding ``rounds.json`` or ``checkpoint.pt``. Its config is read through
    :func:`rsst.folder.naming.read_verified_config`, so an edited ``config.yaml`` is refused.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    marks = (ROUNDS, CHECKPOINT)
    if any((path / m).exists() for m in marks):
        candidates = [path]
    else:
        candidates = sorted({p.parent for m in marks for p in path.rglob(m)})
    if not candidates:
        raise FileNotFoundError(f"{path}: no run folders ({CONFIG} + {CHECKPOINT} + {ROUNDS}) at or below it")
    runs, skipped = [], []
    for folder in candidates:
        try:
            config = read_verified_config(folder)
            rounds_file = RunFiles(folder).rounds
            if not rounds_file.exists():
                raise Skip(f"{rounds_file} is missing: no round has finished yet")
            rounds = read_rounds(rounds_file, checkpoint_rounds(folder))
            run = Run(folder, config, rounds, read_diverged(RunFiles(folder).diverged))
            if not run.rows(TICKET) and run.diverged is not None:
                raise Skip(f"{folder} diverged at {run.diverged}, before any round finished")
            if not run.rows(TICKET):
                raise Skip(f"{rounds_file} holds no ticket round yet (0/{run.planned} rounds)")
        except (RunFolderError, Skip) as exc:
            log.warning("skipping %s", exc)
            skipped.append((folder, str(exc)))
            continue
        runs.append(run)
    return runs, skipped


def short(value: str) -> str:
    """``"rsst.pruning.strategies.RSST"`` -> ``rsst``; other JSON values unquoted, lists without spaces."""
    v = json.loads(value)
    if isinstance(v, str) and "." in v and v.replace(".", "").replace("_", "").isalnum():
        return v.rsplit(".", 1)[-1].lower()
    if isinstance(v, list | dict):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def varying_keys(flats: Sequence[dict[str, str]]) -> list[str]:
    """The keys whose values differ among ``flats`` (the groups of one method).

    A key below a node with a ``_target_`` is compared only among the groups whose targets agree,
    so ``criteria.batches`` (held by ``l1``, not by ``magnitude``) does not vary just because the
    criterion does.
    """
    keys = sorted({k for f in flats for k in f})
    targets = {k.removesuffix("._target_") for k in keys if k.endswith("._target_")}
    out = []
    for k in keys:
        parts = k.split(".")
        ancestors = [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in targets]
        ancestors = [p for p in ancestors if f"{p}._target_" != k]
        by_target: dict[tuple, set] = {}
        for f in flats:
            by_target.setdefault(tuple(f.get(f"{p}._target_") for p in ancestors), set()).add(f.get(k))
        if any(len(values) > 1 for values in by_target.values()):
            out.append(k)
    return out


def target_name(key: str, flat: dict[str, str]) -> str:
    """A ``_target_``'s lower-case class name less the node's name (schedule: ExpCustomSchedule -> expcustom)."""
    name, node = short(flat[key]), key.removesuffix("._target_").rsplit(".", 1)[-1]
    return name.removesuffix(node) or name


def label_parts(keys: Sequence[str], flat: dict[str, str]) -> list[str]:
    """``_target_`` keys as their short class name, other keys as ``name=value`` (the last name when unique);
    a key the group does not have (its node has another ``_target_``) is left out."""
    targets = [target_name(k, flat) for k in keys if k.endswith("._target_") and k in flat]
    plain = [k for k in keys if not k.endswith("._target_")]
    last = [k.rsplit(".", 1)[-1] for k in plain]
    names = [n if last.count(n) == 1 else k.removeprefix("struct.") for k, n in zip(plain, last, strict=True)]
    return targets + [f"{n}={short(flat[k])}" for k, n in zip(plain, names, strict=True) if k in flat]


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs that differ only in ignored keys form a group; an unfinished run is grouped only with runs
    of the same config at the same progress, and its label says e.g. ``(2/3 rounds)``."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        flat = {k: v for k, v in flatten(run.config).items() if not ignored(k)}
        key = tuple(sorted(flat.items()))
        done = None if run.finished and run.diverged is None else run.done
        group = Group(key, done=done, planned=run.planned, diverged=run.diverged)
        groups.setdefault((key, done, run.diverged), group).runs.append(run)
    by_method: dict[str, list[Group]] = {}
    for g in groups.values():
        by_method.setdefault(dict(g.key).get("struct._target_", '"run"'), []).append(g)
    for method, members in by_method.items():
        flats = list({g.key: dict(g.key) for g in members}.values())
        keys = [k for k in varying_keys(flats) if k != "struct._target_"]
        for g in members:
            suffix = [] if g.done is None else [f"({g.done}/{g.planned} rounds)"]
            if g.diverged is not None:
                suffix = [f"(diverged at {g.diverged})"]
            g.label = " ".join([short(method), *label_parts(keys, dict(g.key)), *suffix])
    return sorted(groups.values(), key=lambda g: g.label)


def line_label(group: Group, branch: str) -> str:
    return group.label if branch == TICKET else f"{group.label} — {branch}"


def long_table(groups: Sequence[Group], metric: str) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        for branch in g.branches:
            for lvl in g.levels(metric, branch=branch):
                rows.append({"group": g.label, "branch": branch, **lvl, "metric": metric})
    return rows


def describe_metric(metric: str) -> str:
    return f"{metric} ({MEASURED[metric]})" if metric in MEASURED else metric


def pct(w: float) -> str:
    """A remaining weight for the table: one decimal from 10% up, then three significant digits."""
    return f"{w:.1f}%" if w >= 10 else f"{w:.3g}%"


def markdown_table(groups: Sequence[Group], metric: str) -> str:
    """Rows: each group's ticket and controls; columns: rounds.

    A column's header carries its remaining weight when every row reached the same level (to the
    printed precision); otherwise each cell carries its own row's remaining weight, so a refill
    ticket at 79.1% is never shown under a nominal 80%.
    """
    lines_of = [(g, b, {lvl["round"]: lvl for lvl in g.levels(metric, branch=b)}) for g in groups for b in g.branches]
    rounds = sorted({r for _, _, lv in lines_of for r in lv})
    head = [f"{describe_metric(metric)}: mean ± std", "seeds"]
    uniform = {}
    for r in rounds:
        reached = {pct(lv[r]["remain_weight"]) for _, _, lv in lines_of if r in lv}
        uniform[r] = len(reached) == 1
        head.append(f"round {r}: {reached.pop()}" if uniform[r] else f"round {r}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, branch, lv in lines_of:
        cells = [line_label(g, branch), str(max((lvl["n"] for lvl in lv.values()), default=0))]
        for r in rounds:
            if r not in lv:
                cells.append("-")
                continue
            value = f"{lv[r]['mean']:.2f} ± {lv[r]['std']:.2f}"
            cells.append(value if uniform[r] else f"{pct(lv[r]['remain_weight'])}: {value}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class PlotLayout:
    """Where things ended up in the saved figure: boxes in figure fractions (x0, y0, x1, y1), tick labels in pixels."""

    size_inches: tuple[float, float]
    dpi: int
    title: str
    axes: tuple[float, float, float, float]
    legend: tuple[float, float, float, float]
    xtick_labels: list[tuple[str, tuple[float, float, float, float]]]
    lines: list[dict[str, Any]]

    @property
    def axes_area(self) -> float:
        """The axes' share of the figure's area."""
        x0, y0, x1, y1 = self.axes
        return (x1 - x0) * (y1 - y0)


def family(color: Any, branch: str) -> tuple[float, float, float]:
    """The ticket's colour for the ticket; a lighter shade of it for each control."""
    from matplotlib.colors import to_rgb  # noqa: PLC0415  (matplotlib only when plotting)

    if branch == TICKET:
        return to_rgb(color)
    h, lightness, s = colorsys.rgb_to_hls(*to_rgb(color))
    return colorsys.hls_to_rgb(h, min(0.8, lightness + 0.15), s)


def tick_text(v: float, x: str) -> str:
    if x in PERCENT_AXES:
        return f"{v:.3g}"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def boxes_overlap(a: Sequence[float], b: Sequence[float], pad: float = 0.0) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] and b[1] < a[3]


def set_level_ticks(ax: Any, levels: Sequence[float], x: str) -> None:
    """Ticks at the levels actually plotted; from the dense end, a label is kept only if it clears the last kept one."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator  # noqa: PLC0415

    by_text: dict[str, float] = {}
    for v in sorted(levels, reverse=True):
        by_text.setdefault(tick_text(v, x), v)
    ax.xaxis.set_major_locator(FixedLocator(list(by_text.values())))
    ax.xaxis.set_major_formatter(FixedFormatter(list(by_text)))
    ax.xaxis.set_minor_locator(NullLocator())
    fig = ax.figure
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    boxes = sorted(
        [
            (t.get_window_extent(renderer).extents, by_text[t.get_text()])
            for t in ax.xaxis.get_majorticklabels()
            if t.get_text() in by_text
        ],
        key=lambda b: b[0][0] + b[0][2],  # by centre: the order of the levels on screen
    )
    kept: list[float] = []
    last = None
    for box, v in boxes:
        if last is None or not boxes_overlap(box, last, pad=6.0):
            kept.append(v)
            last = box
    ax.xaxis.set_major_locator(FixedLocator(kept))
    ax.xaxis.set_major_formatter(FixedFormatter([tick_text(v, x) for v in kept]))


def plot(
    groups: Sequence[Group],
    metric: str,
    out: Path,
    x: str = "remain_weight",
    references: Sequence[Group] = (),
) -> PlotLayout:
    """Accuracy against remaining weight or MACs (log x): a line per group and control, a band of one std.

    ``references`` are groups with no point on this axis (IMP keeps every channel and the dense
    MACs): each is a dotted level at its sparsest ticket, labelled with that round's weights.
    The axes have a fixed size (:data:`AXES_SIZE`); the legend sits to their right and the figure
    grows to hold it, so the legend never shrinks the axes. Returns the saved figure's layout.
    """
    import matplotlib  # noqa: PLC0415  (matplotlib only when plotting)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    with plt.rc_context({"font.size": 9, "legend.fontsize": 8}):
        fig = plt.figure(figsize=(10, 6), dpi=DPI)
        ax = fig.add_axes((0.1, 0.1, 0.6, 0.7))
        colors = palette(len(groups))
        levels_x: list[float] = []
        lines = []
        seeds = {len(g.runs) for g in groups}
        for g, color in zip(groups, colors, strict=True):
            for branch in g.branches:
                lv = g.levels(metric, x, branch)
                if not lv:
                    continue
                xs = [v[x] for v in lv]
                y = [v["mean"] for v in lv]
                s = [v["std"] for v in lv]
                levels_x += xs
                style, marker = ("-", "o") if branch == TICKET else CONTROL_STYLES.get(branch, OTHER_CONTROL_STYLE)
                c = family(color, branch)
                label = line_label(g, branch) + ("" if len(seeds) == 1 else f" (n={len(g.runs)})")
                ax.plot(xs, y, ls=style, marker=marker, ms=3.5 if branch == TICKET else 3, color=c, label=label)
                lo = [a - b for a, b in zip(y, s, strict=True)]
                hi = [a + b for a, b in zip(y, s, strict=True)]
                ax.fill_between(xs, lo, hi, color=c, alpha=0.18 if branch == TICKET else 0.1, linewidth=0)
                lines.append({"label": label, "branch": branch, "linestyle": style, "color": c, "x": xs, "y": y})
        for g, color in zip(references, palette(len(groups) + len(references))[len(groups) :], strict=True):
            last = g.levels(metric)[-1]
            label = f"{g.label} at {last['remain_weight']:.1f}% weights, all channels (reference)"
            ax.axhline(last["mean"], color=color, ls=":", lw=1.2, label=label)
            lines.append(
                {"label": label, "branch": "reference", "linestyle": ":", "color": color, "x": [], "y": [last["mean"]]}
            )
        dense = [
            float(r.rows()[0][metric])
            for g in [*groups, *references]
            for r in g.runs
            if 0 in r.rows() and r.rows()[0]["remain_weight"] >= 99.999 and numeric(r.rows()[0].get(metric)) is not None
        ]
        if dense:
            ax.axhline(statistics.fmean(dense), color="0.3", ls=(0, (6, 3)), lw=0.9, label="dense (round 0)")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel(metric.replace("_", " ") + " (%)")
        count = next(iter(seeds))
        n = f"{count} seed{'s' if count > 1 else ''}" if len(seeds) == 1 else "seeds (n per line)"
        ax.set_title(f"{describe_metric(metric)}, mean ± std over {n}", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        legend = layout(fig, ax, levels_x, x)
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=DPI)
        atomic_write_bytes(out, png.getvalue())  # a temporary file, then a rename: never through a link
        renderer = fig.canvas.get_renderer()
        to_fig = fig.transFigure.inverted()

        def fractions(artist: Any) -> tuple[float, float, float, float]:
            return tuple(float(v) for v in artist.get_window_extent(renderer).transformed(to_fig).extents)

        result = PlotLayout(
            size_inches=tuple(float(v) for v in fig.get_size_inches()),
            dpi=DPI,
            title=ax.get_title(),
            axes=tuple(float(v) for v in ax.get_position().extents),
            legend=fractions(legend),
            xtick_labels=[
                (t.get_text(), tuple(float(v) for v in t.get_window_extent(renderer).extents))
                for t in ax.xaxis.get_majorticklabels()
                if t.get_visible() and t.get_text()
            ],
            lines=lines,
        )
        plt.close(fig)
    return result


def palette(n: int) -> list[Any]:
    import matplotlib  # noqa: PLC0415

    if n <= 20:
        cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
        return [cmap(i) for i in range(n)]
    return [matplotlib.colormaps["turbo"](i / (n - 1)) for i in range(n)]


def layout(fig: Any, ax: Any, levels: Sequence[float], x: str) -> Any:
    """Size the figure around axes of :data:`AXES_SIZE` inches, ticks that do not collide and a legend to the right.

    The axes never shrink for the legend: the figure grows, and if the legend is so large that the
    axes would hold less than :data:`MIN_AXES_AREA` of the figure, the axes grow too.
    """
    aw, ah = AXES_SIZE
    gap, pad = 0.15, 0.12  # inches: axes to legend, around the figure
    handles, labels = ax.get_legend_handles_labels()
    legend = None
    for _ in range(20):
        fig.set_size_inches(aw + 4, ah + 2)
        w, h = fig.get_size_inches()
        ax.set_position((1.0 / w, 1.0 / h, aw / w, ah / h))
        set_level_ticks(ax, levels, x)
        renderer = fig.canvas.get_renderer()
        if legend is not None:
            legend.remove()
        row = 0.21  # inches per legend entry at font size 8
        ncol = max(1, math.ceil(len(labels) / max(1, int(ah / row) - 1)))
        legend = fig.legend(handles, labels, loc="upper left", ncol=ncol, frameon=False, borderaxespad=0)
        fig.draw_without_rendering()
        axes_box = ax.get_window_extent(renderer)
        tight = ax.get_tightbbox(renderer)
        lw, lh = legend.get_window_extent(renderer).width / DPI, legend.get_window_extent(renderer).height / DPI
        left = (axes_box.x0 - tight.x0) / DPI
        right = max(0.0, (tight.x1 - axes_box.x1) / DPI)
        bottom = (axes_box.y0 - tight.y0) / DPI
        top = max(0.0, (tight.y1 - axes_box.y1) / DPI)
        width = pad + left + aw + right + gap + lw + pad
        height = pad + bottom + max(ah + top, lh) + pad
        if aw * ah >= MIN_AXES_AREA * width * height:
            break
        aw, ah = aw * 1.1, ah * 1.1
    width, height = math.ceil(width * DPI) / DPI, math.ceil(height * DPI) / DPI  # whole pixels
    fig.set_size_inches(width, height)
    x0, y0 = pad + left, height - pad - top - ah
    ax.set_position((x0 / width, y0 / height, aw / width, ah / height))
    legend.set_bbox_to_anchor(((x0 + aw + right + gap) / width, (y0 + ah) / height), transform=fig.transFigure)
    return legend


def usable(run: Run, metric: str) -> Run:
    """The run with control rows that lack ``metric`` dropped (with a warning); :class:`Skip` if its ticket lacks it."""
    missing = [row["round"] for row in run.rows(TICKET).values() if numeric(row.get(metric)) is None]
    if missing:
        found = sorted({k for row in run.rounds for k, v in row.items() if numeric(v) is not None})
        raise Skip(
            f"{RunFiles(run.path).rounds}: round {missing[0]} has no numeric {metric!r} (columns: {', '.join(found)})"
        )
    bad = [row for row in run.rounds if row.get("branch", TICKET) != TICKET and numeric(row.get(metric)) is None]
    if bad:
        branches = sorted({row["branch"] for row in bad})
        log.warning(
            "%s: %d control rows (%s) have no numeric %r; they are left out",
            RunFiles(run.path).rounds,
            len(bad),
            ", ".join(branches),
            metric,
        )
        run = Run(run.path, run.config, [row for row in run.rounds if not any(row is b for b in bad)])
    return run


def report(
    path: str | Path, out: str | Path | None = None, metric: str = "test_acc", x: str = "remain_weight"
) -> dict[str, Any]:
    """Write ``report.csv``, ``report.md`` and ``report.png`` for the runs under ``path``; return the table.

    Each file is written atomically (a temporary file, then a rename), so a link standing at one of
    the names is replaced and the file it points to is never written.

    ``x="macs"`` plots against the MACs of the structured export, which ``rounds.json`` holds for
    channel-wise (Refill/RSST) rounds; groups without them are left out. The result holds the
    groups, the CSV rows, the markdown, the plot's :class:`PlotLayout` and the skipped run folders.
    """
    path = Path(path)
    out_dir = Path(out) if out else path
    found, skipped = find_runs(path)
    runs = []
    for run in found:
        try:
            runs.append(usable(run, metric))
        except Skip as exc:
            log.warning("skipping %s", exc)
            skipped.append((run.path, str(exc)))
    if not runs:
        why = skipped[0][1] if len(skipped) == 1 else f"all {len(skipped)} run folders were skipped (see the warnings)"
        raise ReportError(f"{path}: nothing to report: {why}")
    diverged = [r for r in runs if r.diverged is not None]
    if diverged:
        log.warning(
            "%d run(s) diverged and are reported in their own groups, up to the last finite round: %s",
            len(diverged),
            ", ".join(f"{printable(r.path.name)} (at {r.diverged})" for r in diverged),
        )
    unfinished = [r for r in runs if not r.finished and r.diverged is None]
    if unfinished:
        log.warning(
            "%d unfinished run(s) are reported in their own groups, labelled (rounds done/planned): %s",
            len(unfinished),
            ", ".join(r.path.name for r in unfinished),
        )
    groups = group_runs(runs)
    references: list[Group] = []
    if x != "remain_weight":  # unstructured lines (IMP) keep every channel: drawn as a reference level instead
        on_axis = (
            [g for g in groups if any(lv[x] < 99.999 for lv in g.levels(metric, x))]
            if x == "channel_density"
            else groups
        )
        on_axis = [g for g in on_axis if g.levels(metric, x)]
        if not on_axis:
            raise KeyError(f"no round under {path} records {x!r} (only channel-wise refill/rsst rounds do)")
        references = [g for g in groups if all(g is not a for a in on_axis) and g.levels(metric)]
        groups = on_axis
    rows = long_table(groups, metric)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files = ReportFiles(out_dir)
    atomic_write_text(files.csv, buf.getvalue())
    md = markdown_table(groups, metric)
    atomic_write_text(files.markdown, md + "\n")
    drawn = plot(groups, metric, files.png, x, references)
    return {"groups": groups, "rows": rows, "markdown": md, "out": out_dir, "layout": drawn, "skipped": skipped}


def format_provenance(data: dict[str, Any]) -> str:
    """``provenance.json`` as aligned ``key  value`` lines; a start per line at the end."""

    def value(key: str, v: Any) -> str:
        if v is None:
            return "-"
        if key == "git" and isinstance(v, dict):
            return f"{v.get('commit')}{' (dirty tree)' if v.get('dirty') else ''}"
        if key == "device" and isinstance(v, dict):
            unit = "GPU" if v.get("type") == "cuda" else "CPU"
            return f"{v.get('type')}: {v.get('name')} ({v.get('count')} {unit}{'s' if v.get('count') != 1 else ''})"
        if isinstance(v, list) and all(isinstance(a, str) for a in v):
            return shlex.join(v)
        if isinstance(v, dict):
            return ", ".join(f"{k} {value(k, a)}" for k, a in v.items())
        return str(v)

    plain = {k: v for k, v in data.items() if k not in ("created", "starts")}
    width = max((len(k) for k in plain), default=0)
    lines = [f"{k.ljust(width)}  {value(k, v)}" for k, v in plain.items()]
    created = data.get("created")
    if isinstance(created, dict):
        lines.append(f"{'created'.ljust(width)}  {created.get('time')} on {created.get('host')}")
    starts = data.get("starts")
    if isinstance(starts, list):
        lines.append(f"starts ({len(starts)}):")
        for i, s in enumerate(starts, 1):
            if isinstance(s, dict):
                lines.append(f"  {i}. " + "; ".join(f"{k} {value(k, v)}" for k, v in s.items()))
    return "\n".join(lines)


def read_provenance(run_dir: str | Path) -> dict[str, Any]:
    path = RunFiles(run_dir).provenance
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path} is missing (runs record it from their first start on)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} is not a provenance record (found a JSON {type(data).__name__})")
    return data


class _Stderr(logging.Handler):
    """Warnings as ``rsst.report: warning: ...`` lines on the current ``sys.stderr`` (file names in them escaped)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"rsst.report: warning: {printable(record.getMessage())}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsst.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="a run folder, or a sweep folder with run folders below it")
    parser.add_argument("--out", help="where to write report.{csv,md,png} (default: PATH)")
    parser.add_argument(
        "--metric",
        default="test_acc",
        help="a rounds.json column: test_acc (the ticket at the best-val epoch, default), final_test_acc "
        "(the ticket at the last epoch), trained_test_acc (the network as trained), ...",
    )
    parser.add_argument(
        "--x",
        default="remain_weight",
        choices=tuple(X_LABELS),
        help="the plot's x axis: remaining weights (default), remaining channels, or MACs of the structured export",
    )
    parser.add_argument("--provenance", metavar="RUN_DIR", help="print how RUN_DIR was made (provenance.json)")
    args = parser.parse_args(argv)
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        log.addHandler(_Stderr(logging.WARNING))
        log.propagate = False
    try:
        if args.provenance:
            sys.stdout.write(format_provenance(read_provenance(args.provenance)) + "\n")
            return 0
        if not args.path:
            parser.error("give PATH (a run or sweep folder) or --provenance RUN_DIR")
        result = report(args.path, args.out, args.metric, args.x)
    except RsstError as exc:  # ReportError; RunIOError writing the report (its strerror names the file and why)
        sys.stderr.write(f"rsst.report: {printable(exc.strerror if isinstance(exc, RunIOError) else exc)}\n")
        return 2
    except OSError as exc:  # PATH missing (FileNotFoundError), or unreadable
        sys.stderr.write(f"rsst.report: {printable(exc)}\n")
        return 2
    except KeyError as exc:
        sys.stderr.write(f"rsst.report: {printable(exc.args[0])}\n")
        return 2
    sys.stdout.write(result["markdown"] + "\n")
    sys.stdout.write(f"wrote {', '.join(ReportFiles(result['out']).names)} to {result['out']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
