"""``launch.py`` end to end as a user runs it: the embedded default, overrides, outputs, a local sweep."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import FAST, ROOT, launch, only_run_dir, read_rounds

from rsst.folder.tickets import load_masks
from rsst.pruning.masks import Masks


@pytest.mark.slow
def test_the_embedded_default_runs_three_rounds_with_round_0_at_90_percent(tmp_path):
    proc = launch(f"paths.root={tmp_path}", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rounds(only_run_dir(tmp_path))
    assert len(rows) >= 3
    assert rows[0]["test_acc"] >= 90.0, rows[0]
    assert "finished" in proc.stdout and "remain_weight" in proc.stdout  # the closing table


@pytest.mark.slow
def test_launch_with_overrides_writes_the_documented_outputs(tmp_path):
    proc = launch(*FAST, "struct=imp", "prune.rounds=3", "prune.rate=0.5", "seed=4", f"paths.root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name.startswith("imp_digits_resnet20_s4_")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["prune"]["rate"] == 0.5 and config["seed"] == 4
    rounds = read_rounds(run_dir)
    assert [r["remain_weight"] for r in rounds] == pytest.approx([100.0, 50.0, 25.0], abs=0.01)
    assert json.loads((run_dir / "rounds.json").read_text()) == rounds
    with open(run_dir / "metrics.csv") as f:
        epochs = list(csv.DictReader(f))
    assert [(int(e["round"]), int(e["epoch"])) for e in epochs] == [(r, e) for r in range(3) for e in range(2)]
    for r in range(3):
        mask = Masks(load_masks(run_dir / "masks" / f"round_{r}.pt"))
        assert mask.density() * 100 == pytest.approx(rounds[r]["remain_weight"])
        weights = torch.load(run_dir / "weights" / f"round_{r}.pt", weights_only=True)
        assert all(int((weights[k][m == 0] != 0).sum()) == 0 for k, m in mask.items())


@pytest.mark.slow
def test_a_local_sweep_gives_each_job_its_own_run_folder(tmp_path):
    sweep = tmp_path / "sweep"
    proc = launch("-m", *FAST, "struct=imp", "prune.rounds=1", "train.epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.name for p in sweep.iterdir() if (p / "rounds.json").exists())
    assert (
        len(runs) == 2
        and runs[0].startswith("imp_digits_resnet20_s0_")
        and runs[1].startswith("imp_digits_resnet20_s1_")
    )


@pytest.mark.slow
def test_two_sweeps_started_in_the_same_second_get_their_own_folders(tmp_path):
    """The default sweep folder is multirun_outputs/<time>_<random token>, relative to where you launch."""
    cmd = [sys.executable, str(ROOT / "launch.py"), "-m", *FAST, "struct=imp", "prune.rounds=1", "train.epochs=1"]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    sweeps = sorted((tmp_path / "multirun_outputs").iterdir())
    assert len(sweeps) == 2, sweeps
    for sweep in sweeps:
        assert [p.name for p in sweep.iterdir() if (p / "rounds.json").exists()], f"no finished run in {sweep}"
