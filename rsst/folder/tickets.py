"""A round's ticket on disk, ``masks/round_<r>[_<control>].pt``: the run folder owns its format.

Booleans on the CPU in the standard (contiguous) layout, one per prunable weight, written atomically;
read back tensor-only (:mod:`rsst.folder.safeload`) as float32 0/1 masks. The pruning algorithms take
and return tensors (:class:`rsst.pruning.masks.Masks`) and never touch a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from rsst.folder.atomic import atomic_torch_save
from rsst.folder.safeload import UnloadableFile, load_tensors


def save_masks(masks: Mapping[str, Tensor], path: str | Path) -> None:
    """``masks`` as boolean CPU tensors in the standard layout, whatever layout they have in memory."""
    atomic_torch_save({n: m.bool().cpu().contiguous() for n, m in masks.items()}, path)


def load_masks(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """A mask file as float32 tensors on ``device``; :class:`UnloadableFile` if it is not names -> tensors."""
    data = load_tensors(path)
    if not isinstance(data, dict) or not all(isinstance(m, Tensor) for m in data.values()):
        raise UnloadableFile(f"{path}: not a mapping of weight names to mask tensors")
    return {n: m.to(device=device, dtype=torch.float32) for n, m in data.items()}
