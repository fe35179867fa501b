"""Shared fixtures; plain helpers live in ``helpers.py`` (import them as ``from helpers import ...``)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import helpers
import pytest
from helpers import FAST, FINISHED_ARGS, compose_config, launch
from omegaconf import DictConfig

from rsst.loop.rounds import RoundLoop

# Fixtures that train or launch runs and are shared by several tests: the tests using one go to one
# xdist worker, so the run is trained once rather than once per worker (``--dist loadgroup``), while
# tests of different shared runs may still run side by side.
SHARED_RUNS = {
    "controlled",
    "refill_run",
    "round0",
    "rsst_round",
    "admm_round0",
    "two_ranks",
    "real_run",
    "lenet_runs",
    "resnet_runs",
    "searched",
    "stability_run",
    "lenet_pair",
}


# The tiers (pyproject.toml lists the markers). ``slow``: the test trains through the round loop or starts a
# Python process (launch.py, torchrun, Slurm, a command of the project, a bare interpreter); ``train``: the slow
# tests that train in this process. Every other test is ``unit``: ``pytest -m unit`` (the same tests as
# ``-m "not slow"``) is the unit tier. A test is marked here by the fixtures it uses, or by its own decorator;
# a unit test that trains or starts a Python process fails, naming the marker it lacks (``_unit_guard``).
SUBPROCESS_FIXTURES = {
    "finished_run",
    "controlled",
    "refill_run",
    "real_run",
    "two_ranks",
    "lenet_runs",
    "resnet_runs",
    "help_text",
    "installed",
    "slurm_env",
    "uninterrupted",
    "searched",
    "stability_run",
}
TRAINING_FIXTURES = {"round0", "rsst_round", "admm_round0", "lenet_pair"}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        shared = sorted(SHARED_RUNS & fixtures)
        if shared and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{shared[0]}"))
        if fixtures & TRAINING_FIXTURES and not item.get_closest_marker("train"):
            item.add_marker(pytest.mark.train)
        if (item.get_closest_marker("train") or fixtures & SUBPROCESS_FIXTURES) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
        if not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.unit)


# -- the unit tier's guard: the unit test being set up or run, or None ------------------------------------------

_unit_test: str | None = None
_PROGRAMS = ("torchrun", "sbatch", "srun", "salloc")


def _starts_python(args) -> bool:
    argv = args.split() if isinstance(args, str) else [os.fspath(a) for a in args]
    if not argv:
        return False
    name = os.path.basename(str(argv[0]))
    return str(argv[0]) == sys.executable or name.startswith("python") or name in _PROGRAMS


def _refuse(what: str, marker: str) -> None:
    pytest.fail(f"{_unit_test} is in the unit tier but {what}: mark it @pytest.mark.{marker}", pytrace=False)


_popen_init = subprocess.Popen.__init__
_run_epoch = RoundLoop.run_epoch


def _guard_start(args) -> None:
    if _unit_test is not None and _starts_python(args):
        _refuse(f"starts {args if isinstance(args, str) else ' '.join(map(str, args))[:200]}", "slow")


def _guarded_popen_init(self, args, *rest, **kwargs):
    _guard_start(args)
    _popen_init(self, args, *rest, **kwargs)


def _guarded_run_epoch(self, *args, **kwargs):
    if _unit_test is not None:
        _refuse("trains through the round loop (RoundLoop.run_epoch)", "train")
    return _run_epoch(self, *args, **kwargs)


def pytest_collection_finish(session: pytest.Session) -> None:
    # What the imports and the collection made lives as long as the session: frozen out of the cyclic
    # collector's scans, so the tests that train in this process stop rescanning it (about 5% of their time).
    gc.collect()
    gc.freeze()


def pytest_configure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _guarded_popen_init
    helpers.ON_START.append(_guard_start)  # launch's children of the fork server start without Popen
    RoundLoop.run_epoch = _guarded_run_epoch


def pytest_unconfigure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _popen_init
    helpers.ON_START.remove(_guard_start)
    RoundLoop.run_epoch = _run_epoch


@contextmanager
def _unit_guard(item: pytest.Item) -> Iterator[None]:
    global _unit_test
    _unit_test = item.nodeid if item.get_closest_marker("unit") else None
    try:
        yield
    finally:
        _unit_test = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    with _unit_guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    with _unit_guard(item):
        return (yield)


@pytest.fixture(params=[None, "0", "1"], ids=["HYDRA_FULL_ERROR-unset", "HYDRA_FULL_ERROR=0", "HYDRA_FULL_ERROR=1"])
def hydra_full_error(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The one-line error contract holds whatever the user's shell exported: a test that takes this fixture runs
    three times, its launches with ``HYDRA_FULL_ERROR`` unset, ``0`` and ``1`` (a variable Hydra reads when it
    reports an error, not at import, so the fork server still serves them)."""
    if request.param is None:
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    else:
        monkeypatch.setenv("HYDRA_FULL_ERROR", request.param)
    return request.param


@pytest.fixture
def fast_cfg(tmp_path: Path):
    """Compose a fast config whose outputs go to ``tmp_path``; extra overrides as arguments."""

    def make(*overrides: str) -> DictConfig:
        return compose_config([*FAST, f"paths.root={tmp_path}", *overrides])

    return make


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """One uninterrupted 3-round IMP run (``FINISHED_ARGS``), trained once per test worker.

    Tests that need a finished folder to damage, copy or refuse copy it rather than train their own.
    """
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = launch(*FINISHED_ARGS, f"paths.run_dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return run_dir
