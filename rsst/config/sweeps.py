"""Sweeps that survive their bad jobs: a Hydra callback that checks every job first and sums up failures.

``conf/config.yaml`` registers :class:`SweepChecks` under ``hydra.callbacks``, so it works with
every launcher (basic, submitit local, submitit Slurm) without replacing any:

- before the sweep, every job's config is composed and validated in the launching process. On
  Slurm an invalid job stops the whole sweep before anything is queued (a typo in a 100-job grid
  costs seconds, not a queue wait); locally the valid jobs still run and the invalid ones fail alone;
- a job that fails with a user error records one line in ``<sweep>/.failed/<sweep id>/<job>.json``
  (a shared file system carries it back from a cluster) instead of stopping the launcher. The
  sweep id is made when the sweep starts and reaches its jobs through the environment
  (``RSST_SWEEP_ID``: local jobs inherit it, Slurm exports it), so two sweeps sharing one
  ``hydra.sweep.dir`` keep their failures apart;
- after the sweep, the failures are listed one line each and the sweep exits with status 1.

A hyperparameter search (:mod:`rsst.search`) is left to its sweeper: it checks its space and every
trial itself, and records a failed trial as failed in its study (the search goes on).

Hydra turns a callback's exceptions into warnings, so the callback ends the process itself
(``SystemExit`` passes through): exit 2 for a refused Slurm sweep, 1 for a sweep with failed jobs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from rsst.config.checks import compose_error, validate_config
from rsst.errors import RsstError, one_line, shown
from rsst.folder.atomic import atomic_write_json

log = logging.getLogger("rsst")

FAILED_DIR = ".failed"
SWEEP_ID_VAR = "RSST_SWEEP_ID"
SEARCH_SWEEPER = "hydra_plugins.rsst_search.OptunaSweeper"  # conf/hydra/sweeper/optuna.yaml (rsst.search)


def stop(message: str, status: int) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    raise SystemExit(status)


def describe(overrides: Sequence[str]) -> str:
    """A job's overrides as they are echoed: one printable line of bounded length (:func:`rsst.errors.shown`)."""
    return shown(" ".join(overrides)) or "(no overrides)"


def new_sweep_id() -> str:
    """Unique among the sweeps sharing a folder: start time, host process and a random part."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"


def failures_dir(sweep_dir: str | Path) -> Path:
    """Where this process's sweep (``RSST_SWEEP_ID``) keeps its failure records."""
    return Path(sweep_dir) / FAILED_DIR / (os.environ.get(SWEEP_ID_VAR) or "unknown-sweep")


def record_failure(sweep_dir: str | Path, job_num: int, overrides: Sequence[str], message: str) -> None:
    """Called by a failing job: one line for its sweep's summary."""
    entry = {"job": job_num, "overrides": list(overrides), "error": message}
    atomic_write_json(failures_dir(sweep_dir) / f"{job_num}.json", entry)


def read_failures(sweep_dir: str | Path) -> list[dict[str, Any]]:
    folder = failures_dir(sweep_dir)
    out = []
    for path in sorted(folder.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            out.append({"job": path.stem, "overrides": [], "error": f"unreadable failure record {path}: {exc}"})
    return out


def job_overrides(config: DictConfig) -> list[list[str]] | None:
    """The sweep's jobs as the cartesian product of the command line's ``a=1,2 b=x,y`` (a grid sweep's order).

    Built from Hydra's public override parser, so it holds for any sweeper. ``None`` when a sweep
    override is not a list of values (``interval(...)``, a sampling sweeper's range): those jobs are
    only known as they start, and each is checked then.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: PLC0415

    axes = []
    for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                return None
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*axes)]


def job_problem(config: DictConfig, overrides: list[str]) -> tuple[bool, str] | None:
    """None if the job ``overrides`` composes and passes every rule; else ``(composes, the one-line error)``.

    The device is not checked: a launching host (a login node) need not have the jobs' GPUs.
    """
    from hydra.core.global_hydra import GlobalHydra  # noqa: PLC0415

    try:
        job = GlobalHydra.instance().config_loader().load_sweep_config(config, overrides)
    except Exception as exc:  # noqa: BLE001  (a compose error of any kind: the job's config is at fault)
        return False, shown(compose_error(exc) or str(exc))
    try:
        validate_config(job, check_device=False)
    except RsstError as exc:
        return True, one_line(exc)
    return None


def check_jobs(config: DictConfig, jobs: list[list[str]]) -> tuple[list[str], list[str]]:
    """``(jobs that do not compose, jobs that compose but break a rule)``, one ``#i overrides: error`` line each."""
    broken, invalid = [], []
    for i, overrides in enumerate(jobs):
        problem = job_problem(config, overrides)
        if problem is not None:
            (invalid if problem[0] else broken).append(f"#{i} {describe(overrides)}: {problem[1]}")
    return broken, invalid


def is_search(config: DictConfig) -> bool:
    """A hyperparameter search (``hydra/sweeper=optuna``): its sweeper checks, launches and reports its own trials."""
    return str(config.hydra.sweeper.get("_target_", "")) == SEARCH_SWEEPER


class SweepChecks(Callback):
    """Check a sweep's jobs before it starts; list its failed jobs and exit 1 after it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # this sweep's own id, inherited by its jobs: another sweep into the same folder has its own records
        os.environ[SWEEP_ID_VAR] = new_sweep_id()
        if is_search(config):  # its trials are drawn as it runs; the sweeper checks its space and each trial
            return
        jobs = job_overrides(config)
        if jobs is None:
            log.warning("this sweep's jobs are chosen as it runs: each is checked when it starts")
            return
        broken, invalid = check_jobs(config, jobs)
        on_cluster = "slurm" in str(config.hydra.launcher.get("_target_", "")).lower()
        if broken or (invalid and on_cluster):
            # A job that does not compose would stop any launcher half-way; on Slurm nothing is queued
            # with a typo in it. Locally, jobs that only break a rule fail alone (below).
            bad = broken + (invalid if on_cluster else [])
            stop(
                f"{len(bad)} of {len(jobs)} jobs have an invalid config; nothing was "
                + ("submitted:" if on_cluster else "run:")
                + "".join(f"\n  {line}" for line in bad),
                2,
            )
        for line in invalid:
            log.warning("invalid job %s (the other jobs still run)", line)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failures = read_failures(config.hydra.sweep.dir)
        shutil.rmtree(failures_dir(config.hydra.sweep.dir), ignore_errors=True)  # read: the summary below has them
        with contextlib.suppress(OSError):  # and .failed itself once no sweep has records in it
            (Path(config.hydra.sweep.dir) / FAILED_DIR).rmdir()
        if failures and not is_search(config):  # a search records failed trials in its study and its results
            jobs = job_overrides(config)
            total = len(jobs) if jobs is not None else "?"
            stop(
                f"{len(failures)} of {total} jobs failed:"
                + "".join(f"\n  #{f['job']} {describe(f['overrides'])}: {f['error']}" for f in failures),
                1,
            )
