"""Atomic save and checked load of a run's whole state (model, optimiser, masks, theta_0, RNG, history)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from rsst.errors import RsstError
from rsst.folder.atomic import atomic_torch_save
from rsst.folder.safeload import UnloadableFile, load_tensors

FORMAT_VERSION = 1


class CheckpointError(RsstError, RuntimeError):
    """A checkpoint that cannot be used: unreadable, from another version, or from another config."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_torch_save({"format_version": FORMAT_VERSION, **state}, path)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def config_difference(theirs: Any, ours: Any, limit: int = 3) -> str:
    """``"train.amp: bf16 there, off here; ..."``: the first ``limit`` keys whose values differ."""
    try:  # a received checkpoint's config may nest deeper than the recursion allows
        a, b = _flat(theirs if isinstance(theirs, dict) else {}), _flat(ours if isinstance(ours, dict) else {})
    except RecursionError:
        return "its config is nested too deeply to compare"
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))
    parts = [f"{k}: {a.get(k, '<absent>')} there, {b.get(k, '<absent>')} here" for k in keys[:limit]]
    return "; ".join(parts) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def load_checkpoint(path: str | Path, config_hash: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load ``path`` and check it belongs to the config with ``config_hash``; raise a clear error otherwise.

    ``config`` (this run's hashed config) lets a mismatch name the keys that differ.
    """
    path = Path(path)
    try:
        state = load_tensors(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is missing") from None
    except UnloadableFile as exc:  # any unpickling failure means the file cannot be trusted
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({str(exc).removeprefix(f'{path}: ')}); "
            "move it away to start this run over, or restore it from a backup"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, expected {FORMAT_VERSION}")
    if state.get("config_hash") != config_hash:
        diff = config_difference(state.get("config"), config) if config is not None else ""
        hint = ""
        if "train.amp" in diff:
            amp = _flat(state.get("config") or {}).get("train.amp")
            hint = f" (train.amp=auto resolves per machine; pass train.amp={amp} to resume it as it was)"
        raise CheckpointError(
            f"checkpoint {path} belongs to config {state.get('config_hash')!r}, not to this run's "
            f"config {config_hash!r}{f' ({diff})' if diff else ''}; it will not be resumed{hint}. "
            "Use another paths.run_dir, or remove the folder"
        )
    return state


def read_identity(path: str | Path) -> str:
    """The config hash a checkpoint records (read without unpickling code, memory-mapped)."""
    path = Path(path)
    try:
        state = load_tensors(path, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is missing: the run's identity cannot be checked") from None
    except UnloadableFile as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({str(exc).removeprefix(f'{path}: ')})") from None
    if not isinstance(state, dict) or not isinstance(state.get("config_hash"), str):
        raise CheckpointError(f"checkpoint {path} records no config hash")
    return state["config_hash"]


def file_sum(path: str | Path) -> str:
    """The sha256 of ``path``'s bytes, as the checkpoint records it for each round file the run writes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_sums(path: str | Path) -> dict[str, str]:
    """The round files' sums the checkpoint at ``path`` records (``{}`` for a checkpoint from before they were).

    Memory-mapped: this reads the record, not the tensors.
    """
    try:
        state = load_tensors(path, mmap=True)
    except (FileNotFoundError, UnloadableFile) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or missing ({exc})") from None
    sums = state.get("file_sums") if isinstance(state, dict) else None
    if not isinstance(sums, dict):
        return {}
    return {k: v for k, v in sums.items() if isinstance(k, str) and isinstance(v, str)}


def mismatch(run_dir: str | Path, file: str | Path, sums: dict[str, str]) -> str | None:
    """Why ``file`` is not the one the checkpoint recorded (None when it is, or when none was recorded)."""
    name = Path(file).relative_to(run_dir).as_posix()
    expected = sums.get(name)
    if expected is None or not Path(file).is_file():
        return None
    found = file_sum(file)
    if found == expected:
        return None
    return f"{file} is not the file the run wrote (sha256 {found[:12]}..., the checkpoint records {expected[:12]}...)"


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of ``module.state_dict()`` that shares no storage with the live module (for theta_0)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
