"""Opening a run folder: refuse another config's folder, and repair what a kill could leave behind.

The checkpoint is the source of truth. On every start (finished run or not) the files that can be
rebuilt from it are rewritten: ``rounds.json``, ``metrics.csv``, ``config.yaml`` and every
``masks/round_<r>.pt``; the last finished round's ``weights/round_<r>.pt`` when the run stands at a
round boundary; leftover temporary files of interrupted atomic writes are removed. What cannot be
rebuilt is named in a warning (and ``rsst.export`` / ``rsst.report`` refuse it where they need it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf

from rsst.folder.atomic import atomic_torch_save, atomic_write_json, atomic_write_text, leftover_temporaries
from rsst.folder.layout import CONFIG, RunFiles
from rsst.folder.naming import RunFolderError, config_hash
from rsst.tracking import to_csv

log = logging.getLogger("rsst")


def refuse_foreign(run_dir: Path, our_hash: str) -> None:
    """A new run may not start in a folder holding another config's files; name both hashes."""
    files = RunFiles(run_dir)
    cfg_file = files.config
    theirs = None
    if cfg_file.is_file():
        try:
            theirs = config_hash(OmegaConf.create(yaml.safe_load(cfg_file.read_text())))
        except Exception:  # an unreadable config.yaml: judge the folder by its other files
            theirs = "unreadable"
    results = [path.name for path in files.results if path.exists()]
    if theirs is not None and theirs != our_hash:
        raise RunFolderError(
            f"{run_dir} holds another config's run (config {theirs}; this run is config {our_hash}); "
            "choose another paths.run_dir, or move that folder away"
        )
    if theirs is None and results:
        raise RunFolderError(
            f"{run_dir} holds results ({', '.join(results)}) but no {CONFIG} or checkpoint; this run is "
            f"config {our_hash}; choose another paths.run_dir, or move that folder away"
        )


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files interrupted atomic writes left in the run folder; return them."""
    files = RunFiles(run_dir)
    gone = [p for folder in (run_dir, files.masks_dir, files.weights_dir) for p in leftover_temporaries(folder)]
    for p in gone:
        p.unlink(missing_ok=True)
    if gone:
        log.info("removed %d leftover temporary file(s): %s", len(gone), ", ".join(str(p) for p in gone))
    return gone


def _masks_differ(path: Path, masks: Mapping[str, torch.Tensor]) -> bool:
    try:
        on_disk = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return True
    return (
        not isinstance(on_disk, dict)
        or on_disk.keys() != masks.keys()
        or any(not torch.equal(on_disk[n].bool(), m.bool().cpu()) for n, m in masks.items())
    )


def repair(
    run_dir: Path,
    config_text: str,
    epoch_rows: Sequence[dict[str, Any]],
    round_rows: Sequence[dict[str, Any]],
    tickets: Mapping[int, Mapping[str, torch.Tensor]],
    last_weights: Callable[[], Mapping[str, torch.Tensor]] | None,
) -> list[Path]:
    """Rewrite the run's files from the checkpoint's state; return the files that cannot be rebuilt.

    ``tickets`` maps each finished round to its final masks; ``last_weights`` gives the last
    finished round's weights when the run stands at a round boundary (else None).
    """
    files = RunFiles(run_dir)
    cfg_file = files.config
    if not cfg_file.is_file() or cfg_file.read_text() != config_text:
        if cfg_file.is_file():
            log.warning("%s differed from the checkpoint's config: rewritten", cfg_file)
        atomic_write_text(cfg_file, config_text)
    atomic_write_json(files.rounds, list(round_rows))
    if epoch_rows:
        atomic_write_text(files.metrics, to_csv(epoch_rows))
    lost = []
    done = sum(1 for row in round_rows if "branch" not in row)  # the tickets' rows; controls carry a branch
    for r in range(done):
        mask_file = files.masks(r)
        if r in tickets:
            if not mask_file.is_file() or _masks_differ(mask_file, tickets[r]):
                log.warning("%s was missing or did not match the checkpoint: rebuilt", mask_file)
                atomic_torch_save({n: m.bool().cpu() for n, m in tickets[r].items()}, mask_file)
        elif not mask_file.is_file():
            lost.append(mask_file)
        weights_file = files.weights(r)
        if not weights_file.is_file():
            if r == done - 1 and last_weights is not None:
                log.warning("%s was missing: rebuilt from the checkpoint", weights_file)
                atomic_torch_save(dict(last_weights()), weights_file)
            else:
                lost.append(weights_file)
    for path in lost:
        log.warning("%s is missing and cannot be rebuilt from the checkpoint", path)
    return lost
