"""Issue 23: nothing outside the run folder is touched, a folder is judged before it is touched, a diverged run
says so, and Ctrl-C ends with one line.

Every case is built in the real form it was seen in: real symbolic links to a file outside the folder,
a real user file beside the run's, a real learning rate that diverges, a real SIGINT to a real
``launch.py``. What is asserted is what is on disk afterwards, byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import FAST, FINISHED_ARGS, ROOT, compose_config, launch, read_rounds
from omegaconf import OmegaConf

from rsst import run
from rsst.commands.export import main as export_main
from rsst.commands.report import find_runs, group_runs, report
from rsst.errors import RsstError
from rsst.folder.atomic import RunIOError, atomic_torch_save, atomic_write_json
from rsst.folder.layout import RunFiles, printable, temp_name, temp_target
from rsst.folder.lock import RunLock
from rsst.folder.naming import RunFolderError
from rsst.folder.repair import remove_temporaries
from rsst.loop.divergence import Diverged, check_epoch, non_finite

OUTSIDE = b"precious bytes that live outside the run folder\n"


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry at or below ``folder`` (links not followed): its kind and link target, or its bytes,
    inode and modification time, so a rewrite with the same bytes shows too."""
    out: dict[str, tuple] = {}
    for here, dirs, names in os.walk(folder, followlinks=False):
        for name in [*dirs, *names]:
            p = Path(here) / name
            st = p.lstat()
            rel = p.relative_to(folder).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode)
            else:
                out[rel] = ("file", p.read_bytes(), st.st_ino, st.st_mtime_ns, st.st_mode)
    return out


def outside_file(tmp_path: Path) -> Path:
    target = tmp_path / "outside" / "victim.txt"
    target.parent.mkdir()
    target.write_bytes(OUTSIDE)
    return target


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def rerun(run_dir: Path) -> dict:
    return run(compose_config([*FINISHED_ARGS, f"paths.run_dir={run_dir}"]))


# -- the file primitives ------------------------------------------------------------------------------------


