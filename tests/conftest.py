"""Shared fixtures; plain helpers live in ``helpers.py`` (import them as ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FAST, FINISHED_ARGS, compose_config, launch
from omegaconf import DictConfig

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
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        shared = sorted(SHARED_RUNS & set(getattr(item, "fixturenames", ())))
        if shared and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{shared[0]}"))


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
