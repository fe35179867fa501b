"""A run's directory is named from a hash of its resolved config, so the same command finds the same folder."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rsst.errors import RsstError
from rsst.folder.safeload import UnreadableYaml, interpolation_in, load_yaml

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


def _hashed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a plain config dict, changed in place) minus :data:`EXCLUDED_KEYS`, the :data:`HASH_NEUTRAL`
    keys at their neutral value, and anything Hydra adds under ``hydra``."""
    data.pop("hydra", None)
    for key in EXCLUDED_KEYS:
        node, leaf = _node(data, key)
        if node is not None:
            node.pop(leaf, None)
    return drop_neutral(data)


def hashed_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus :data:`EXCLUDED_KEYS`, the :data:`HASH_NEUTRAL` keys at their neutral value,
    and anything Hydra adds under ``hydra``."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    return _hashed(data)


def _digest(hashed: dict[str, Any]) -> str:
    blob = json.dumps(hashed, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def config_hash(cfg: DictConfig) -> str:
    return _digest(hashed_config(cfg))


def written_config_hash(data: dict[str, Any]) -> str:
    """The hash of a config as the run wrote it (``config.yaml``: resolved, read back as plain data), computed from
    the data as it is: nothing is resolved, so a received file costs what its size says.

    For a config without interpolations (every one the run writes) it is :func:`config_hash` of that config.
    """
    return _digest(_hashed(copy.deepcopy(data)))


class ReceivedConfigError(RsstError, ValueError):
    """A config read from a file that holds what the run never writes (an interpolation); the message names it."""


def refuse_interpolation(data: Any, source: str | Path) -> None:
    """:class:`ReceivedConfigError` if ``data`` (a config read from ``source``) holds a ``${}`` interpolation.

    The run writes its config resolved, so a file it wrote holds none, and one that does is never
    resolved: resolving is where interpolations that double each other cost memory and time
    exponential in their number.
    """
    found = interpolation_in(data)
    if found is not None:
        key, text = found
        raise ReceivedConfigError(
            f"{source}: {key or 'a key'} holds the interpolation {text!r}, which a run never writes (it writes its "
            "config resolved); refused without resolving it"
        )


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
    so that reports group and exports build exactly what was trained. The file is read bounded
    (:func:`rsst.folder.safeload.load_yaml`: size, depth, no aliases), hashed as written, and refused if
    it holds an interpolation: nothing in it is ever resolved.
    """
    from rsst.folder.checkpoint import CheckpointError, read_identity  # noqa: PLC0415
    from rsst.folder.layout import RunFiles  # noqa: PLC0415

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
    found = written_config_hash(data)  # compared as written: nothing in the file is resolved
    if found != recorded:
        raise RunFolderError(
            f"{cfg_file} was edited: it hashes to {found}, but the run's checkpoint was trained with config "
            f"{recorded}; restore the file (or rerun the run to rewrite it)"
        )
    try:  # the hash leaves keys out (paths, logger, ...), and a checkpoint can be written by hand too
        refuse_interpolation(data, cfg_file)
    except ReceivedConfigError as exc:
        raise RunFolderError(str(exc)) from None
    return data
