"""Run folders written by hand for the ``rsst.report`` tests, so they need no training.

Each folder holds what a real run leaves for the report: ``config.yaml`` from the real composed
config, a ``checkpoint.pt`` recording that config's hash (all ``read_verified_config`` reads of
it), and a ``rounds.json`` whose rows the test chooses.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from helpers import compose_config
from omegaconf import OmegaConf

from rsst.folder.naming import config_hash, run_name

CONTROLS = ("reinit", "shuffle_layerwise")


@lru_cache
def _composed(overrides: tuple[str, ...]) -> str:
    return OmegaConf.to_yaml(compose_config(list(overrides)), resolve=True)


@lru_cache
def controls_override(names: tuple[str, ...] = CONTROLS) -> str:
    """``prune.controls=[...]`` (with a ``+`` while the config has no such key yet)."""
    has_key = "controls" in compose_config([]).prune
    return f"{'' if has_key else '+'}prune.controls=[{','.join(names)}]"


def write_run(root: Path, overrides: list[str], seed: int, rows: list[dict[str, Any]]) -> Path:
    """A run folder ``root/<run name>`` for the composed config with ``seed``, holding ``rows`` as rounds.json."""
    cfg = OmegaConf.create(_composed(tuple(overrides)))
    cfg.seed = seed
    run = Path(root) / run_name(cfg)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.save({"format_version": 1, "config_hash": config_hash(cfg)}, run / "checkpoint.pt")
    (run / "rounds.json").write_text(json.dumps(rows))
    return run


def remaining(method: str, rounds: int, rate: float = 0.2) -> list[float]:
    """Remaining weight per round: IMP's exact (1 - rate)^r; a channel-wise ticket's a little below it
    (refill's whole channels: 79.09% and 61.96% where IMP has 80% and 64%)."""
    exact = [100.0 * (1 - rate) ** r for r in range(rounds)]
    if method == "imp":
        return exact
    return [100.0] + [w * max(0.8, 0.9886 - 0.0206 * (r - 1)) for r, w in enumerate(exact[1:], 1)]


def rows(
    accs: list[float], remain: list[float], controls: dict[str, list[float]] | None = None
) -> list[dict[str, Any]]:
    """Ticket rows with ``test_acc``/``final_test_acc``, then each control's rows for rounds 1..."""
    out = [
        {"round": r, "remain_weight": w, "test_acc": a, "final_test_acc": a - 0.4, "best_epoch": 3}
        for r, (a, w) in enumerate(zip(accs, remain, strict=True))
    ]
    for branch, values in (controls or {}).items():
        out += [
            {"round": r, "branch": branch, "remain_weight": remain[r], "test_acc": a, "final_test_acc": a - 0.4}
            for r, a in enumerate(values, 1)
        ]
    return out
