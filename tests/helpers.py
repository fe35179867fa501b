"""Test helpers: compose the real configs, and run the real entry point in a process of its own."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from zygote import Zygote

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


# Called with the argv of every process ``python`` starts (conftest.py's unit-tier guard).
ON_START: list[Callable[[list[str]], None]] = []
_server: Zygote | None = None


def python(
    *argv: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python ARGV`` (``SCRIPT ARGS`` or ``-m MODULE ARGS``) run to its end, its output captured as text.

    ``env`` is the process's whole environment (default: this one's). The process is a child of this test
    process's fork server (``zygote.py``), which has imported torch and Hydra already, unless ``env`` changes a
    variable those read at import; then it is a plain subprocess.
    """
    global _server
    env = dict(os.environ if env is None else env)
    command = [sys.executable, *argv]
    for hook in ON_START:
        hook(command)
    current = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    if _server is None or not _server.usable_for(current):  # first use, or this process's environment changed
        if _server is None:
            atexit.register(lambda: _server.close())
        else:  # e.g. torch's compiler sets TORCHINDUCTOR_* here: a server from before would serve nothing now
            _server.close()
        _server = Zygote(current)
    if Zygote.serves(list(argv)) and _server.usable_for(env):
        return _server.run(list(argv), cwd, env, timeout)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def launch(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python launch.py ARGS`` from the repository root and capture its output (``env``: extra variables)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **(env or {})}
    return python("launch.py", *args, env=env, timeout=timeout)


def only_run_dir(root: Path) -> Path:
    """The single run folder under ``root`` (fails if there is not exactly one)."""
    dirs = [p for p in Path(root).iterdir() if (p / "config.yaml").exists()]
    assert len(dirs) == 1, f"expected one run folder under {root}, found {dirs}"
    return dirs[0]


def read_rounds(run_dir: Path) -> list[dict]:
    return json.loads((Path(run_dir) / "rounds.json").read_text())


def make_loop(cfg: DictConfig):
    """A fresh :class:`rsst.loop.rounds.RoundLoop` for ``cfg`` in its own new run folder, as a new run starts it."""
    from rsst.folder.naming import run_directory  # noqa: PLC0415  (torch: only for the tests that train)
    from rsst.loop.rounds import RoundLoop  # noqa: PLC0415

    run_dir = run_directory(cfg)
    run_dir.mkdir(parents=True)
    loop = RoundLoop(cfg, run_dir)
    loop.fresh_start()
    return loop
