"""Test helpers: compose the real configs, and run the real entry point as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from rsst.config.location import conf_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
assert conf_dir() == CONF  # and the schema conf/ names is in Hydra's ConfigStore

# A small, fast run on the embedded data: a narrow ResNet-20, two epochs a round.
FAST = ["arch.width=8", "train.epochs=2", "lr_schedule.milestones=[]", "progress=false"]
# The finished run the ``finished_run`` fixture (conftest.py) trains once per test worker.
FINISHED_ARGS = [*FAST, "struct=imp", "prune.rounds=3"]


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The composed config exactly as ``launch.py`` would see it (without the ``hydra`` node)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def option_node(group: str, option: str) -> DictConfig:
    """The node of ``conf/<group>/<option>.yaml`` as a run composes it (typed by its schema, no defaults list)."""
    return compose_config([f"{group}={option}"])[group]


def launch(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python launch.py ARGS`` from the repository root and capture its output (``env``: extra variables)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(
        [sys.executable, "launch.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def only_run_dir(root: Path) -> Path:
    """The single run folder under ``root`` (fails if there is not exactly one)."""
    dirs = [p for p in Path(root).iterdir() if (p / "config.yaml").exists()]
    assert len(dirs) == 1, f"expected one run folder under {root}, found {dirs}"
    return dirs[0]


def read_rounds(run_dir: Path) -> list[dict]:
    return json.loads((Path(run_dir) / "rounds.json").read_text())
