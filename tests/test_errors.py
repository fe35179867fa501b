"""One error type: every user-facing error is an ``RsstError``, and launch.py prints it on one line to stderr."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT, launch

from rsst.commands.export import ExportError, NothingToRemove
from rsst.commands.report import ReportError, Skip
from rsst.config.checks import ConfigError as ChecksConfigError
from rsst.config.registry import RefusedConfig
from rsst.data.cifar import RefusedGlobal
from rsst.data.files import CorruptDatasetError, DatasetError, DatasetNotFoundError
from rsst.errors import ConfigError, RsstError, one_line
from rsst.folder.atomic import RunIOError
from rsst.folder.checkpoint import CheckpointError
from rsst.folder.lock import RunLockedError
from rsst.folder.naming import RunFolderError
from rsst.folder.safeload import UnloadableFile
from rsst.parallel.dist import RanksDisagree
from rsst.parallel.fail_together import PeerFailed
from rsst.search.study import SearchError

# Each user-facing error and the built-in type it has always been (older ``except`` clauses still catch it).
USER_ERRORS = {
    ConfigError: ValueError,
    RunLockedError: RuntimeError,
    ReportError: Exception,
    ExportError: RuntimeError,
    NothingToRemove: ValueError,
    RunFolderError: RuntimeError,
    CheckpointError: RuntimeError,
    RefusedConfig: ValueError,
    DatasetError: ValueError,
    DatasetNotFoundError: ValueError,
    CorruptDatasetError: ValueError,
    RefusedGlobal: ValueError,
    RunIOError: OSError,
    PeerFailed: RuntimeError,
    RanksDisagree: RuntimeError,
    UnloadableFile: ValueError,
    SearchError: RuntimeError,
}


@pytest.mark.parametrize("cls", list(USER_ERRORS), ids=lambda c: c.__name__)
def test_every_user_facing_error_is_an_rsst_error_and_keeps_its_builtin_base(cls):
    assert issubclass(cls, RsstError)
    assert issubclass(cls, USER_ERRORS[cls])


def test_the_internal_skip_of_the_report_is_not_a_user_error():
    assert not issubclass(Skip, RsstError)  # caught inside the report: a run is skipped with a warning


def test_config_error_is_one_class_wherever_it_is_imported_from():
    assert ChecksConfigError is ConfigError


def test_a_run_io_error_is_still_an_os_error_with_its_errno():
    err = RunIOError(28, "cannot write x: no space left on the device [ENOSPC]")
    assert err.errno == 28 and err.strerror.startswith("cannot write x")


def test_one_line_joins_the_lines_of_a_message():
    assert one_line(ValueError("a: b\n  c\n\n")) == "a: b c"
    assert one_line(ValueError("prune.rate=1.5 is invalid")) == "prune.rate=1.5 is invalid"


def imports_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.slow
def test_the_errors_module_imports_nothing_heavy():
    assert "torch" not in imports_after("rsst.errors")


@pytest.mark.slow
def test_the_run_folders_lock_and_layout_import_neither_torch_nor_hydra():
    loaded = imports_after("rsst.folder.lock") | imports_after("rsst.folder.layout")
    assert not {"torch", "hydra", "submitit", "tqdm"} & loaded  # omegaconf only: rsst registers its resolvers


@pytest.mark.slow
def test_a_model_file_does_not_import_the_config_layer():
    assert "rsst.config.checks" not in imports_after("rsst.models.prunable")


@pytest.mark.slow
def test_a_bad_value_is_one_line_on_stderr_and_nothing_on_stdout(tmp_path, hydra_full_error):
    proc = launch("prune.rate=1.5", f"paths.root={tmp_path}", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "prune.rate" in line]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "1.5" in lines[0] and "invalid" in lines[0], lines[0]
    assert "prune.rate" not in proc.stdout and "invalid" not in proc.stdout, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before the config is valid"


@pytest.mark.slow
def test_an_error_inside_the_run_folder_is_on_stderr_and_in_run_log_not_on_stdout(tmp_path):
    from helpers import FAST

    run_dir = tmp_path / "run"
    first = launch(*FAST, "train.amp=off", "prune.rounds=1", "train.epochs=1", f"paths.run_dir={run_dir}")
    assert first.returncode == 0, first.stdout[-2000:]
    kept_log = (run_dir / "run.log").read_bytes()
    refused = launch(*FAST, "train.amp=bf16", "prune.rounds=1", "train.epochs=1", f"paths.run_dir={run_dir}")
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert "train.amp" in line and line not in refused.stdout
    assert (run_dir / "run.log").read_bytes() == kept_log  # another config's folder is refused untouched (issue 23)


def test_a_network_too_large_for_memory_is_one_line_naming_the_width_before_the_folder_exists(tmp_path):
    from helpers import compose_config  # noqa: PLC0415

    from rsst.loop.rounds import RoundLoop  # noqa: PLC0415

    run_dir = tmp_path / "run"
    with pytest.raises(ChecksConfigError) as err:
        RoundLoop(compose_config(["arch.width=100000", f"paths.run_dir={run_dir}"]), run_dir)
    message = str(err.value)
    assert message.startswith("arch.width=100000: the network does not fit in memory"), message
    asked = float(message.split("asks for ")[1].split(" GiB")[0])
    assert asked == pytest.approx(100_000 * 100_000 * 9 * 4 / 2**30, rel=0.01)  # one 3x3 conv's fp32 weight
    assert "\n" not in message and not run_dir.exists()
