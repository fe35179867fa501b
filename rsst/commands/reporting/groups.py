"""Grouping runs for ``rsst.report``: runs that differ only in ``seed`` form one group, labelled by the keys
that vary; per round the mean and std over seeds, as long rows (CSV) and a markdown table."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rsst.commands.reporting.runs import TICKET, Run, flatten, ignored, numeric, ordered_branches

# What each rounds.json column measures, for the table header and the plot's title.
MEASURED = {
    "test_acc": "ticket, best-val epoch",
    "final_test_acc": "ticket, last epoch",
    "trained_test_acc": "network as trained, best-val epoch",
}


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


# Keys that add branches to a run (the controls), which the figure draws as lines of their own (``— reinit``):
# a label leaves them out where the method's groups are told apart without them.
BRANCH_KEYS = ("prune.controls",)


def label_keys(keys: Sequence[str], members: Sequence[Group]) -> list[str]:
    """``keys`` less each of :data:`BRANCH_KEYS` whose absence still leaves every group's label its own."""
    keys = list(keys)
    for k in BRANCH_KEYS:
        if k not in keys:
            continue
        rest = [x for x in keys if x != k]
        labels = {(tuple(label_parts(rest, dict(g.key))), g.done, g.diverged) for g in members}
        if len(labels) == len(members):
            keys = rest
    return keys


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
        keys = label_keys([k for k in varying_keys(flats) if k != "struct._target_"], members)
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
