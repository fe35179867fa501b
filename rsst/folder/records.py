"""The text format of a run folder's per-epoch record, ``metrics.csv``: written by the tracker, rebuilt by repair."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` as CSV text: one column per key, in the order the keys first appear; a missing value is empty."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
