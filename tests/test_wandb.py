"""logger=wandb: offline by default, the original metric names, and one wandb run across a resume."""

from __future__ import annotations

import signal

import pytest
from helpers import FAST, launch, only_run_dir

from rsst.folder.checkpoint import load_checkpoint

NAMES = ("remain_weight", "reg_lambd", "accuracy", "val_accuracy", "test_accuracy", "prune_times")
ARGS = [*FAST, "logger=wandb", "struct=rsst", "criteria=magnitude", "prune.rounds=2", "train.epochs=3"]


@pytest.mark.slow
def test_wandb_offline_run_logs_the_original_names_and_keeps_its_id_across_a_resume(tmp_path):
    # SIGKILL in round 0 once two epochs are logged (to wandb too), after the third epoch's checkpoint
    proc = launch(*ARGS, f"paths.root={tmp_path}", env={"RSST_KILL_AT": "epoch_saved:0:ticket:2"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len((only_run_dir(tmp_path) / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    resumed = launch(*ARGS, f"paths.root={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    run_dir = only_run_dir(tmp_path)
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs
    ids = {r.name.rsplit("-", 1)[-1] for r in runs}
    assert len(ids) == 1
    (run_id,) = ids
    assert load_checkpoint(run_dir / "checkpoint.pt", run_dir.name.rsplit("_", 1)[-1])["tracker_id"] == run_id
    history = b"".join((r / f"run-{run_id}.wandb").read_bytes() for r in runs)
    for name in NAMES:
        assert name.encode() in history, name
    assert tmp_path.name.encode() in history  # the group: the folder above the run