def test_the_lock_is_never_taken_through_a_link(tmp_path):
    target = outside_file(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(target)
    with pytest.raises(RunIOError, match="symbolic link"):
        RunLock(run_dir).acquire()
    assert target.read_bytes() == OUTSIDE
    (run_dir / ".lock").unlink()
    os.mkfifo(run_dir / ".lock")  # not a regular file: refused, and the open does not wait for a writer
    with pytest.raises(RunIOError, match="not a regular file"):
        RunLock(run_dir).acquire()


def test_an_atomic_write_replaces_a_link_and_leaves_its_target_alone(tmp_path):
    target = outside_file(tmp_path)
    link = tmp_path / "rounds.json"
    link.symlink_to(target)
    atomic_write_json(link, [{"round": 0}])
    assert target.read_bytes() == OUTSIDE
    assert not link.is_symlink() and json.loads(link.read_text()) == [{"round": 0}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "rounds.json"]  # no temporary left


def test_a_tensor_file_is_streamed_to_torch_saves_bytes_and_a_failed_save_leaves_no_temporary(tmp_path):
    obj = {"weight": torch.arange(12.0).reshape(3, 4), "masks": {"a": torch.ones(5, dtype=torch.bool)}, "round": 2}
    expected = io.BytesIO()
    torch.save(obj, expected)
    atomic_torch_save(obj, tmp_path / "checkpoint.pt")
    assert (tmp_path / "checkpoint.pt").read_bytes() == expected.getvalue()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_torch_save({"fn": lambda: 0}, tmp_path / "other.pt")  # not picklable: torch.save's own error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary, no partial file


def test_temporary_names_carry_a_mark_no_user_file_has(tmp_path):
    name = temp_name("checkpoint.pt")
    assert name.startswith(".checkpoint.pt.rsst-tmp-") and temp_target(name) == "checkpoint.pt"
    assert temp_name("checkpoint.pt") != name
    for user in (".data.tmp", ".checkpoint.pt.x.tmp", ".checkpoint.pt.k1ll3d.tmp", "notes.rsst-tmp-1-0123456789abcdef"):
        assert temp_target(user) is None, user
    assert temp_target(".a\nb.rsst-tmp-1-0123456789abcdef") is None  # a name with a newline is never one of ours


def test_the_leftover_sweep_removes_only_the_runs_own_temporaries(tmp_path, caplog):
    files = RunFiles(tmp_path)
    files.masks_dir.mkdir()
    ours = [tmp_path / temp_name("checkpoint.pt"), files.masks_dir / temp_name("round_1.pt")]
    theirs = [
        tmp_path / ".data.tmp",
        tmp_path / ".checkpoint.pt.k1ll3d.tmp",  # the old pattern: a user may hold such a name
        tmp_path / temp_name("notes.txt"),  # our mark, but not a file the run writes (a report's, a user's)
        tmp_path / ".checkpoint.pt.rsst-tmp-1-0123456789abcdef\ninjected line",
    ]
    for p in [*ours, *theirs]:
        p.write_bytes(b"x")
    linked = tmp_path / temp_name("rounds.json")
    linked.symlink_to(outside_file(tmp_path))
    with caplog.at_level("INFO", logger="rsst"):
        assert sorted(remove_temporaries(tmp_path)) == sorted(ours)
    assert not any(p.exists() for p in ours) and all(p.read_bytes() == b"x" for p in theirs)
    assert linked.is_symlink() and linked.read_bytes() == OUTSIDE
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_printable_escapes_what_would_break_a_line_and_keeps_the_rest():
    assert printable("/runs/imp_digits_résumé") == "/runs/imp_digits_résumé"
    assert printable("a\nINFO forged line\x1b[2J") == "a\\nINFO forged line\\x1b[2J"


# -- real run folders with real links ------------------------------------------------------------------------


@pytest.mark.parametrize("entry", [".lock", "run.log", "rounds.json", "masks", "weights"])
def test_a_run_folder_with_a_link_is_refused_and_the_outside_is_unchanged(finished_run, tmp_path, entry):
    run_dir = copy_of(finished_run, tmp_path)
    outside = tmp_path / "outside"
    if entry in ("masks", "weights"):  # a folder elsewhere, holding copies of the round files
        shutil.copytree(run_dir / entry, outside)
        shutil.rmtree(run_dir / entry)
        (run_dir / entry).symlink_to(outside, target_is_directory=True)
    else:
        target = outside_file(tmp_path)
        (run_dir / entry).unlink()
        (run_dir / entry).symlink_to(target)
    (run_dir / temp_name("checkpoint.pt")).write_bytes(b"a leftover: kept, since the folder is refused")
    before, outside_before = snapshot(run_dir), snapshot(outside)
    with pytest.raises(RunFolderError, match=f"symbolic links \\('{entry}'\\)"):
        rerun(run_dir)
    assert snapshot(run_dir) == before
    assert snapshot(outside) == outside_before


@pytest.mark.slow
def test_a_rerun_through_launch_with_a_linked_log_says_one_line_and_touches_nothing(finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    target = outside_file(tmp_path)
    (run_dir / "run.log").unlink()
    (run_dir / "run.log").symlink_to(target)
    before = snapshot(run_dir)
    proc = launch(*FINISHED_ARGS, f"paths.run_dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "symbolic link" in line]
    assert len(lines) == 1 and str(run_dir) in lines[0], proc.stderr[-2000:]
    assert target.read_bytes() == OUTSIDE and snapshot(run_dir) == before


@pytest.mark.slow
def test_a_refused_folder_is_left_byte_for_byte_as_it_was(tmp_path):
    """The issue's case: ``rounds.json`` of ``[]`` and a user's ``.data.tmp``; before, the sweep deleted the
    user's file and created ``.lock`` and ``run.log`` before refusing the folder."""
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "rounds.json").write_text("[]\n")
    (folder / ".data.tmp").write_text("precious\n")
    (folder / temp_name("checkpoint.pt")).write_bytes(b"even our own names are not ours to remove here")
    before = snapshot(folder)
    proc = launch(*FAST, "prune.rounds=1", "train.epochs=1", f"paths.run_dir={folder}")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "leftover" not in proc.stdout + proc.stderr
    assert f"{folder} holds results (rounds.json)" in proc.stderr.strip().splitlines()[-1]
    assert snapshot(folder) == before


@pytest.mark.slow
def test_the_rerun_of_a_finished_run_sweeps_its_own_temporaries_only(finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    ours = run_dir / temp_name("checkpoint.pt")
    ours.write_bytes(b"half a checkpoint")
    user = run_dir / ".data.tmp"
    user.write_text("precious\n")
    evil = run_dir / ".checkpoint.pt.rsst-tmp-1-0123456789abcdef\n2099-01-01 INFO injected"
    evil.write_text("x")
    rerun(run_dir)
    assert not ours.exists() and user.read_text() == "precious\n" and evil.exists()
    log = (run_dir / "run.log").read_text()
    assert "removed 1 leftover temporary file(s)" in log
    assert not any(line.startswith("2099-01-01 INFO injected") for line in log.splitlines())


def test_the_report_replaces_a_linked_report_png_and_leaves_its_target_alone(finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    targets = {}
    for name in ("report.png", "report.csv", "report.md"):
        targets[name] = tmp_path / f"victim-{name}"
        targets[name].write_bytes(OUTSIDE)
        (run_dir / name).symlink_to(targets[name])
    report(run_dir)
    for name, target in targets.items():
        assert target.read_bytes() == OUTSIDE, name
        assert not (run_dir / name).is_symlink() and (run_dir / name).stat().st_size > 0
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in run_dir.iterdir() if ".rsst-tmp-" in p.name]


@pytest.mark.slow
def test_the_export_replaces_linked_outputs_and_leaves_their_targets_alone(tmp_path):
    root = tmp_path / "runs"
    proc = launch(
        "struct=refill", "criteria=magnitude", "prune.rounds=2", *FAST, "train.epochs=1", f"paths.root={root}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    files = RunFiles(run_dir)
    json_target, model_target = outside_file(tmp_path), tmp_path / "outside" / "model-victim.pt"
    model_target.write_bytes(OUTSIDE)
    files.export_json(1).symlink_to(json_target)
    files.export_model(1).symlink_to(model_target)
    assert export_main([str(run_dir), "--round", "1", "--repeats", "1", "--device", "cpu"]) == 0
    assert json_target.read_bytes() == OUTSIDE and model_target.read_bytes() == OUTSIDE
    assert not files.export_json(1).is_symlink() and json.loads(files.export_json(1).read_text())["round"] == 1
    assert not files.export_model(1).is_symlink() and files.export_model(1).stat().st_size > 0


# -- divergence -------------------------------------------------------------------------------------------

FINITE = {"w": torch.ones(3), "steps": torch.tensor(7)}


@pytest.mark.parametrize(
    ("loss", "state", "amp", "scaled", "found"),
    [
        (0.5, FINITE, "off", False, None),
        (float("nan"), FINITE, "off", False, "the train loss is nan"),
        (float("inf"), FINITE, "bf16", False, "the train loss is inf"),
        (0.5, {"w": torch.tensor([1.0, float("nan")]), "b": torch.ones(1)}, "off", False, "1 of 2 tensors"),
        (float("nan"), FINITE, "fp16", True, None),  # the fp16 scaler skips such steps; finite weights go on
        (float("nan"), {"w": torch.tensor([float("-inf")])}, "fp16", True, "(first: w)"),
    ],
)
def test_a_non_finite_loss_or_weight_is_divergence_named_in_one_line(loss, state, amp, scaled, found):
    cfg = OmegaConf.create({"optimizer": {"lr": 10000.0}, "train": {"amp": amp}})
    if found is None:
        check_epoch(cfg, 2, None, 4, loss, state, scaled)
        return
    with pytest.raises(Diverged) as err:
        check_epoch(cfg, 2, "reinit" if scaled else None, 4, loss, state, scaled)
    message = str(err.value)
    assert "\n" not in message and found in message
    where = "round 2 reinit control, epoch 5" if scaled else "round 2, epoch 5"
    assert f"training diverged at {where}: " in message
    assert "a lower optimizer.lr (it is 10000.0)" in message
    assert ("train.amp=off" in message) == (amp != "off")
    assert isinstance(err.value, RsstError)


def finite_accuracies(rows: list[dict]) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for row in rows for k, v in row.items() if "acc" in k)


@pytest.mark.slow
@pytest.mark.parametrize("struct", ["imp", "rsst"])
def test_a_diverged_run_stops_with_one_line_and_records_nothing_diverged(tmp_path, struct):
    """``optimizer.lr=1e4``: before, imp exited 0 with NaN weights and 11.67% in rounds.json as an accuracy,
    and rsst died with a traceback in pruning/refill.py on every rerun."""
    root = tmp_path / "runs"
    args = [*FAST, f"struct={struct}", "prune.rounds=2", "optimizer.lr=1e4", f"paths.root={root}"]
    for attempt in ("first", "rerun"):  # the rerun resumes from the last finite checkpoint and stops the same way
        proc = launch(*args)
        assert proc.returncode == 2, attempt + proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if "diverged" in line]
        assert len(lines) == 1, proc.stderr[-2000:]
        assert lines[0].startswith("training diverged at round 0, epoch 1: the train loss is nan"), lines[0]
        assert "optimizer.lr" in lines[0] and lines[0] not in proc.stdout
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    rows = read_rounds(run_dir)
    assert finite_accuracies(rows) and all(row["round"] != 0 for row in rows)
    assert not RunFiles(run_dir).metrics.exists()  # no epoch was recorded
    ckpt = torch.load(RunFiles(run_dir).checkpoint, weights_only=True)
    assert ckpt["epoch_rows"] == [] and not non_finite(ckpt["model"])  # the last finite state
    log = RunFiles(run_dir).log.read_text()
    assert log.count(lines[0]) == 2  # an error inside the run's own folder is kept in run.log, once a start
    recorded = json.loads(RunFiles(run_dir).diverged.read_text())
    assert (recorded["round"], recorded["epoch"], recorded["message"]) == (0, 1, lines[0])
    runs, skipped = find_runs(root)  # the report names it as diverged, not as a run that has not begun
    assert runs == [] and skipped == [(run_dir, f"{run_dir} diverged at round 0, epoch 1, before any round finished")]


@pytest.mark.slow
def test_a_round_that_diverges_keeps_the_finished_rounds_and_the_last_finite_epoch(tmp_path):
    """lr 10 after a warmup: round 0 ends (at chance, but finite), round 1 blows up a few epochs in."""
    root = tmp_path / "runs"
    args = [
        *FAST,
        "train.amp=off",
        "train.epochs=3",
        "lr_schedule.warmup_epochs=2",
        "optimizer.lr=10",
        "prune.rounds=2",
    ]
    proc = launch(*args, f"paths.root={root}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    (line,) = [line for line in proc.stderr.splitlines() if "diverged" in line]
    found = re.match(r"training diverged at round (\d+), epoch (\d+): the train loss is ", line)
    assert found, line
    r, e = int(found[1]), int(found[2]) - 1  # the epoch as metrics.csv counts it
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    files = RunFiles(run_dir)
    rows = read_rounds(run_dir)
    assert [row["round"] for row in rows] == list(range(r)) and finite_accuracies(rows)
    with files.metrics.open() as f:
        epochs = [(int(row["round"]), int(row["epoch"])) for row in csv.DictReader(f)]
    assert epochs == [(i, j) for i in range(r) for j in range(3)] + [(r, j) for j in range(e)]
    ckpt = torch.load(files.checkpoint, weights_only=True)
    assert (ckpt["round"], ckpt["epoch"]) == (r, e) and len(ckpt["epoch_rows"]) == len(epochs)
    assert not non_finite(ckpt["model"])
    assert json.loads(files.diverged.read_text())["message"] == line
    runs, skipped = find_runs(root)  # reported up to its last finite round, labelled as diverged
    if r == 0:  # where the lr blows up depends on the CPU's arithmetic: nothing finished to report
        assert skipped == [(run_dir, f"{run_dir} diverged at round 0, epoch {e + 1}, before any round finished")]
    else:
        (group,) = group_runs(runs)
        assert group.label.endswith(f"(diverged at round {r}, epoch {e + 1})"), group.label
        assert [lv["remain_weight"] for lv in group.levels("test_acc")] == [row["remain_weight"] for row in rows]


@pytest.mark.slow
def test_the_report_labels_a_diverged_run_by_where_it_diverged_and_a_finished_rerun_clears_it(finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    files = RunFiles(run_dir)
    rows = read_rounds(run_dir)
    atomic_write_json(files.diverged, {"round": 2, "branch": None, "epoch": 2, "message": "training diverged"})
    (group,) = group_runs(find_runs(run_dir)[0])
    assert group.label == "imp (diverged at round 2, epoch 2)", group.label
    assert [lv["remain_weight"] for lv in group.levels("test_acc")] == [row["remain_weight"] for row in rows]
    files.diverged.write_text("[1, 2]")  # not what a run writes: still diverged, place unknown
    (group,) = group_runs(find_runs(run_dir)[0])
    assert group.label == "imp (diverged at an unknown point)", group.label
    rerun(run_dir)  # the checkpoint says finished: the rerun reports, and the stale record goes
    assert not files.diverged.exists()
    (group,) = group_runs(find_runs(run_dir)[0])
    assert group.label == "imp", group.label


@pytest.mark.slow
def test_the_report_takes_the_checkpoints_rounds_over_an_edited_rounds_json(finished_run, tmp_path, caplog):
    run_dir = copy_of(finished_run, tmp_path)
    files = RunFiles(run_dir)
    truth = read_rounds(run_dir)
    edited = [{**row, "test_acc": 99.9} for row in truth]
    atomic_write_json(files.rounds, edited)
    ((run,), _) = find_runs(run_dir)
    assert [row["test_acc"] for row in run.rounds] == [row["test_acc"] for row in truth] != [99.9] * len(truth)
    assert f"{files.rounds} differs from the run's checkpoint: reported from the checkpoint" in caplog.text


@pytest.mark.slow
def test_a_rerun_rebuilds_a_damaged_last_weights_file_and_names_one_it_cannot(finished_run, tmp_path, caplog):
    from rsst.folder.checkpoint import file_sum, recorded_sums  # noqa: PLC0415

    run_dir = copy_of(finished_run, tmp_path)
    files = RunFiles(run_dir)
    last, earlier = files.weights(2), files.weights(1)
    good_last = torch.load(last, weights_only=True)
    last.write_bytes(os.urandom(4096))  # random bytes: before, a rerun checked only that the file existed
    shutil.copyfile(files.weights(0), earlier)  # another round's weights under round 1's name
    with caplog.at_level("WARNING", logger="rsst"):
        rerun(run_dir)
    text = caplog.text
    assert f"{last} is not the file the run wrote" in text and "rebuilt from the checkpoint" in text
    assert f"{earlier} is not the file the run wrote" in text and "does not hold that round's weights" in text
    rebuilt = torch.load(last, weights_only=True)
    assert rebuilt.keys() == good_last.keys() and all(torch.equal(rebuilt[k], good_last[k]) for k in rebuilt)
    assert recorded_sums(files.checkpoint)["weights/round_2.pt"] == file_sum(last)  # the new file's sum
    caplog.clear()
    with caplog.at_level("WARNING", logger="rsst"):
        rerun(run_dir)
    assert f"{last} is not" not in caplog.text and f"{earlier} is not the file the run wrote" in caplog.text


@pytest.mark.slow
def test_in_a_sweep_the_diverged_job_fails_alone(tmp_path):
    sweep = tmp_path / "sweep"
    proc = launch("-m", *FAST, "prune.rounds=1", "train.epochs=1", "optimizer.lr=0.05,1e4", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "1 of 2 jobs failed" in proc.stderr, proc.stderr[-2000:]
    finished = [p for p in sweep.iterdir() if (p / "rounds.json").is_file() and read_rounds(p)]
    assert len(finished) == 1 and finite_accuracies(read_rounds(finished[0]))
    summary = [line for line in proc.stderr.splitlines() if line.startswith("  #")]
    assert len(summary) == 1 and "optimizer.lr=10000.0: training diverged at round 0, epoch 1" in summary[0]


# -- Ctrl-C -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_ends_the_run_in_one_line_exit_130_ignores_a_second_and_the_same_command_resumes(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    args = [*FINISHED_ARGS, f"paths.run_dir={run_dir}"]
    # A real SIGINT, sent by the process to itself once round 1's first epoch is saved (a kill point), so the
    # interrupt lands mid-run however fast the machine is.
    # SIGINT restored to its default first: a shell starts background jobs with it ignored, and Python then
    # never turns it into KeyboardInterrupt (a terminal's Ctrl-C reaches a foreground run with the default).
    # A second SIGINT follows as the run ends (the `interrupted` kill point): it is ignored, not a traceback.
    kills = "epoch_saved:1:ticket:0,interrupted"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RSST_KILL_AT": kills, "RSST_KILL_SIGNAL": "INT"}
    proc = subprocess.run(
        [sys.executable, "launch.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(r"interrupted at round \d, epoch \d; the same command resumes", lines[0]), (
        err
    )
    assert lines[0] in RunFiles(run_dir).log.read_text()
    assert not list(run_dir.rglob("*.rsst-tmp-*"))

    resumed = launch(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    comparable = [{k: v for k, v in row.items() if k != "seconds"} for row in read_rounds(run_dir)]
    assert comparable == [{k: v for k, v in row.items() if k != "seconds"} for row in read_rounds(finished_run)]


# -- one line instead of a traceback, for the received files the loop and the report read --------------------


def test_a_provenance_record_replaced_by_another_json_value_is_begun_anew(tmp_path):
    from rsst.folder import provenance

    files = RunFiles(tmp_path)
    files.provenance.write_text("[1, 2]\n")
    provenance.record_start(tmp_path, torch.device("cpu"), resumed=True)
    record = json.loads(files.provenance.read_text())
    assert isinstance(record, dict) and len(record["starts"]) == 1


def test_a_rounds_json_nested_too_deeply_is_skipped_not_a_recursion_error(tmp_path):
    from rsst.commands.report import Skip
    from rsst.commands.report import read_rounds as report_rounds

    path = tmp_path / "rounds.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(Skip, match="nested too deeply"):
        report_rounds(path)


@pytest.mark.slow
def test_a_one_shot_runs_unreadable_dense_weights_are_one_line_not_a_traceback(tmp_path):
    root = tmp_path / "runs"
    args = [*FAST, "struct=omp", "prune.rounds=3", "train.amp=off", f"paths.root={root}"]
    killed = launch(*args, env={"RSST_KILL_AT": "epoch_saved:1:ticket:0"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    RunFiles(run_dir).weights(0).write_bytes(os.urandom(4096))
    proc = launch(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{RunFiles(run_dir).weights(0)}: not a file torch.save wrote") and "round 0" in line, line
