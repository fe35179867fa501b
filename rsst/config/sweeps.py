"""Sweeps that survive their bad jobs: a Hydra callback that checks every job first and sums up failures.

``conf/config.yaml`` registers :class:`SweepChecks` under ``hydra.callbacks``, so it works with
every launcher (basic, submitit local, submitit Slurm) without replacing any:

- before the sweep, every job's config is composed and validated in the launching process. On
  Slurm an invalid job stops the whole sweep before anything is queued (a typo in a 100-job grid
  costs seconds, not a queue wait); locally the valid jobs still run and the invalid ones fail alone;
- a job that fails with a user error records one line in ``<sweep>/.failed/<job>.json`` (a shared
  file system carries it back from a cluster) instead of stopping the launcher;
- after the sweep, the failures are listed one line each and the sweep exits with status 1.

Hydra turns a callback's exceptions into warnings, so the callback ends the process itself
(``SystemExit`` passes through): exit 2 for a refused Slurm sweep, 1 for a sweep with failed jobs.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from rsst.config.checks import validate_config
from rsst.folder.atomic import atomic_write_json

log = logging.getLogger("rsst")

FAILED_DIR = ".failed"


def stop(message: str, status: int) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    raise SystemExit(status)


def describe(overrides: Sequence[str]) -> str:
    return " ".join(overrides) or "(no overrides)"


def record_failure(sweep_dir: str | Path, job_num: int, overrides: Sequence[str], message: str) -> None:
    """Called by a failing job: one line for the sweep's summary."""
    entry = {"job": job_num, "overrides": list(overrides), "error": message}
    atomic_write_json(Path(sweep_dir) / FAILED_DIR / f"{job_num}.json", entry)


def read_failures(sweep_dir: str | Path) -> list[dict[str, Any]]:
    folder = Path(sweep_dir) / FAILED_DIR
    out = []
    for path in sorted(folder.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            out.append({"job": path.stem, "overrides": [], "error": f"unreadable failure record {path}: {exc}"})
    return out


def job_overrides(config: DictConfig) -> list[list[str]]:
    """The sweep's jobs as the basic sweeper will expand them (the command line's ``a=1,2 b=x,y``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: PLC0415
    from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: PLC0415

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def invalid_jobs(config: DictConfig) -> list[str]:
    """``#i overrides: error`` for each job whose config does not compose or validate here.

    The device is not checked: a launching host (a login node) need not have the jobs' GPUs.
    """
    from hydra.core.global_hydra import GlobalHydra  # noqa: PLC0415

    loader = GlobalHydra.instance().config_loader()
    bad = []
    for i, overrides in enumerate(job_overrides(config)):
        try:
            validate_config(loader.load_sweep_config(config, overrides), check_device=False)
        except Exception as exc:  # a compose error or a ConfigError: either way the job's config is at fault
            bad.append(f"#{i} {describe(overrides)}: {exc}")
    return bad


class SweepChecks(Callback):
    """Check a sweep's jobs before it starts; list its failed jobs and exit 1 after it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shutil.rmtree(Path(config.hydra.sweep.dir) / FAILED_DIR, ignore_errors=True)  # a rerun's fresh start
        if config.hydra.sweeper.get("_target_", "").endswith("BasicSweeper"):
            bad = invalid_jobs(config)
            on_cluster = "slurm" in str(config.hydra.launcher.get("_target_", "")).lower()
            if bad and on_cluster:
                stop(
                    f"{len(bad)} of {len(job_overrides(config))} jobs have an invalid config; nothing was submitted:"
                    + "".join(f"\n  {line}" for line in bad),
                    2,
                )
            for line in bad:
                log.warning("invalid job %s (the other jobs still run)", line)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failures = read_failures(config.hydra.sweep.dir)
        if failures:
            basic = config.hydra.sweeper.get("_target_", "").endswith("BasicSweeper")
            total = len(job_overrides(config)) if basic else "?"
            stop(
                f"{len(failures)} of {total} jobs failed:"
                + "".join(f"\n  #{f['job']} {describe(f['overrides'])}: {f['error']}" for f in failures),
                1,
            )
