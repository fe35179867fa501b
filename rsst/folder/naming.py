"""A run's directory is named from a hash of its resolved config, so the same command finds the same folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rsst.errors import RsstError

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
    "collective_timeout_s",
    "dataset.root",
    "dataset.download",
    "dataset.loader",
    "dataset.num_workers",
    "dataset.pin_memory",
    "train.eval_batch_size",
    "train.channels_last",
    "train.compile",
)

# Keys added after runs existed, each with the value that does what the platform did before the key
# existed. A key holding that value is left out of the hash (and of the report's grouping), so the
# folders of existing runs keep their names; any other value is part of the run's identity.
# The value's type counts too: ``0`` is not ``false``.
HASH_NEUTRAL: dict[str, Any] = {
    "struct.penalty_scope": "weights",
    "prune.rewind_step": 0,
    "prune.stability": False,
    "prune.stability_points": 11,
}


def _node(data: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
    """The dict holding dotted ``key``'s leaf inside ``data`` (None where a parent is missing), and the leaf."""
    *parents, leaf = key.split(".")
    node: Any = data
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def drop_neutral(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a plain config dict, changed in place) without the :data:`HASH_NEUTRAL` keys at their neutral value."""
    for key, neutral in HASH_NEUTRAL.items():
        node, leaf = _node(data, key)
        if node is not None and leaf in node and type(node[leaf]) is type(neutral) and node[leaf] == neutral:
            del node[leaf]
    return data


def hashed_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus :data:`EXCLUDED_KEYS`, the :data:`HASH_NEUTRAL` keys at their neutral value,
    and anything Hydra adds under ``hydra``."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    for key in EXCLUDED_KEYS:
        node, leaf = _node(data, key)
        if node is not None:
            node.pop(leaf, None)
    return drop_neutral(data)


def config_hash(cfg: DictConfig) -> str:
    blob = json.dumps(hashed_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def safe_part(text: str) -> str:
    """``text`` reduced to ``[A-Za-z0-9_.-]`` (other runs of characters become one ``-``), never ``.``/``..``."""
    part = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")
    return part or "x"


def _short(node: Any) -> str:
    target = str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""
    return safe_part(target.rsplit(".", 1)[-1].lower())


def run_name(cfg: DictConfig) -> str:
    """``<struct>_<dataset>_<arch>_s<seed>_<hash>``: readable in a listing, unique by the hash.

    Built only from ``[A-Za-z0-9_.-]``: a group's ``_target_`` cannot steer the folder elsewhere.
    """
    parts = [_short(cfg.get(k)) for k in ("struct", "dataset", "arch")]
    return "_".join([*parts, f"s{safe_part(str(cfg.seed))}", config_hash(cfg)])


def _limit(name: str, fallback: int) -> int:
    try:
        return int(os.pathconf("/", name))
    except (OSError, ValueError):
        return fallback


def check_length(path: Path, key: str) -> Path:
    """``path`` if the file system can name it; else one line naming ``key`` and the limit (before any mkdir)."""
    name_max, path_max = _limit("PC_NAME_MAX", 255), _limit("PC_PATH_MAX", 4096)
    longest = max(path.parts, key=lambda part: len(os.fsencode(part)), default="")
    if len(os.fsencode(longest)) > name_max:
        raise RunFolderError(
            f"{key}: the run folder {str(path)[:60]!r}... has a name of {len(os.fsencode(longest))} bytes, "
            f"more than the {name_max} a file name may have; choose a shorter {key}"
        )
    full = len(os.fsencode(str(path.absolute())))
    if full >= path_max:
        raise RunFolderError(
            f"{key}: the run folder {str(path)[:60]!r}... is a path of {full} bytes, more than the {path_max - 1} "
            f"a path may have; choose a shorter {key}"
        )
    return path


def run_directory(cfg: DictConfig) -> Path:
    """``paths.run_dir`` when given, else ``paths.root / run_name(cfg)`` (root defaults to ``runs``).

    A derived folder is checked to lie directly inside the root.
    """
    paths = cfg.get("paths") or {}
    if paths.get("run_dir"):
        return check_length(Path(paths.run_dir), "paths.run_dir")
    root = Path(paths.get("root") or "runs")
    run_dir = check_length(root / run_name(cfg), "paths.root")
    if run_dir.resolve().parent != root.resolve():
        raise RunFolderError(f"run folder {run_dir} would lie outside paths.root={str(root)!r}")
    return run_dir


class RunFolderError(RsstError, RuntimeError):
    """A run folder that cannot be used as it is; the message names the folder (or file) and why."""


def read_verified_config(run_dir: str | Path) -> dict[str, Any]:
    """The run folder's ``config.yaml`` as a plain dict, checked against the hash its checkpoint records.

    ``config.yaml`` is a readable copy; the checkpoint's ``config_hash`` is the run's identity. A
    ``config.yaml`` that no longer hashes to it was edited (or belongs to another run) and is refused,
    so that reports group and exports build exactly what was trained.
    """
    from rsst.folder.checkpoint import CheckpointError, read_identity  # noqa: PLC0415
    from rsst.folder.layout import RunFiles  # noqa: PLC0415
    from rsst.folder.safeload import UnreadableYaml, load_yaml  # noqa: PLC0415

    run_dir = Path(run_dir)
    files = RunFiles(run_dir)
    cfg_file = files.config
    try:
        data = load_yaml(cfg_file)
    except FileNotFoundError:
        raise RunFolderError(f"{cfg_file} is missing: {run_dir} is not a run folder") from None
    except UnreadableYaml as exc:
        raise RunFolderError(f"{cfg_file} is unreadable: {str(exc).removeprefix(f'{cfg_file}: ')}") from None
    except OSError as exc:
        raise RunFolderError(f"{cfg_file} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{cfg_file} is not a config (found {type(data).__name__})")
    try:
        recorded = read_identity(files.checkpoint)
    except CheckpointError as exc:
        raise RunFolderError(str(exc)) from None
    try:
        found = config_hash(OmegaConf.create(data))
    except OmegaConfBaseException as exc:
        raise RunFolderError(f"{cfg_file} does not resolve ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if found != recorded:
        raise RunFolderError(
            f"{cfg_file} was edited: it hashes to {found}, but the run's checkpoint was trained with config "
            f"{recorded}; restore the file (or rerun the run to rewrite it)"
        )
    return data
