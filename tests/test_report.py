"""rsst.report: groups seeds, and its numbers equal those computed directly from the rounds.json files."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT
from PIL import Image

from rsst.report import report


def write_run(root, name, struct, seed, accs, criteria=None):
    run = root / name
    run.mkdir(parents=True)
    struct_cfg = {"_target_": f"rsst.pruning.strategies.{struct}"}
    if criteria:
        struct_cfg["criteria"] = {"_target_": f"rsst.pruning.criteria.{criteria}"}
    config = {"seed": seed, "struct": struct_cfg, "prune": {"rate": 0.2}, "paths": {"root": str(root)}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"round": i, "remain_weight": 100 * 0.8**i, "test_acc": a} for i, a in enumerate(accs)]
    (run / "rounds.json").write_text(json.dumps(rows))


@pytest.fixture
def sweep(tmp_path):
    accs = {
        ("IMP", None): [[90.0, 89.0, 85.0], [91.0, 88.0, 84.0], [92.5, 88.5, 86.0]],
        ("RSST", "L1"): [[90.0, 90.5, 89.0], [91.0, 90.0, 88.0]],
        ("RSST", "Magnitude"): [[90.2, 89.9, 87.0], [91.1, 89.0, 86.5], [90.0, 89.5, 86.1]],
    }
    for (struct, crit), seeds in accs.items():
        for s, a in enumerate(seeds):
            write_run(tmp_path, f"{struct}_{crit}_{s}", struct, s, a, crit)
    return tmp_path, accs


def test_report_numbers_equal_means_and_stds_from_the_files(sweep):
    root, accs = sweep
    result = report(root)
    assert len(result["groups"]) == 3
    labels = {g.label for g in result["groups"]}
    assert labels == {"imp", "rsst criteria=l1", "rsst criteria=magnitude"}
    with open(root / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    by_label = {
        "imp": ("IMP", None),
        "rsst criteria=l1": ("RSST", "L1"),
        "rsst criteria=magnitude": ("RSST", "Magnitude"),
    }
    for row in rows:
        seeds = accs[by_label[row["group"]]]
        values = [s[int(row["round"])] for s in seeds]
        assert int(row["n"]) == len(seeds)
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values))
        assert float(row["std"]) == pytest.approx(statistics.stdev(values))
        assert float(row["remain_weight"]) == pytest.approx(100 * 0.8 ** int(row["round"]))
    md = (root / "report.md").read_text()
    assert md.count("\n") == 2 + 3  # header, rule, a row per group
    imp_round2 = [85.0, 84.0, 86.0]
    assert f"{statistics.fmean(imp_round2):.2f} ± {statistics.stdev(imp_round2):.2f}" in md


def test_report_plot_is_a_real_image(sweep):
    root, _ = sweep
    report(root)
    png = root / "report.png"
    assert png.stat().st_size > 10_000
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400


def test_report_on_a_single_run_folder_and_on_nothing(tmp_path, sweep):
    root, _ = sweep
    single = report(root / "IMP_None_0", out=tmp_path / "single")
    assert [g.label for g in single["groups"]] == ["imp"]
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "rsst.report", str(empty)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "no run folders" in proc.stderr
