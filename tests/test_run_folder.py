"""Records that cannot be lost or forged: one writer per folder, repair from the checkpoint, safe loading.

Each test reproduces a failure a user can cause on a cluster (a node dying at an unlucky moment,
two jobs on one folder, a folder or file received from someone else) and asserts what is on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import FAST, FINISHED_ARGS, ROOT, compose_config, launch, python, read_rounds
from omegaconf import OmegaConf

from rsst import run
from rsst.folder.checkpoint import CheckpointError
from rsst.folder.lock import RunLockedError
from rsst.folder.naming import RunFolderError, config_hash, read_verified_config
from rsst.folder.tickets import load_masks
from rsst.loop.run import resolve_precision
from rsst.pruning.masks import Masks

ARGS = FINISHED_ARGS


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def rows_of_csv(path: Path) -> list[list[str]]:
    """metrics.csv without its wall-clock column."""
    lines = [line.split(",") for line in path.read_text().splitlines()]
    drop = lines[0].index("seconds")
    return [[c for i, c in enumerate(line) if i != drop] for line in lines]


def without_paths(config_yaml: Path) -> dict:
    cfg = yaml.safe_load(config_yaml.read_text())
    cfg.pop("paths")
    return cfg


@pytest.fixture
def finished(finished_run) -> Path:
    """The reference the repaired folders must equal: the session's finished run (``ARGS``)."""
    return finished_run


