"""Sweeps through the submitit Slurm launcher against a real one-node Slurm cluster on this machine.

The cluster is started by ``scripts/slurm_local.sh`` (CI installs the Debian packages). These
tests skip only where the Slurm binaries are absent.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import FAST, ROOT, read_rounds

from rsst.commands.report import report

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("slurm"),  # one worker drives the one-node cluster
    pytest.mark.skipif(
        not all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")),
        reason="Slurm binaries are absent (bash scripts/slurm_local.sh install provides them)",
    ),
]

SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.timeout_min=15",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.mem_gb=1",
]


SCRIPT = ROOT / "scripts" / "slurm_local.sh"


@pytest.fixture(scope="module")
def slurm_env():
    subprocess.run(["bash", str(SCRIPT), "start"], check=True, capture_output=True, text=True, timeout=120)
    conf = subprocess.run(["bash", str(SCRIPT), "conf"], check=True, capture_output=True, text=True).stdout.strip()
    env = {**os.environ, "SLURM_CONF": conf, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    yield env


def sweep(env, sweep_dir: Path, *args: str, wait: bool = True, base: tuple[str, ...] = tuple(FAST)) -> subprocess.Popen:
    cmd = [sys.executable, "launch.py", "-m", *SLURM, *base, f"hydra.sweep.dir={sweep_dir}", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]
    return proc


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / "config.yaml").exists())


MUNGE_RUN = Path("/run/munge")
MUNGE_LOG = Path("/var/log/munge/munged.log")


def munged_pids() -> list[int]:
    """The live (not zombie) munged processes."""
    out = subprocess.run(["ps", "-C", "munged", "-o", "pid=,stat="], capture_output=True, text=True).stdout
    return [int(pid) for pid, stat in (line.split() for line in out.splitlines()) if not stat.startswith("Z")]


def end(pid: int, sig: signal.Signals) -> None:
    os.kill(pid, sig)
    deadline = time.time() + 20
    while pid in munged_pids():
        assert time.time() < deadline, f"munged {pid} outlived {sig.name}"
        time.sleep(0.1)


@pytest.mark.skipif(os.geteuid() != 0, reason="it runs munged as root, where the leftovers it tests come from")
def test_start_recovers_from_what_a_munged_run_as_root_left_behind(slurm_env):
    """A munged started by root and killed leaves a root-owned log, pid file, socket and lock, which a munged running as
    the munge user can neither open nor replace: start takes them over and the cluster answers again."""
    for pid in munged_pids():  # the cluster's own munged, which runs as munge
        end(pid, signal.SIGTERM)
    MUNGE_LOG.unlink(missing_ok=True)  # the first munged of a machine, run as root, creates its log as root's
    subprocess.run(["munged", "--force"], check=True, capture_output=True, timeout=30)
    (root_munged,) = munged_pids()
    end(root_munged, signal.SIGKILL)  # killed, it removes nothing
    left = [MUNGE_LOG, MUNGE_RUN / "munged.pid", MUNGE_RUN / "munge.socket.2", MUNGE_RUN / "munge.socket.2.lock"]
    assert [path.lstat().st_uid for path in left] == [0, 0, 0, 0]
    proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    munge_uid = pwd.getpwnam("munge").pw_uid
    (pid,) = munged_pids()
    assert Path(f"/proc/{pid}").stat().st_uid == munge_uid and MUNGE_LOG.stat().st_uid == munge_uid
    credential = subprocess.run(["munge", "-n"], capture_output=True, check=True, timeout=10).stdout
    assert subprocess.run(["unmunge"], input=credential, capture_output=True, timeout=10).returncode == 0
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], env=slurm_env, capture_output=True, text=True, timeout=30)
    assert states.stdout.split() and set(states.stdout.split()) <= {"idle", "mixed", "allocated"}, states


def test_a_2x2_grid_on_slurm_finishes_and_reports_four_rows(slurm_env, tmp_path):
    sweep_dir = tmp_path / "grid"
    sweep(
        slurm_env,
        sweep_dir,
        "struct=imp",
        "prune.rounds=2",
        "train.epochs=1",
        "prune.rate=0.2,0.5",
        "optimizer.lr=0.05,0.1",
    )
    dirs = run_dirs(sweep_dir)
    assert len(dirs) == 4
    for d in dirs:
        assert len(read_rounds(d)) == 2
    result = report(sweep_dir)
    assert len(result["groups"]) == 4
    assert result["markdown"].count("\n") == 2 + 4 - 1


def test_a_job_failing_on_the_cluster_is_listed_by_its_own_sweep(slurm_env, tmp_path):
    """The job writes its failure under the sweep's id, which reaches it through the environment sbatch exports."""
    sweep_dir = tmp_path / "grid"
    args = ("struct=imp", "prune.rounds=2", "train.epochs=1", "arch.width=8,100000")  # the wide one fails to allocate
    proc = sweep(slurm_env, sweep_dir, *args, wait=False)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-4000:]
    assert "1 of 2 jobs failed" in out, out[-4000:]
    summary = [line for line in out.splitlines() if line.startswith("  #")]
    assert len(summary) == 1 and summary[0].startswith("  #1 ") and "arch.width=100000" in summary[0], summary
    assert [len(read_rounds(d)) for d in run_dirs(sweep_dir) if (d / "rounds.json").is_file()] == [2]


