"""The names of a run folder's files, in one place: :class:`RunFiles` (and :class:`ReportFiles`).

No other module spells a run folder's file names. They are part of every run folder that exists,
so they never change: a folder an older version wrote must still resume, report and export.

The temporary files of atomic writes (:mod:`rsst.folder.atomic`) carry a mark no user file has,
``.<name>.rsst-tmp-<pid>-<16 hex digits>``, so that a rerun removes only its own leftovers
(:meth:`RunFiles.leftover_temporaries`), never a user's ``.data.tmp``.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from rsst.errors import printable as printable  # the names of files are shown through it

CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
ROUNDS = "rounds.json"
METRICS = "metrics.csv"
LOG = "run.log"
LOCK = ".lock"
PROVENANCE = "provenance.json"
DIVERGED = "diverged.json"
WEIGHTS = "weights"
MASKS = "masks"
REPORT_CSV, REPORT_MD, REPORT_PNG = "report.csv", "report.md", "report.png"
STABILITY_PNG = "stability.png"  # the report's linear-mode stability figure, for runs that measured it

TEMP_MARK = ".rsst-tmp-"
_TEMP_TARGET_LIMIT = 100  # characters of the target's name kept in a temporary name
# ``.<target>.rsst-tmp-<pid>-<token>``; the target is a name of printable characters without a slash.
TEMP_NAME = re.compile(r"\.(?P<target>[!-.0-~ ]+)\.rsst-tmp-(?P<pid>[0-9]+)-(?P<token>[0-9a-f]{16})")
# What the run itself writes, and so what its start may sweep: the run's files and the rounds' tensors.
_RUN_WRITTEN = (CONFIG, CHECKPOINT, ROUNDS, METRICS, PROVENANCE)
_ROUND_FILE = re.compile(r"round_(?P<round>[0-9]+)(?:_(?P<branch>[A-Za-z0-9_]+))?\.pt")


def round_file(round_: int, branch: str | None = None) -> str:
    """``round_<r>.pt`` (a ticket's), or ``round_<r>_<branch>.pt`` (a lottery-ticket control's masks)."""
    return f"round_{round_}.pt" if branch is None else f"round_{round_}_{branch}.pt"


def temp_name(target: str) -> str:
    """A fresh temporary name beside ``target`` (a file name): ``.<target>.rsst-tmp-<pid>-<16 hex digits>``."""
    return f".{target[:_TEMP_TARGET_LIMIT]}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(8)}"


def temp_target(name: str) -> str | None:
    """The target name a temporary name was made for (by :func:`temp_name`), or None for any other name."""
    found = TEMP_NAME.fullmatch(name)
    return found["target"] if found else None


@dataclass(frozen=True)
class RunFiles:
    """The files of the run folder ``run_dir``, by what they hold."""

    run_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))

    @property
    def config(self) -> Path:
        """``config.yaml``: the resolved config, a readable copy (the checkpoint's hash is the identity)."""
        return self.run_dir / CONFIG

    @property
    def checkpoint(self) -> Path:
        """``checkpoint.pt``: the whole state, saved after every epoch; the source of truth."""
        return self.run_dir / CHECKPOINT

    @property
    def rounds(self) -> Path:
        """``rounds.json``: a row per finished round (and lottery-ticket control)."""
        return self.run_dir / ROUNDS

    @property
    def metrics(self) -> Path:
        """``metrics.csv``: a row per epoch."""
        return self.run_dir / METRICS

    @property
    def log(self) -> Path:
        """``run.log``: the run's log, appended to by every start."""
        return self.run_dir / LOG

    @property
    def lock(self) -> Path:
        """``.lock``: held by the one process writing the folder."""
        return self.run_dir / LOCK

    @property
    def provenance(self) -> Path:
        """``provenance.json``: where, with what and how the run was made."""
        return self.run_dir / PROVENANCE

    @property
    def diverged(self) -> Path:
        """Where and how the run diverged (written when training stops on a non-finite value, removed at the end)."""
        return self.run_dir / DIVERGED

    @property
    def weights_dir(self) -> Path:
        return self.run_dir / WEIGHTS

    @property
    def masks_dir(self) -> Path:
        return self.run_dir / MASKS

    def weights(self, round_: int) -> Path:
        """``weights/round_<r>.pt``: the state_dict at the end of round ``r``."""
        return self.weights_dir / round_file(round_)

    def masks(self, round_: int, branch: str | None = None) -> Path:
        """``masks/round_<r>.pt``: round ``r``'s ticket; ``masks/round_<r>_<branch>.pt``: a control's mask."""
        return self.masks_dir / round_file(round_, branch)

    def export_model(self, round_: int) -> Path:
        """``export_round_<r>.pt``: the exported network's default place (``rsst.export``)."""
        return self.run_dir / f"export_round_{round_}.pt"

    def export_json(self, round_: int) -> Path:
        """``export_round_<r>.json``: the export's sizes and latencies."""
        return self.run_dir / f"export_round_{round_}.json"

    def kept_rounds(self, kind: str) -> list[int]:
        """The rounds whose ticket file ``kind`` (``weights`` or ``masks``) holds, in order."""
        folder = self.run_dir / kind
        if not folder.is_dir():
            return []
        found = (_ROUND_FILE.fullmatch(p.name) for p in folder.iterdir())
        return sorted(int(m["round"]) for m in found if m and m["branch"] is None)

    @property
    def results(self) -> tuple[Path, ...]:
        """What a run writes as it trains (besides its config and checkpoint): a folder holding any is a run's."""
        return (self.rounds, self.metrics, self.masks_dir, self.weights_dir)

    @property
    def entries(self) -> tuple[Path, ...]:
        """Every fixed name the run opens or writes in its folder."""
        return (self.config, self.checkpoint, self.rounds, self.metrics, self.log, self.lock, self.provenance,
                self.diverged, self.masks_dir, self.weights_dir)  # fmt: skip

    def links(self) -> list[Path]:
        """The entries that are symbolic links (a run never follows one out of its folder)."""
        return [p for p in self.entries if p.is_symlink()]

    def leftover_temporaries(self) -> list[Path]:
        """The temporary files the run's own interrupted atomic writes left (regular files only, not below).

        Only names :func:`temp_name` made for a file the run writes: its config, checkpoint, rounds,
        metrics and provenance in the folder, ``round_*.pt`` in ``masks/`` and ``weights/``.
        """
        found = []
        for folder, own in ((self.run_dir, _RUN_WRITTEN), (self.masks_dir, None), (self.weights_dir, None)):
            try:
                names = os.listdir(folder) if not folder.is_symlink() else []
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                target = temp_target(name)
                if target is None or not (target in own if own else _ROUND_FILE.fullmatch(target)):
                    continue
                path = folder / name
                try:
                    if stat.S_ISREG(path.lstat().st_mode):
                        found.append(path)
                except FileNotFoundError:
                    continue
        return sorted(found)


@dataclass(frozen=True)
class ReportFiles:
    """What ``rsst.report`` writes into its output folder."""

    out_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))

    @property
    def csv(self) -> Path:
        return self.out_dir / REPORT_CSV

    @property
    def markdown(self) -> Path:
        return self.out_dir / REPORT_MD

    @property
    def png(self) -> Path:
        return self.out_dir / REPORT_PNG

    @property
    def stability_png(self) -> Path:
        return self.out_dir / STABILITY_PNG

    @property
    def names(self) -> tuple[str, str, str]:
        return (REPORT_CSV, REPORT_MD, REPORT_PNG)

    def temporaries(self) -> list[tuple[Path, int]]:
        """``(path, pid of the writer)`` of every temporary :func:`temp_name` made for one of the report's files in
        the output folder (regular files only): what a report killed while writing leaves behind."""
        try:
            names = os.listdir(self.out_dir) if not self.out_dir.is_symlink() else []
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for name in names:
            match = TEMP_NAME.fullmatch(name)
            if match is None or match["target"] not in self.names:
                continue
            path = self.out_dir / name
            try:
                if stat.S_ISREG(path.lstat().st_mode):
                    found.append((path, int(match["pid"])))
            except FileNotFoundError:
                continue
        return sorted(found)
