"""Reading run folders for ``rsst.report``: each run's hash-checked config, its rounds (the checkpoint's when
``rounds.json`` differs), and whether it diverged; what cannot be read is skipped with the reason."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsst.errors import RsstError
from rsst.folder.layout import CHECKPOINT, CONFIG, ROUNDS, RunFiles, printable
from rsst.folder.naming import EXCLUDED_KEYS, RunFolderError, drop_neutral, read_verified_config
from rsst.folder.safeload import load_tensors

log = logging.getLogger("rsst.commands.report")  # the report's logger: its warnings reach rsst.report's stderr

# Keys that never distinguish groups: the seed, and what the run folder's hash leaves out.
IGNORED = ("seed", *EXCLUDED_KEYS)

TICKET = "ticket"
KNOWN_CONTROLS = ("reinit", "shuffle_layerwise")  # the lottery-ticket controls, in the order they are drawn


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
    known = [TICKET, *KNOWN_CONTROLS]
    return [b for b in known if b in names] + sorted(names - set(known))


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
    except ValueError as exc:  # a number Python will not read, e.g. an integer of over 4300 digits
        raise Skip(f"{path} holds a value that is not a number a run writes ({str(exc).split(':')[0]})") from None
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
            config = drop_neutral(read_verified_config(folder))  # a neutral new key groups with its absence
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
