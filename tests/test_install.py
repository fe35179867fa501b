"""``pip install .`` (not editable) gives a working platform: the wheel holds every package, the configs
and the three commands, and an installed copy trains, reports and exports from any folder."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import CONF, ROOT, python

# What a wheel is built from (the copy keeps build/ and egg-info out of the checkout).
SOURCES = ("pyproject.toml", "README.md", "rsst", "conf")
SCRIPTS = {
    "rsst-train": "rsst.commands.train:main",
    "rsst-report": "rsst.commands.report:main",
    "rsst-export": "rsst.commands.export:main",
}
# A tiny Refill run: narrow enough that round 1 removes whole channels, so the export has work to do.
TINY_REFILL = [
    "struct=refill",
    "criteria=magnitude",
    "arch.width=4",
    "prune.rounds=2",
    "train.epochs=1",
    "lr_schedule.milestones=[]",
    "progress=false",
]


def setuptools_config() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_wheel_lists_every_package_under_rsst_and_ships_conf_as_rsst_conf():
    """An explicit package list (conf/ is mapped in): a new subpackage must be added, not silently left out."""
    setup = setuptools_config()
    declared = setup["packages"]
    found = {
        ".".join(d.relative_to(ROOT).parts)
        for d in [ROOT / "rsst", *(ROOT / "rsst").rglob("*")]
        if d.is_dir() and any(d.glob("*.py"))
    }
    assert len(declared) == len(set(declared))
    assert set(declared) == found | {"rsst.conf"}, "pyproject.toml [tool.setuptools] packages must list these"
    assert setup["package-dir"] == {"rsst.conf": "conf"}
    assert setup["package-data"] == {"rsst.conf": ["**/*.yaml"]}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    site: Path
    work: Path  # a folder outside the checkout, where the commands run

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(self.site),
            "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline",
            "PYTHONUNBUFFERED": "1",
        }

    def python(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """The test's interpreter (it has the dependencies), with the installed copy of rsst first on its path."""
        return python(*args, cwd=self.work, env=self.env, timeout=timeout)

    def script(self, name: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """A console script pip wrote for the wheel (``<site>/bin/<name>``), run by the test's interpreter."""
        return self.python(str(self.site / "bin" / name), *args, timeout=timeout)


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """The wheel built from this checkout (no build isolation: no download) and installed with --target."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src))
    (wheel,) = (tmp / "dist").glob("rsst-*.whl")
    _pip("install", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel))
    (tmp / "work").mkdir()
    return Installed(wheel, tmp / "site", tmp / "work")


@pytest.mark.slow
def test_the_wheel_holds_the_configs_and_declares_the_console_scripts(installed):
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        (declared,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = whl.read(declared).decode()
    shipped = {f"rsst/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}
    assert "rsst/conf/struct/rsst.yaml" in shipped and "rsst/conf/hydra/help/rsst.yaml" in shipped
    assert shipped <= names, sorted(shipped - names)
    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    assert dict(parser["console_scripts"]) == SCRIPTS
    assert all((installed.site / "bin" / name).is_file() for name in SCRIPTS)


@pytest.mark.slow
def test_the_installed_copy_trains_reports_and_exports_outside_the_checkout(installed):
    site, work = installed.site, installed.work
    probe = "import json, rsst, rsst.config.location as at; print(json.dumps([rsst.__file__, str(at.conf_dir())]))"
    where = installed.python("-c", probe)
    assert where.returncode == 0, where.stderr[-2000:]
    package, conf = (Path(p) for p in json.loads(where.stdout))
    assert package.is_relative_to(site), package  # the installed copy, not the checkout
    assert conf == site / "rsst" / "conf"

    helped = installed.script("rsst-train", "--help")
    assert helped.returncode == 0 and "== Config groups" in helped.stdout, helped.stderr[-2000:]

    refused = installed.script("rsst-train", "prune.rate=1.5")
    assert refused.returncode == 2 and "prune.rate=1.5 is invalid" in refused.stderr, refused.stderr[-2000:]

    searched = installed.script("rsst-train", "-m", "hparams_search=rsst_lambda", "hydra.sweeper.direction=up")
    assert searched.returncode == 2, searched.stderr[-2000:]  # the sweeper was found, built and checked its keys
    assert searched.stderr.startswith("hydra.sweeper.direction='up' is invalid"), searched.stderr[-2000:]

    trained = installed.script("rsst-train", *TINY_REFILL)  # paths.root: runs/ where it is started
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert sorted(p.name for p in work.iterdir()) == ["runs"]  # hydra.run.dir is ".": nothing else written
    (run_dir,) = (work / "runs").iterdir()
    rounds = json.loads((run_dir / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1]

    reported = installed.python("-m", "rsst.report", str(work / "runs"))
    assert reported.returncode == 0, reported.stderr[-2000:]
    assert "refill" in reported.stdout and (work / "runs" / "report.md").is_file()

    exported = installed.script("rsst-export", str(run_dir), "--round", "1", "--repeats", "1", "--device", "cpu")
    assert exported.returncode == 0, exported.stderr[-2000:]
    measured = json.loads((run_dir / "export_round_1.json").read_text())
    assert measured["channel_wise"] and measured["dead_channels"] > 0
    assert measured["params"]["exported"] < measured["params"]["dense"]