def test_a_search_on_slurm_runs_a_batch_of_trials_as_jobs_and_its_rerun_submits_nothing(slurm_env, tmp_path):
    sweep_dir = tmp_path / "search"
    args = ("hparams_search=rsst_lambda", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "prune.rounds=2",
            "train.epochs=1")  # fmt: skip
    sweep(slurm_env, sweep_dir, *args)
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 2} and len(results["best_params"]) == 3
    tasks = array_tasks(sweep_dir)
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1  # the batch: one array, a task a trial
    assert len(run_dirs(sweep_dir)) == 2
    best = Path(results["best_run_dir"])
    assert best.parent == sweep_dir and results["best_value"] == read_rounds(best)[1]["best_val_acc"]
    sweep(slurm_env, sweep_dir, *args)
    assert array_tasks(sweep_dir) == tasks  # the study is complete: nothing was submitted again


def array_tasks(sweep_dir: Path) -> list[str]:
    """The Slurm array tasks submitit ran for a sweep (``<job>_<task>``)."""
    return sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"[0-9]+_[0-9]+", p.name))


def epochs_done(run_dir_parent: Path) -> int:
    for metrics in run_dir_parent.glob("*/metrics.csv"):
        return max(0, len(metrics.read_text().strip().splitlines()) - 1)
    return 0


def job_ids(sweep_dir: Path) -> list[str]:
    sub = sweep_dir / ".submitit"
    return sorted(p.name for p in sub.iterdir() if p.is_dir() and p.name.isdigit()) if sub.exists() else []


