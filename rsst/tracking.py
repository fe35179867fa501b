"""Metrics out: ``metrics.csv`` (a row per epoch), ``rounds.json`` (a row per round) and console tables."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsst.folder.atomic import atomic_write_json, atomic_write_text
from rsst.folder.layout import RunFiles
from rsst.folder.records import to_csv

log = logging.getLogger(__name__)


class CsvLogger:
    """Writes the run's metrics as files; every write replaces the whole file atomically."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None

    def start(
        self, run_dir: Path, config: dict[str, Any], resume_id: str | None = None, logged: tuple[int, int] = (0, 0)
    ) -> str | None:
        """Called once per process; ``logged`` = (epochs, rounds) already recorded by an earlier process.

        Returns an id to keep in the checkpoint so a resumed run continues the same remote run.
        """
        self.run_dir = Path(run_dir)
        return resume_id

    def log_epochs(self, rows: Sequence[dict[str, Any]]) -> None:
        """``rows`` is the whole epoch history so far; the newest row is the last."""
        assert self.run_dir is not None
        atomic_write_text(RunFiles(self.run_dir).metrics, to_csv(rows))

    def log_rounds(self, rows: Sequence[dict[str, Any]]) -> None:
        assert self.run_dir is not None
        atomic_write_json(RunFiles(self.run_dir).rounds, list(rows))

    def finish(self) -> None:
        pass


class Silent:
    """The logger of a process that writes nothing: ranks other than 0 of a multi-process run."""

    def start(
        self, run_dir: Path, config: dict[str, Any], resume_id: str | None = None, logged: tuple[int, int] = (0, 0)
    ) -> str | None:
        return resume_id

    def log_epochs(self, rows: Sequence[dict[str, Any]]) -> None:
        pass

    def log_rounds(self, rows: Sequence[dict[str, Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


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


# The original tool's wandb metric names, for dashboards that already exist.
EPOCH_NAMES = {
    "train_acc": "accuracy",
    "val_acc": "val_accuracy",
    "test_acc": "test_accuracy",
    "remain_weight": "remain_weight",
    "reg_lambda": "reg_lambd",
    "round": "prune_times",
}


class WandbLogger(CsvLogger):
    """The files of :class:`CsvLogger`, plus a wandb run (offline unless wandb is configured).

    A wandb failure is logged as a warning and turns wandb off for the rest of the run;
    it never stops training.
    """

    def __init__(
        self,
        project: str = "rsst",
        entity: str | None = None,
        group: str | None = None,
        mode: str | None = None,
        tags: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"mode={mode!r}: expected null (auto), online, offline or disabled")
        self.project, self.entity, self.group, self.mode, self.tags = project, entity, group, mode, list(tags)
        self.run: Any = None
        self.sent = (0, 0)

    def _mode(self) -> str:
        import os

        if self.mode:
            return self.mode
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        configured = (
            os.environ.get("WANDB_API_KEY")
            or (Path.home() / ".netrc").exists()
            and "api.wandb.ai" in (Path.home() / ".netrc").read_text(errors="ignore")
        )
        return "online" if configured else "offline"

    def start(self, run_dir, config, resume_id=None, logged=(0, 0)):
        super().start(run_dir, config, resume_id, logged)
        self.sent = logged
        try:
            import wandb

            run_id = resume_id or secrets.token_hex(4)
            self.run = wandb.init(
                project=self.project,
                entity=self.entity,
                group=self.group or Path(run_dir).parent.name,
                name=Path(run_dir).name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                mode=self._mode(),
                config=config,
                tags=self.tags,
                reinit="finish_previous",
            )
            return run_id
        except Exception as exc:  # a logger must never kill training
            log.warning("wandb disabled for this run: %s: %s", type(exc).__name__, exc)
            self.run = None
            return resume_id

    def _log(self, payload: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.log(payload)
        except Exception as exc:
            log.warning("wandb disabled for this run: %s: %s", type(exc).__name__, exc)
            self.run = None

    def log_epochs(self, rows):
        super().log_epochs(rows)
        for row in rows[self.sent[0] :]:
            self._log(
                {
                    **{k: v for k, v in row.items() if k not in EPOCH_NAMES},
                    **{EPOCH_NAMES[k]: v for k, v in row.items() if k in EPOCH_NAMES},
                }
            )
        self.sent = (len(rows), self.sent[1])

    def log_rounds(self, rows):
        super().log_rounds(rows)
        for row in rows[self.sent[1] :]:
            self._log({"prune_times": row["round"], **{f"round/{k}": v for k, v in row.items()}})
        self.sent = (self.sent[0], len(rows))

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as exc:
                log.warning("wandb finish failed: %s: %s", type(exc).__name__, exc)
            self.run = None
