"""A killed run loses at most the epoch in progress; the same command resumes and ends with the same numbers."""

from __future__ import annotations

import csv
import shutil
import signal
from pathlib import Path

import pytest
from helpers import FINISHED_ARGS, launch, only_run_dir, read_rounds


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def epochs_done(run_root: Path) -> int:
    for metrics in run_root.glob("*/metrics.csv"):
        with open(metrics) as f:
            return sum(1 for _ in csv.DictReader(f))
    return 0


@pytest.mark.slow
def test_a_run_killed_mid_round_resumes_to_the_same_rounds_json(finished_run, tmp_path):
    reference = read_rounds(finished_run)  # the same config, uninterrupted
    killed = tmp_path / "killed"
    # SIGKILL in the middle of round 2: after its first epoch's checkpoint, before metrics.csv records that epoch
    proc = launch(*FINISHED_ARGS, f"paths.root={killed}", env={"RSST_KILL_AT": "epoch_saved:2:ticket:0"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    run_dir = only_run_dir(killed)
    interrupted_at = epochs_done(killed)
    assert 3 <= interrupted_at < 6
    assert interrupted_at == 4  # rounds 0 and 1, two epochs each
    assert [r["round"] for r in read_rounds(run_dir)] == [0, 1]

    resumed = launch(*FINISHED_ARGS, f"paths.root={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    assert comparable(read_rounds(run_dir)) == comparable(reference)
    assert epochs_done(killed) == 6  # no epoch recorded twice

    # a finished run reports its result without training again
    ckpt_mtime = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    again = launch(*FINISHED_ARGS, f"paths.root={killed}")
    assert again.returncode == 0 and "finished" in again.stdout
    assert "epoch" not in again.stderr.lower()  # no progress bar: no epoch ran
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == ckpt_mtime


@pytest.mark.slow
def test_a_checkpoint_from_another_config_is_refused(finished_run, tmp_path):
    run_dir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    other = launch(*FINISHED_ARGS, "seed=5", f"paths.run_dir={run_dir}")
    assert other.returncode == 2
    assert f"checkpoint {run_dir / 'checkpoint.pt'} belongs to config" in other.stderr


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_an_error_naming_the_file(finished_run, tmp_path):
    run_dir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    proc = launch(*FINISHED_ARGS, f"paths.run_dir={run_dir}")
    assert proc.returncode == 2
    assert f"checkpoint {ckpt} is unreadable" in proc.stderr