def copy_of(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def rerun(run_dir: Path, *overrides: str) -> dict:
    return run(compose_config([*ARGS, f"paths.run_dir={run_dir}", *overrides]))


def one_error_line(proc: subprocess.CompletedProcess, needle: str) -> str:
    """The run's error: exit 2, no traceback, and the one line of output that holds ``needle``."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if needle in line]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    return lines[0]


@pytest.mark.slow
def test_a_kill_between_the_final_checkpoint_and_rounds_json_is_repaired_by_the_rerun(finished, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "RSST_KILL_AT": "round_saved:2", "WANDB_MODE": "offline"}
    proc = python("launch.py", *ARGS, f"paths.run_dir={run_dir}", env=env)
    assert proc.returncode == -9  # killed by the kill point, after checkpoint.pt recorded round 2
    assert len(read_rounds(run_dir)) == 2  # the crash window: rounds.json one row short

    again = launch(*ARGS, f"paths.run_dir={run_dir}")
    assert again.returncode == 0, again.stdout[-2000:]
    assert "resuming" in again.stdout and "epoch 1/1" not in again.stderr  # repaired without training
    assert comparable(read_rounds(run_dir)) == comparable(read_rounds(finished))
    assert rows_of_csv(run_dir / "metrics.csv") == rows_of_csv(finished / "metrics.csv")
    for r in range(3):
        assert Masks(load_masks(run_dir / "masks" / f"round_{r}.pt")).equal(
            Masks(load_masks(finished / "masks" / f"round_{r}.pt"))
        )


@pytest.mark.slow
def test_missing_or_corrupt_files_are_rebuilt_from_the_checkpoint_and_temporaries_removed(finished, tmp_path, caplog):
    run_dir = copy_of(finished, tmp_path)
    (run_dir / "masks" / "round_1.pt").unlink()
    (run_dir / "masks" / "round_2.pt").write_bytes(b"garbage")
    (run_dir / "weights" / "round_2.pt").unlink()  # the last round: the checkpoint's model holds it
    (run_dir / "metrics.csv").unlink()
    (run_dir / "rounds.json").write_text('[{"round": 0')
    (run_dir / "config.yaml").write_text("seed: 99\n")
    leftover = run_dir / ".checkpoint.pt.rsst-tmp-4242-0123456789abcdef"  # the atomic writes' own temporary names
    leftover.write_bytes(os.urandom(4 << 20))
    (run_dir / "masks" / ".round_1.pt.rsst-tmp-4242-00000000deadbeef").write_bytes(b"half")

    with caplog.at_level("WARNING"):
        rerun(run_dir)

    rewritten = [r.getMessage() for r in caplog.records if "config.yaml" in r.getMessage()]
    assert rewritten == [
        f"{run_dir / 'config.yaml'} did not hold this run's config as written (edited, damaged, or "
        "from another rsst version that writes other keys at their neutral values): rewritten"
    ]
    assert not leftover.exists() and not (run_dir / "masks" / ".round_1.pt.rsst-tmp-4242-00000000deadbeef").exists()
    assert comparable(read_rounds(run_dir)) == comparable(read_rounds(finished))
    assert rows_of_csv(run_dir / "metrics.csv") == rows_of_csv(finished / "metrics.csv")
    assert without_paths(run_dir / "config.yaml") == without_paths(finished / "config.yaml")
    for r in range(3):
        assert Masks(load_masks(run_dir / "masks" / f"round_{r}.pt")).equal(
            Masks(load_masks(finished / "masks" / f"round_{r}.pt"))
        )
    rebuilt = torch.load(run_dir / "weights" / "round_2.pt", weights_only=True)
    reference = torch.load(finished / "weights" / "round_2.pt", weights_only=True)
    assert rebuilt.keys() == reference.keys() and all(torch.equal(rebuilt[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_a_ticket_file_the_checkpoint_cannot_rebuild_is_named_in_a_warning(finished, tmp_path):
    run_dir = copy_of(finished, tmp_path)
    (run_dir / "weights" / "round_1.pt").unlink()  # an earlier round's weights are not in the checkpoint
    rerun(run_dir)
    log = (run_dir / "run.log").read_text()
    assert f"WARNING {run_dir / 'weights' / 'round_1.pt'} is missing and cannot be rebuilt" in log


@pytest.mark.slow
def test_a_second_process_on_the_same_folder_stops_at_once_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    long_run = [*FAST, "struct=imp", "prune.rounds=1", "train.epochs=200", f"paths.run_dir={run_dir}"]
    # The holder stops itself (SIGSTOP, a kill point) once its first epoch is saved: it holds the lock mid-run
    # for as long as the test needs, without training beside the second processes.
    env = {**os.environ, "RSST_KILL_AT": "epoch_saved:0:ticket:0", "RSST_KILL_SIGNAL": "STOP"}
    holder = subprocess.Popen([sys.executable, "launch.py", *long_run], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and holder.poll() is None and process_state(holder.pid) != "T":
            time.sleep(0.05)
        assert process_state(holder.pid) == "T", "the first run did not reach its first saved epoch"
        for second in (long_run, [*long_run, "seed=1"]):  # the same config, and another config
            line = one_error_line(launch(*second), f"{run_dir} is in use by another run")
            assert f"pid {holder.pid}, started 20" in line and "host " in line, line
        log = (run_dir / "run.log").read_text()
        assert log.count("new run in") == 1  # the second process wrote nothing into the folder's log
    finally:
        holder.kill()
        holder.wait()


def process_state(pid: int) -> str:
    """The state letter of ``/proc/PID/stat`` (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.slow
def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    code = f"from rsst.folder.lock import RunLock; import time; RunLock({str(tmp_path)!r}).acquire(); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline and not ((tmp_path / ".lock").exists() and (tmp_path / ".lock").read_text()):
        time.sleep(0.05)
    from rsst.folder.lock import RunLock

    with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
        RunLock(tmp_path).acquire()
    proc.kill()
    proc.wait()
    lock = RunLock(tmp_path)
    lock.acquire()  # kill -9 left no stale lock
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.slow
def test_a_new_run_in_a_folder_holding_another_config_is_refused_naming_both_hashes(finished, tmp_path):
    run_dir = copy_of(finished, tmp_path)
    other = compose_config([*ARGS, f"paths.run_dir={run_dir}", "seed=1"])
    with pytest.raises(CheckpointError) as err:
        run(other)
    theirs = torch.load(run_dir / "checkpoint.pt", weights_only=True)["config_hash"]
    ours = config_hash(resolve_precision(other)[0])
    assert theirs in str(err.value) and ours in str(err.value) and "seed: 0 there, 1 here" in str(err.value)

    (run_dir / "checkpoint.pt").unlink()  # a folder killed before its first checkpoint: config.yaml decides
    with pytest.raises(RunFolderError, match=f"config {theirs}; this run is config {ours}"):
        run(other)


def test_an_edited_config_yaml_is_refused_by_the_verified_reader(tmp_path):
    cfg = compose_config([*ARGS, f"paths.run_dir={tmp_path}"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.save({"format_version": 1, "config_hash": config_hash(cfg)}, tmp_path / "checkpoint.pt")
    assert read_verified_config(tmp_path)["seed"] == 0
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True).replace("width: 8", "width: 64"))
    with pytest.raises(RunFolderError, match="was edited: it hashes to"):
        read_verified_config(tmp_path)


class Payload:
    """A pickle that would create ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_a_code_payload_is_refused_without_running_it(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "EXECUTED"
    cfg = compose_config([*ARGS, f"paths.run_dir={run_dir}"])
    run_dir.mkdir()
    torch.save({"format_version": 1, "config_hash": config_hash(cfg), "x": Payload(marker)}, run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=f"checkpoint {run_dir / 'checkpoint.pt'} is unreadable"):
        run(cfg)
    assert not marker.exists()


def test_a_target_with_a_path_traversal_creates_nothing_anywhere(tmp_path):
    root = tmp_path / "root"
    cfg = compose_config([*ARGS, f"paths.root={root}", "struct._target_=x./../../escaped/ESCAPED"])
    with pytest.raises(Exception, match="struct"):
        run(cfg)
    assert list(tmp_path.iterdir()) == []  # neither the root nor anything outside it


def test_run_folder_names_use_only_safe_characters_and_stay_inside_the_root(tmp_path):
    from rsst.folder.naming import run_directory

    cfg = compose_config([*ARGS, f"paths.root={tmp_path}", "arch._target_=a.b/../../c d.Evil$Name"])
    run_dir = run_directory(cfg)
    assert run_dir.parent == tmp_path
    assert all(c.isalnum() or c in "_.-" for c in run_dir.name), run_dir.name


BAD_VALUES = [
    (["device=cuda"], "device='cuda' is not available on this machine: it has cpu"),
    (["device=cuda:7"], "device='cuda:7' is not available on this machine: it has cpu"),
    (["optimizer.momentum=-1"], "optimizer.momentum=-1 is invalid: expected a number in [0, 1)"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1 is invalid: expected a finite number >= 0"),
    (["optimizer.nesterov=true", "optimizer.momentum=0"], "optimizer.nesterov=true is invalid with"),
    (["arch.width=0"], "arch.width=0 is invalid: expected an integer >= 1"),
    (["dataset.val_size=-5"], "dataset.val_size=-5 is invalid: expected an integer >= 1"),
    (["prune.rounds=0"], "prune.rounds=0 is invalid"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_a_bad_value_is_one_error_naming_it_before_anything_is_written(tmp_path, overrides, message):
    if overrides[0].startswith("device=cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA devices")
    from rsst.config.checks import ConfigError

    cfg = compose_config([*ARGS, f"paths.root={tmp_path / 'root'}", *overrides])
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "root").exists()


@pytest.mark.slow
def test_the_command_line_shows_a_bad_value_as_one_line_and_exit_2(tmp_path):
    line = one_error_line(launch(*ARGS, f"paths.root={tmp_path / 'root'}", "optimizer.momentum=-1"), "momentum")
    assert line == "optimizer.momentum=-1 is invalid: expected a number in [0, 1)"
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"PK\x03\x04garbage"], ids=["empty", "text", "zip"])
def test_an_unusable_pretrained_file_is_one_error_naming_it(tmp_path, content):
    from rsst.config.checks import ConfigError

    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    cfg = compose_config(
        [*ARGS, f"paths.root={tmp_path / 'root'}", "prune.rewind=pretrained", f"prune.pretrained={path}"]
    )
    with pytest.raises(ConfigError, match=f"prune.pretrained='{path}'"):
        run(cfg)
    assert not (tmp_path / "root").exists()


def test_a_resnet32_state_dict_given_to_a_resnet20_run_is_refused_listing_extra_keys(tmp_path):
    from hydra.utils import instantiate

    from rsst.config.checks import ConfigError

    r32 = instantiate(compose_config(["arch=resnet32"]).arch)(num_classes=10, in_channels=1, image_size=8)
    path = tmp_path / "resnet32.pt"
    torch.save(r32.state_dict(), path)
    cfg = compose_config(
        ["arch.width=16", "progress=false", f"paths.root={tmp_path / 'root'}", "prune.rewind=pretrained"]
        + [f"prune.pretrained={path}"]
    )
    with pytest.raises(ConfigError, match=r"layer1\.3\.") as err:
        run(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "root").exists()


def _can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs at ``tmp_path/mnt`` (root only), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(size: str, *options: str) -> Path:
        opts = ",".join([f"size={size}", *options])
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True).returncode:
            pytest.skip("this machine does not let the tests mount a tmpfs")
        mounted.append(mnt)
        return mnt

    yield mount
    for m in mounted:
        subprocess.run(["umount", str(m)], capture_output=True)


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root to mount a small tmpfs")
def test_a_full_disk_is_one_error_naming_the_file_and_the_reason(tmpfs):
    mnt = tmpfs("700k")
    line = one_error_line(launch(*ARGS, f"paths.run_dir={mnt / 'run'}"), "cannot write")
    assert f"cannot write {mnt / 'run'}" in line and "no space left on the device [ENOSPC]" in line, line


@pytest.mark.slow
def test_a_file_size_limit_is_one_error_naming_the_file_and_the_reason(tmp_path):
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))  # the checkpoint is about 1 MB

    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "launch.py", *ARGS, f"paths.run_dir={tmp_path / 'run'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )
    line = one_error_line(proc, "cannot write")
    assert f"cannot write {tmp_path / 'run' / 'checkpoint.pt'}" in line and "file-size limit" in line, line


@pytest.mark.slow
def test_a_read_only_run_folder_is_one_error_naming_it(finished, tmp_path, tmpfs):
    if _can_mount_tmpfs():
        mnt = tmpfs("64m")
        shutil.copytree(finished, mnt / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        reason = "read-only [EROFS]"
    else:
        mnt = tmp_path
        shutil.copytree(finished, mnt / "run")
        for p in [mnt / "run", *(mnt / "run").rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        reason = "permission denied"
    line = one_error_line(launch(*ARGS, f"paths.run_dir={mnt / 'run'}"), reason)
    assert str(mnt / "run") in line, line


@pytest.mark.slow
def test_one_invalid_job_fails_alone_and_the_sweep_ends_with_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    args = [*FAST, "struct=imp", "prune.rounds=2", "train.epochs=1"]
    proc = launch("-m", *args, "prune.rate=1.5,0.3", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    finished_runs = [p for p in sweep.iterdir() if (p / "rounds.json").exists()]
    assert len(finished_runs) == 1 and len(read_rounds(finished_runs[0])) == 2  # the valid job ran to the end
    assert "1 of 2 jobs failed" in proc.stderr
    assert "prune.rounds=2 prune.rate=1.5: prune.rate=1.5 is invalid" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_slurm_sweep_with_an_invalid_job_is_refused_before_anything_is_queued(tmp_path):
    sweep = tmp_path / "sweep"
    start = time.time()
    proc = launch("-m", *ARGS, "hydra/launcher=slurm", "prune.rate=0.3,1.5,0.2", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 of 3 jobs have an invalid config; nothing was submitted" in proc.stderr
    assert "prune.rate=1.5: prune.rate=1.5 is invalid" in proc.stderr and "#1 " in proc.stderr
    assert not (sweep / ".submitit").exists()
    assert time.time() - start < 60


def test_provenance_records_code_versions_device_host_and_command(finished):
    prov = json.loads((finished / "provenance.json").read_text())
    assert set(prov["versions"]) >= {"python", "torch", "torchvision", "hydra-core", "omegaconf", "submitit", "wandb"}
    assert prov["versions"]["torch"] in (torch.__version__, torch.__version__.split("+")[0])
    assert prov["device"]["type"] == "cpu" and prov["device"]["name"]
    assert prov["host"] and "launch.py" in " ".join(prov["command"])
    assert prov["precision"]["resolved"] in ("off", "bf16") and prov["precision"]["requested"] == "auto"
    assert (prov["git"] is None) or len(prov["git"]["commit"]) == 40
    assert prov["config_hash"] == torch.load(finished / "checkpoint.pt", weights_only=True)["config_hash"]
    assert [s["host"] for s in prov["starts"]] == [prov["host"]]  # one start: the run was never resumed


@pytest.mark.slow
def test_two_sweeps_started_together_into_one_folder_each_report_only_their_own_failed_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = [*FAST, "struct=imp", "prune.rounds=2", "train.epochs=1", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "launch.py", "-m", *args]
    both = [  # started in the same second: one sweep of a valid job, one whose two jobs break a rule
        subprocess.Popen([*cmd, "seed=1"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        subprocess.Popen(
            [*cmd, "seed=3", "prune.rate=1.5,2.5"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ),
    ]
    (good_out, good_err), (bad_out, bad_err) = (p.communicate(timeout=300) for p in both)
    good_err, bad_err = good_err.decode(), bad_err.decode()
    assert both[0].returncode == 0 and "jobs failed" not in good_err, good_err[-2000:]
    assert both[1].returncode == 1 and "2 of 2 jobs failed" in bad_err, bad_err[-2000:]
    summary = [line for line in bad_err.splitlines() if line.startswith("  #")]
    assert len(summary) == 2 and all("prune.rate=" in line and "is invalid" in line for line in summary), summary
    assert sum(1 for p in sweep.iterdir() if (p / "rounds.json").is_file()) == 1  # the valid sweep's run
    assert not (sweep / ".failed").exists()  # each sweep removed its own records once it had listed them
