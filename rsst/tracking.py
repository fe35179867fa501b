"""Metrics out: ``metrics.csv`` (a row per epoch), ``rounds.json`` (a row per round) and console tables."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsst.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


class CsvLogger:
    """Writes the run's metrics as files; every write replaces the whole file atomically."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None

    def start(self, run_dir: Path, config: dict[str, Any], resume_id: str | None = None) -> str | None:
        """Called once per process; returns an id to keep in the checkpoint (none for files)."""
        self.run_dir = Path(run_dir)
        return resume_id

    def log_epochs(self, rows: Sequence[dict[str, Any]]) -> None:
        """``rows`` is the whole epoch history so far; the newest row is the last."""
        assert self.run_dir is not None
        atomic_write_text(self.run_dir / "metrics.csv", to_csv(rows))

    def log_rounds(self, rows: Sequence[dict[str, Any]]) -> None:
        assert self.run_dir is not None
        atomic_write_json(self.run_dir / "rounds.json", list(rows))

    def finish(self) -> None:
        pass


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width text table of ``columns`` (floats to 2 decimals; missing values as ``-``)."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)
