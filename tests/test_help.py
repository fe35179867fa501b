"""``python launch.py --help`` explains the groups, the launchers, the outputs and the companion commands."""

from __future__ import annotations

import re

import pytest
from helpers import CONF, launch

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
LAUNCHERS = sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml"))


@pytest.fixture(scope="module")
def help_text() -> str:
    done = launch("--help", "arch=conv4", "struct=imp", timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def section(text: str, title: str) -> str:
    """The lines between ``== title ... ==`` and the next ``==`` heading."""
    match = re.search(rf"^== {re.escape(title)}[^\n]*==\n(.*?)(?=^== |\Z)", text, re.M | re.S)
    assert match, f"no section {title!r} in --help"
    return match.group(1)


def test_help_gives_every_config_group_a_one_line_meaning_and_lists_its_options(help_text):
    groups = section(help_text, "Config groups")
    for group in GROUPS:
        meaning = re.search(rf"^  {group} +(\S.{{10,}})$", groups, re.M)
        assert meaning, f"group {group!r} has no one-line meaning in --help"
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in groups, f"the options of {group!r} are not listed"
    assert "schema/" not in groups  # the typed schema's ConfigStore entries are types, not options to choose


def test_help_names_every_launcher_the_outputs_and_the_companion_commands(help_text):
    launchers = section(help_text, "Launchers")
    assert all(re.search(rf"^  {name} +\S", launchers, re.M) for name in LAUNCHERS), launchers
    outputs = section(help_text, "Outputs")
    for item in ("config.yaml", "checkpoint.pt", "metrics.csv", "rounds.json", "masks/round_<r>.pt", "runs/"):
        assert item in outputs, item
    assert "python -m rsst.report" in help_text and "python -m rsst.export" in help_text
    assert "is powered by Hydra" not in help_text  # Hydra's stock header is replaced


def test_help_shows_the_choices_of_this_command(help_text):
    assert "arch=conv4" in help_text and "struct=imp" in help_text and "dataset=digits" in help_text
