"""A run's directory is named from a hash of its resolved config, so the same command finds the same folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys that say where or how to report or how fast to compute, not what is computed: they do not
# change the hash (train.amp does: the precision is part of the experiment).
# `criteria` and `schedule` enter the computation only through interpolations inside `struct`,
# so a method that uses them hashes them there and a method that does not (imp) ignores them.
EXCLUDED_KEYS = (
    "criteria",
    "schedule",
    "paths",
    "logger",
    "progress",
    "device",
    "dataset.root",
    "dataset.download",
    "dataset.loader",
    "dataset.num_workers",
    "dataset.pin_memory",
    "train.eval_batch_size",
    "train.channels_last",
    "train.compile",
)


def hashed_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus :data:`EXCLUDED_KEYS` (and anything Hydra adds under ``hydra``)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    for key in EXCLUDED_KEYS:
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def config_hash(cfg: DictConfig) -> str:
    blob = json.dumps(hashed_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _short(node: Any) -> str:
    target = node.get("_target_", "") if isinstance(node, DictConfig) else ""
    return target.rsplit(".", 1)[-1].lower() or "x"


def run_name(cfg: DictConfig) -> str:
    """``<struct>_<dataset>_<arch>_s<seed>_<hash>``: readable in a listing, unique by the hash."""
    parts = [_short(cfg.get(k)) for k in ("struct", "dataset", "arch")]
    return "_".join([*parts, f"s{cfg.seed}", config_hash(cfg)])


def run_directory(cfg: DictConfig) -> Path:
    """``paths.run_dir`` when given, else ``paths.root / run_name(cfg)`` (root defaults to ``runs``)."""
    paths = cfg.get("paths") or {}
    if paths.get("run_dir"):
        return Path(paths.run_dir)
    return Path(paths.get("root") or "runs") / run_name(cfg)
