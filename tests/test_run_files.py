"""The names of a run folder's files (rsst.folder.layout): byte for byte what every run folder has always used."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsst.folder.layout import ReportFiles, RunFiles, round_file

# The names run folders written before RunFiles existed carry; changing one would strand those folders.
ALWAYS = {
    "config": "config.yaml",
    "checkpoint": "checkpoint.pt",
    "rounds": "rounds.json",
    "metrics": "metrics.csv",
    "log": "run.log",
    "lock": ".lock",
    "provenance": "provenance.json",
    "weights_dir": "weights",
    "masks_dir": "masks",
}


def test_the_run_folder_names_are_the_ones_it_has_always_used(tmp_path):
    files = RunFiles(tmp_path)
    for attr, name in ALWAYS.items():
        assert getattr(files, attr) == tmp_path / name, attr
    assert files.weights(3) == tmp_path / "weights" / "round_3.pt"
    assert files.masks(0) == tmp_path / "masks" / "round_0.pt"
    assert files.masks(2, "reinit") == tmp_path / "masks" / "round_2_reinit.pt"
    assert files.masks(1, "shuffle_layerwise") == tmp_path / "masks" / "round_1_shuffle_layerwise.pt"
    assert files.export_json(4) == tmp_path / "export_round_4.json"
    assert files.export_model(4) == tmp_path / "export_round_4.pt"
    assert round_file(7) == "round_7.pt"
    report = ReportFiles(tmp_path)
    assert (report.csv, report.markdown, report.png) == tuple(
        tmp_path / n for n in ("report.csv", "report.md", "report.png")
    )
    assert RunFiles(str(tmp_path)) == files and isinstance(RunFiles(str(tmp_path)).run_dir, Path)


def test_kept_rounds_lists_the_tickets_files_only(tmp_path):
    files = RunFiles(tmp_path)
    assert files.kept_rounds("masks") == []
    files.masks_dir.mkdir()
    for name in ("round_0.pt", "round_2.pt", "round_10.pt", "round_1_reinit.pt", "round_x.pt", "notes.txt"):
        (files.masks_dir / name).write_bytes(b"")
    assert files.kept_rounds("masks") == [0, 2, 10]


@pytest.mark.slow
def test_a_finished_run_holds_only_names_run_files_gives(finished_run):
    files = RunFiles(finished_run)
    fixed = [getattr(files, attr) for attr in ALWAYS]
    named = {p.relative_to(finished_run).as_posix() for p in (*fixed, *_round_files(files))}
    found = {p.relative_to(finished_run).as_posix() for p in finished_run.rglob("*")}
    assert found == named, found ^ named


def _round_files(files: RunFiles) -> list[Path]:
    return [f(r) for r in range(3) for f in (files.weights, files.masks)]
