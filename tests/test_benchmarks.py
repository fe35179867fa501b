"""The training-speed benchmark's quick mode runs on the CPU and prints its figures as JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

FIELDS = {
    "loop",
    "arch",
    "classes",
    "images_per_s",
    "seconds_per_epoch",
    "peak_memory_mib",
    "peak_rss_mib",
    "device",
    "batch_size",
    "images",
    "epochs",
    "amp",
    "channels_last",
    "compile",
    "data",
    "torch",
}
LOOPS = ["seed_imp", "seed_rsst", "dense", "imp", "refill", "rsst"]


@pytest.mark.slow
def test_quick_mode_prints_one_json_line_per_loop_and_the_ratios():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "benchmarks/train_speed.py", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows, last = lines[:-1], lines[-1]
    assert [row["loop"] for row in rows] == LOOPS
    for row in rows:
        assert set(row) == FIELDS
        assert row["images_per_s"] > 0 and row["seconds_per_epoch"] > 0
        assert row["images_per_s"] == pytest.approx(row["images"] / row["seconds_per_epoch"], rel=0.01)
        assert row["device"].startswith("CPU") and row["peak_memory_mib"] is None
        assert (row["batch_size"], row["images"], row["epochs"]) == (64, 256, 1)
    assert rows[0]["data"].startswith("DataLoader") and rows[2]["data"] == "device"
    ratios = last["ratios"]
    assert set(ratios) == {
        "imp_speedup_vs_seed_imp",
        "rsst_speedup_vs_seed_rsst",
        "rsst_epoch_vs_imp_epoch",
        "imp_epoch_vs_dense_epoch",
        "refill_epoch_vs_dense_epoch",
        "seed_rsst_epoch_vs_seed_imp_epoch",
    }
    by_loop = {row["loop"]: row for row in rows}
    expect = by_loop["imp"]["images_per_s"] / by_loop["seed_imp"]["images_per_s"]
    assert ratios["imp_speedup_vs_seed_imp"] == pytest.approx(expect, abs=0.002)


def test_an_unknown_loop_is_refused_with_the_choices():
    proc = subprocess.run(
        [sys.executable, "benchmarks/train_speed.py", "--quick", "--loops", "imp,fastest"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--loops: unknown ['fastest']; choose from seed_imp, seed_rsst, dense, imp, refill, rsst" in proc.stderr