def start_requeued_job_now(job: str, env: dict, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Slurm holds a requeued job back for a couple of minutes (reason BeginTime); release it early.

    Not at once: slurmd revokes the old run's credential at the requeue, with one-second
    resolution, and refuses ("Job credential revoked") a restart whose new credential was
    issued within that same second. Two seconds later the restart is accepted.
    """
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], env=env, capture_output=True, text=True)
        if state.stdout.split()[:2] == ["PENDING", "BeginTime"]:
            time.sleep(2)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)
            return
        time.sleep(0.2)
    if proc.poll() is not None:  # Slurm restarted the requeued job without a hold and it finished; the caller
        return  # checks that it resumed ("resuming" in run.log) to the same rounds
    raise AssertionError(f"job {job} was not requeued within {timeout}s")


# 18 epochs: SIGUSR2 after epoch 4, a requeue after epoch 9. Width 32 (not FAST's 8): the 9 epochs left must outlast the
# requeue on a fast CPU (submitit bypasses the SIGTERM of a requeue; the kill comes KillWait = 2 s later)
PREEMPT_ARGS = ["struct=imp", "prune.rounds=6", "train.epochs=3", "seed=3", "arch.width=32"]
EPOCHS = 18


@pytest.fixture(scope="module")
def uninterrupted(slurm_env, tmp_path_factory):
    """rounds.json of the job below when nothing interrupts it (one Slurm job)."""
    straight = tmp_path_factory.mktemp("straight")
    sweep(slurm_env, straight, *PREEMPT_ARGS)
    return read_rounds(run_dirs(straight)[0])


def wait_for_epochs(hit: Path, proc: subprocess.Popen, count: int, resumes: int) -> None:
    """Until ``count`` epochs are in metrics.csv and the job has resumed ``resumes`` times (it is running)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        logs = list(hit.glob("*/run.log"))
        if epochs_done(hit) >= count and logs and logs[0].read_text().count("resuming") >= resumes:
            return
        time.sleep(0.05)
    raise AssertionError(f"the job finished or stalled before epoch {count} (exit {proc.poll()})")


def test_a_job_preempted_by_usr2_and_then_requeued_resumes_to_the_same_rounds_json(slurm_env, uninterrupted, tmp_path):
    """Both ways a cluster interrupts a job, one after the other in one job: the uninterrupted job's rounds."""
    hit = tmp_path / "hit"
    proc = sweep(slurm_env, hit, *PREEMPT_ARGS, wait=False)
    wait_for_epochs(hit, proc, 4, resumes=0)
    (job,) = job_ids(hit)
    # what Slurm sends signal_delay_s before the time limit: the epoch finishes and is saved, then submitit requeues
    subprocess.run(["scancel", "--signal=USR2", job], env=slurm_env, check=True)
    start_requeued_job_now(job, slurm_env, proc)
    wait_for_epochs(hit, proc, 9, resumes=1)
    # an administrator's or a preemption's requeue: the job is killed mid-epoch and started again
    subprocess.run(["scontrol", "requeue", job], env=slurm_env, check=True)
    start_requeued_job_now(job, slurm_env, proc)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    run_dir = run_dirs(hit)[0]
    log = (run_dir / "run.log").read_text()
    assert log.count("resuming") == 2, log[-3000:]
    before, between, _ = log.split("resuming")
    assert "received SIGUSR2" in before and "checkpoint saved; handing SIGUSR2 to the launcher" in before
    assert "SIGUSR2" not in between  # the requeue was a kill, not a signal the run saw
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_rounds(run_dir)) == strip(uninterrupted)
    assert epochs_done(hit) == EPOCHS


def test_one_run_over_two_slurm_tasks_trains_as_one_process_group(slurm_env, tmp_path):
    """``hydra.launcher.tasks_per_node=2``: both tasks join one gloo group through submitit's variables."""
    sweep_dir = tmp_path / "ddp"
    lenet = ["arch=lenet_300_100", "prune.include_fc=true", "struct=imp", "prune.rounds=2"]
    tasks = ["hydra.launcher.tasks_per_node=2", "hydra.launcher.mem_gb=2"]
    sweep(slurm_env, sweep_dir, *lenet, *tasks, base=tuple(FAST[1:]))
    (run,) = run_dirs(sweep_dir)
    assert [row["round"] for row in read_rounds(run)] == [0, 1]
    processes = json.loads((run / "provenance.json").read_text())["processes"]
    assert (processes["world_size"], processes["backend"], processes["launcher"]) == (2, "gloo", "slurm")
    log = (run / "run.log").read_text()
    assert log.count("new run in") == 1
    assert "round 1 end: weights, buffers and masks identical on 2 processes" in log
    masks = torch.load(run / "masks" / "round_1.pt", weights_only=True)
    weights = torch.load(run / "weights" / "round_1.pt", weights_only=True)
    assert all(int((weights[n][~m] != 0).sum()) == 0 for n, m in masks.items())
