"""One run over two processes: ``torchrun --nproc-per-node 2 launch.py ...`` with gloo on the CPU.

Two shared sets of runs (trained once per test worker):

- ``lenet_runs``: LeNet-300-100 (no BatchNorm, so training is not chaotic at this length) under
  IMP, rewound to step 10 of round 0 with the stability copies, once with 2 processes and once
  with 1, on the same global batch. The 2-process run must reproduce the 1-process run up to
  floating-point summation order (each rank sums its shard's gradient, gloo sums the two), which
  moves weights by ~1e-4 over two epochs here.
- ``resnet_runs``: ResNet-20 (BatchNorm over the global batch) under RSST with 2 processes:
  uninterrupted; killed after its first epoch of round 1 and rerun with 2 processes; and the
  same checkpoint resumed with 1 process.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import FAST, ROOT, only_run_dir, python, read_rounds

pytestmark = pytest.mark.slow  # conftest.py sends the tests of each shared set of runs to one worker

LAUNCH_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR", "RSST_KILL_AT",
    "RSST_KILL_RANK", "RSST_KILL_SIGNAL",
)  # fmt: skip
# fp32: the properties below are fp32 ones (auto is bf16 on a CPU with AMX, where 1 and 2 processes round apart)
LENET = ["arch=lenet_300_100", "prune.include_fc=true", "struct=imp", "prune.rounds=2", "train.amp=off", *FAST[1:]]
# rewound to a step inside round 0's first epoch (23 steps), with a stability copy of each round
LENET += ["prune.rewind=step", "prune.rewind_step=10", "prune.stability=true"]
# Batches of 256: 6 steps an epoch (the last, of 157 images, split 79/78) instead of 23, each with a collective per
# BatchNorm layer, forward and backward; the properties below do not depend on the number of steps.
# The penalty on whole channels (conv weights and BatchNorm gamma), so that it is checked across processes too.
RESNET = [
    *FAST,
    "struct=rsst",
    "struct.penalty_scope=channels",
    "prune.rounds=2",
    "train.amp=off",
    "train.batch_size=256",
]
KILL_AT = "epoch_saved:1:ticket:0"  # round 1's first epoch is saved, its second is not trained
WEIGHT_TOLERANCE = 1e-3  # |w_2proc - w_1proc|: summation order only (measured 1.3e-4 after round 0, 4e-7 after round 1)


def start(
    root: Path, args: list[str], processes: int, kill_at: str | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``launch.py`` in ``processes`` processes (torchrun for more than one) with its runs under ``root``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **(extra_env or {})}
    if kill_at:
        env["RSST_KILL_AT"] = kill_at
    if processes == 1:
        return python("launch.py", *args, f"paths.root={root}", env=env, timeout=600)
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    cmd = [*prefix, "launch.py", *args, f"paths.root={root}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def finished(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="session")
def lenet_runs(tmp_path_factory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("lenet")
    dirs = {}
    for processes in (2, 1):
        finished(start(base / f"p{processes}", LENET, processes))
        dirs[processes] = only_run_dir(base / f"p{processes}")
    return dirs


@pytest.fixture(scope="session")
def resnet_runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("resnet")
    finished(start(base / "whole", RESNET, 2))
    killed = start(base / "killed", RESNET, 2, kill_at=KILL_AT)
    assert killed.returncode != 0, "the kill point was not reached"
    killed_dir = only_run_dir(base / "killed")
    shutil.copytree(base / "killed", base / "one")  # the same checkpoint, resumed by 1 process below
    assert (killed_dir / "checkpoint.pt").is_file()
    log = {"resumed": finished(start(base / "killed", RESNET, 2)), "one": finished(start(base / "one", RESNET, 1))}
    return {
        "whole": only_run_dir(base / "whole"),
        "resumed": killed_dir,
        "one": only_run_dir(base / "one"),
        "log": log,  # type: ignore[dict-item]
    }


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_two_processes_train_the_one_process_run_up_to_summation_order(lenet_runs):
    two, one = metrics(lenet_runs[2]), metrics(lenet_runs[1])
    assert len(two) == len(one) == 8  # 2 rounds and their 2 copies x 2 epochs (the first from step 10)
    for a, b in zip(two, one, strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-4)
        # accuracies over the reduced counts: equal unless a prediction flips (one sample is 0.56 points here)
        for key in ("train_acc", "val_acc", "test_acc"):
            assert abs(float(a[key]) - float(b[key])) < 0.6, (key, a, b)
    for r in (0, 1):
        w2, w1 = (tensors(lenet_runs[p] / "weights" / f"round_{r}.pt") for p in (2, 1))
        assert max(float((w2[k] - w1[k]).abs().max()) for k in w1) < WEIGHT_TOLERANCE


def test_the_two_process_ticket_is_the_one_process_ticket(lenet_runs):
    """The round-1 ticket is ranked on round 0's weights, which differ by summation order only: any
    differing mask entry must lie within that difference of the pruning threshold (measured: none)."""
    m2 = tensors(lenet_runs[2] / "masks" / "round_1.pt")
    m1 = tensors(lenet_runs[1] / "masks" / "round_1.pt")
    dense = tensors(lenet_runs[1] / "weights" / "round_0.pt")
    dense2 = tensors(lenet_runs[2] / "weights" / "round_0.pt")
    gap = max(float((dense2[k] - dense[k]).abs().max()) for k in m1)
    kept = torch.cat([dense[k][m1[k]].abs().flatten() for k in m1])
    threshold = float(kept.min())
    differing = torch.cat([dense[k][m1[k] != m2[k]].abs().flatten() for k in m1])
    total = sum(m.numel() for m in m1.values())
    assert len(differing) <= 1e-3 * total, f"{len(differing)} of {total} mask entries differ"
    assert all(abs(float(w) - threshold) <= 2 * gap for w in differing), (differing, threshold, gap)
    assert float(torch.cat([m.flatten().float() for m in m2.values()]).mean()) == pytest.approx(0.8, abs=1e-3)


def test_two_processes_keep_the_one_process_rewind_point_and_stability_paths(lenet_runs):
    """Each rank takes the rewind point at step 10 of its own shards; the paths' points agree but where a
    prediction flips (one of 180 digits is 0.56 points)."""
    two, one = (tensors(lenet_runs[p] / "checkpoint.pt") for p in (2, 1))
    assert max(float((two["theta_rewind"][k] - one["theta_rewind"][k]).abs().max()) for k in one["theta_rewind"]) < 1e-4
    assert any(not torch.equal(one["theta_rewind"][k], one["theta_0"][k]) for k in one["theta_0"])  # taken, not init
    for a, b in zip(read_rounds(lenet_runs[2]), read_rounds(lenet_runs[1]), strict=True):
        for split in ("val", "test"):
            errors = zip(a["stability_curve"][f"{split}_error"], b["stability_curve"][f"{split}_error"], strict=True)
            assert all(abs(x - y) < 1.2 for x, y in errors), (split, a["stability_curve"], b["stability_curve"])


def test_pruned_weights_are_zero_and_rank_0_alone_wrote_the_records(lenet_runs):
    run = lenet_runs[2]
    for r in (0, 1):
        masks, weights = tensors(run / "masks" / f"round_{r}.pt"), tensors(run / "weights" / f"round_{r}.pt")
        assert all(int((weights[n][~m] != 0).sum()) == 0 for n, m in masks.items())
    assert [row["round"] for row in read_rounds(run)] == [0, 1]
    prov = json.loads((run / "provenance.json").read_text())
    assert len(prov["starts"]) == 1
    assert prov["processes"]["world_size"] == 2 and prov["processes"]["backend"] == "gloo"
    assert prov["processes"]["launcher"] == "torchrun" and len(prov["processes"]["hosts"]) == 1
    log = (run / "run.log").read_text()
    assert log.count("new run in") == 1  # one writer: rank 1 does not log into the run folder
    for check in ("round 0 end", "round 1 start", "round 1 end"):
        assert f"{check}: weights, buffers and masks identical on 2 processes" in log
    assert not any(".rsst-tmp-" in p.name for p in run.rglob("*"))


def test_a_killed_two_process_run_resumes_to_the_files_of_an_uninterrupted_one(resnet_runs):
    whole, resumed = resnet_runs["whole"], resnet_runs["resumed"]
    assert "resuming" in resnet_runs["log"]["resumed"] and "round 1, epoch 1" in resnet_runs["log"]["resumed"]
    assert without_time(read_rounds(resumed)) == without_time(read_rounds(whole))
    assert without_time(metrics(resumed)) == without_time(metrics(whole))
    for kind in ("masks", "weights"):
        for r in (0, 1):
            a, b = tensors(resumed / kind / f"round_{r}.pt"), tensors(whole / kind / f"round_{r}.pt")
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (kind, r)
    rows = read_rounds(whole)
    assert rows[1]["penalised_norm_start"] > 0  # RSST's penalty acted in the 2-process run
    assert 0 < rows[1]["penalised_gamma_end"] < rows[1]["penalised_gamma_start"]  # on the dropped channels' gamma too


def test_a_two_process_checkpoint_resumes_in_one_process(resnet_runs):
    one, whole = resnet_runs["one"], resnet_runs["whole"]
    assert "round 1, epoch 1" in resnet_runs["log"]["one"]
    rows, expected = read_rounds(one), read_rounds(whole)
    assert [r["round"] for r in rows] == [0, 1]
    assert without_time(rows[:1]) == without_time(expected[:1])  # round 0 finished before the kill
    # the round's penalised set and plan were decided by 2 processes before the kill and carried over
    assert rows[1]["penalised_norm_start"] == pytest.approx(expected[1]["penalised_norm_start"], rel=1e-6)
    assert rows[1]["penalised_gamma_start"] == pytest.approx(expected[1]["penalised_gamma_start"], rel=1e-6)
    starts = json.loads((one / "provenance.json").read_text())["starts"]
    assert [s["processes"]["world_size"] for s in starts] == [2, 1]
    masks, weights = tensors(one / "masks" / "round_1.pt"), tensors(one / "weights" / "round_1.pt")
    assert all(int((weights[n][~m] != 0).sum()) == 0 for n, m in masks.items())


def test_a_global_batch_that_does_not_split_over_the_processes_stops_before_anything_is_written(tmp_path):
    """The check runs before the process group is joined: one process of a 4-process torchrun world suffices."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env |= {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    cmd = [sys.executable, "launch.py", *LENET, "train.batch_size=6", f"paths.root={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "train.batch_size=6 does not split over 4 processes" in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_refusal_on_rank_0_stops_every_process_with_its_message(lenet_runs, tmp_path):
    """Rank 0 refuses a folder holding another config's run; rank 1 stops too instead of waiting for it."""
    folder = tmp_path / "foreign"
    folder.mkdir()
    for name in ("config.yaml", "rounds.json"):  # a run that trained: a folder with nothing trained is reused
        shutil.copy(lenet_runs[2] / name, folder / name)
    proc = start(tmp_path, [*LENET, "seed=1", f"paths.run_dir={folder}"], 2)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert out.count("holds another config's run") == 1, out[-3000:]
    assert "rank 1: another process of this run failed" in out
    assert (folder / "config.yaml").read_text() == (lenet_runs[2] / "config.yaml").read_text()  # untouched
    assert not (folder / "checkpoint.pt").exists() and not (folder / "masks").exists()


def test_a_stalled_rank_ends_the_run_within_its_timeout_with_one_line_naming_it(tmp_path):
    """Rank 1 stops itself (SIGSTOP: a hung node) once epoch 1 is saved; rank 0 waits ``collective_timeout_s``, not
    gloo's 30 minutes, names rank 1 and exits. (torchrun would then take 30 s to end the stopped rank: the test
    ends the process group itself once rank 0 is gone.)"""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    env |= {"RSST_KILL_AT": "epoch_saved:0:ticket:0", "RSST_KILL_SIGNAL": "STOP", "RSST_KILL_RANK": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "launch.py"]
    cmd += [*LENET, "seed=3", "collective_timeout_s=5", f"paths.root={tmp_path}"]
    line = (
        "rank 0: a collective waited collective_timeout_s=5 s; rank 1 of 2 stalled (stopped, or its node lost). "
        "The run stops; the same command resumes from the last saved epoch"
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    out, stopped_at, started = [], None, time.monotonic()
    try:
        for text in proc.stdout:  # until torchrun reports rank 0's exit, or the time is up
            out.append(text)
            if "collective_timeout_s" in text:
                stopped_at = time.monotonic()
            if "closing signal" in text or "exitcode" in text or time.monotonic() - started > 240:
                break
    finally:  # torchrun's SIGTERM waits on a stopped process: end the stalled rank, then torchrun
        stalled = [int(pid) for pid in re.findall(r"Sending process (\d+) closing signal", "".join(out))]
        for pid in stalled:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    log = "".join(out)
    assert len(stalled) == 1, log[-3000:]  # torchrun was ending rank 1 alone: rank 0 had exited
    assert [ln for ln in log.splitlines() if "collective_timeout_s" in ln] == [line], log[-3000:]
    # no frame of the project's code: the only traceback is torchrun's own report that a child failed
    assert f'File "{ROOT / "rsst"}' not in log and 'launch.py", line' not in log, log[-3000:]
    # the first epoch, the timeout and the grace period for the others to answer: well under gloo's 30 minutes
    assert stopped_at is not None and stopped_at - started < 60, stopped_at
    assert (only_run_dir(tmp_path) / "checkpoint.pt").is_file()  # the last saved epoch is kept: it resumes
