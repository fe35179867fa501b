"""Shared fixtures; plain helpers live in ``helpers.py`` (import them as ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FAST, compose_config
from omegaconf import DictConfig


@pytest.fixture
def fast_cfg(tmp_path: Path):
    """Compose a fast config whose outputs go to ``tmp_path``; extra overrides as arguments."""

    def make(*overrides: str) -> DictConfig:
        return compose_config([*FAST, f"paths.root={tmp_path}", *overrides])

    return make
