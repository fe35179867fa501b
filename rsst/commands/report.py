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
drawn as their own lines beside their ticket. Runs trained with ``prune.stability=true`` add a table of the
error barrier per round to ``report.md`` and the error along each round's path to ``stability.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rsst.commands.reporting import stability
from rsst.commands.reporting.groups import MEASURED, Group, group_runs, long_table, markdown_table
from rsst.commands.reporting.plot import AXES_SIZE, X_LABELS, PlotLayout, boxes_overlap, plot
from rsst.commands.reporting.runs import (
    TICKET,
    ReportError,
    Run,
    Skip,
    checkpoint_rounds,
    find_runs,
    read_diverged,
    read_rounds,
    usable,
)
from rsst.errors import INTERRUPTED, RsstError, shown
from rsst.folder.atomic import RunIOError, atomic_write_text, is_stale
from rsst.folder.layout import ReportFiles, RunFiles, printable
from rsst.folder.safeload import MAX_DEPTH, nesting_depth

__all__ = [
    "AXES_SIZE", "MEASURED", "TICKET", "Group", "PlotLayout", "ReportError", "Run", "Skip", "boxes_overlap",
    "checkpoint_rounds", "find_runs", "format_provenance", "group_runs", "long_table", "main", "markdown_table",
    "plot", "read_diverged", "read_provenance", "read_rounds", "report", "usable",
]  # fmt: skip

log = logging.getLogger(__name__)


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
    stable = stability.measured(groups)
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
    files = ReportFiles(out_dir)
    remove_stale_temporaries(files)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(files.csv, buf.getvalue())
    md = markdown_table(groups, metric)
    written = list(files.names)
    if stable:  # prune.stability: the barrier per round, and the paths drawn
        md += "\n\n" + stability.markdown_table(stable)
        stability.plot(stable, files.stability_png)
        written.append(files.stability_png.name)
    atomic_write_text(files.markdown, md + "\n")
    drawn = plot(groups, metric, files.png, x, references)
    return {
        "groups": groups,
        "rows": rows,
        "markdown": md,
        "out": out_dir,
        "layout": drawn,
        "skipped": skipped,
        "written": written,
    }


def remove_stale_temporaries(files: ReportFiles) -> list[Path]:
    """Delete the temporaries an earlier report, killed while writing, left in the output folder; return them.

    Only the names the report's own atomic writes make, and only once stale
    (:func:`rsst.folder.atomic.is_stale`): another report writing into the same folder right now keeps its own.
    """
    gone = [path for path, pid in files.temporaries() if is_stale(path, pid)]
    for path in gone:
        path.unlink(missing_ok=True)
    if gone:
        log.info("removed %d temporary file(s) a killed report left: %s", len(gone), ", ".join(p.name for p in gone))
    return gone


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
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting deeper than Python recurses
        reason = str(exc).split(":")[0] if isinstance(exc, ValueError) else "nested too deeply"
        raise ReportError(f"{path} is not a provenance record ({reason})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} is not a provenance record (found a JSON {type(data).__name__})")
    if nesting_depth(data) > MAX_DEPTH:
        raise ReportError(f"{path} is not a provenance record (nested more than {MAX_DEPTH} levels deep)")
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
    with _warnings_to_stderr():
        return _run(parser, args)


@contextlib.contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """While the command runs, the report's warnings go to stderr only (as ``rsst.report: warning: ...``)."""
    handler, propagate = _Stderr(logging.WARNING), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        if args.provenance:
            sys.stdout.write(format_provenance(read_provenance(args.provenance)) + "\n")
            return 0
        if not args.path:
            parser.error("give PATH (a run or sweep folder) or --provenance RUN_DIR")
        result = report(args.path, args.out, args.metric, args.x)
    except RsstError as exc:  # ReportError; RunIOError writing the report (its strerror names the file and why)
        sys.stderr.write(f"rsst.report: {shown(exc.strerror if isinstance(exc, RunIOError) else str(exc))}\n")
        return 2
    except OSError as exc:  # PATH missing (FileNotFoundError), or unreadable
        sys.stderr.write(f"rsst.report: {shown(str(exc))}\n")
        return 2
    except KeyError as exc:
        sys.stderr.write(f"rsst.report: {shown(str(exc.args[0]))}\n")
        return 2
    except KeyboardInterrupt:  # each report file is whole or absent: written to a temporary, then renamed
        sys.stderr.write(
            "rsst.report: interrupted; every report file written is whole (none half-written), the same command "
            "writes them all\n"
        )
        return INTERRUPTED
    sys.stdout.write(result["markdown"] + "\n")
    sys.stdout.write(f"wrote {', '.join(result['written'])} to {result['out']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
