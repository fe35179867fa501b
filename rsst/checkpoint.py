"""Atomic save and checked load of a run's whole state (model, optimiser, masks, theta_0, RNG, history)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rsst.io import atomic_torch_save

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, from another version, or from another config."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_torch_save({"format_version": FORMAT_VERSION, **state}, path)


def load_checkpoint(path: str | Path, config_hash: str) -> dict[str, Any]:
    """Load ``path`` and check it belongs to the config with ``config_hash``; raise a clear error otherwise."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # any unpickling failure means the file cannot be trusted
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
            "move it away to start this run over, or restore it from a backup"
        ) from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, expected {FORMAT_VERSION}")
    if state.get("config_hash") != config_hash:
        raise CheckpointError(
            f"checkpoint {path} belongs to config {state.get('config_hash')!r}, not to this run's "
            f"config {config_hash!r}; it will not be resumed. Use another paths.run_dir, or remove the folder"
        )
    return state


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of ``module.state_dict()`` that shares no storage with the live module (for theta_0)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
