"""Opening a run folder: refuse another config's folder, and repair what a kill could leave behind.

The checkpoint is the source of truth. On every start (finished run or not) the files that can be
rebuilt from it are rewritten: ``rounds.json``, ``metrics.csv``, ``config.yaml`` and every
``masks/round_<r>.pt``; the last finished round's ``weights/round_<r>.pt`` when the run stands at a
round boundary; leftover temporary files of interrupted atomic writes are removed. What cannot be
rebuilt is named in a warning (and ``rsst.export`` / ``rsst.report`` refuse it where they need it).

Decide first, touch after: :func:`judge` says, reading only, whether a folder is this run's (absent,
this config's checkpoint, or nothing of another run) before the run creates, removes or rewrites
anything in it; a refused folder is left byte for byte as it was. The leftover sweep removes only
the names the project's own atomic writes make (:meth:`rsst.folder.layout.RunFiles.leftover_temporaries`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rsst.folder.atomic import atomic_torch_save, atomic_write_json, atomic_write_text
from rsst.folder.checkpoint import CheckpointError, file_sum, load_checkpoint, mismatch, read_identity
from rsst.folder.layout import CONFIG, MASKS, WEIGHTS, RunFiles, printable
from rsst.folder.naming import RunFolderError, written_config_hash
from rsst.folder.records import to_csv
from rsst.folder.safeload import UnreadableYaml, dense_storage, load_tensors, load_yaml

log = logging.getLogger("rsst")


def nothing_trained(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds no trace of training: no checkpoint, no epoch (``metrics.csv``), no finished
    round (``rounds.json`` absent or an empty list) and no round file in ``masks/`` or ``weights/``.

    A start that failed before its first save (a tracker that did not start, a Ctrl-C) leaves such a
    folder: its ``config.yaml``, ``provenance.json`` and ``run.log`` only.
    """
    files = RunFiles(run_dir)
    if files.checkpoint.exists() or files.metrics.exists():
        return False
    if files.rounds.exists():
        try:
            if files.rounds.stat().st_size > 64 or json.loads(files.rounds.read_text() or "null") != []:
                return False
        except (OSError, ValueError):
            return False
    return not any(files.kept_rounds(kind) or any((run_dir / kind).glob("*")) for kind in (WEIGHTS, MASKS))


def refuse_foreign(run_dir: Path, our_hash: str) -> None:
    """A new run may not start in a folder holding another config's files; name both hashes.

    A folder where nothing was trained (:func:`nothing_trained`) holds nothing to lose: the new run
    starts in it and rewrites its ``config.yaml``, whatever config that named.
    """
    files = RunFiles(run_dir)
    cfg_file = files.config
    theirs = None
    if cfg_file.is_file():
        try:  # hashed as written: nothing in a received file is resolved
            data = load_yaml(cfg_file)
            theirs = written_config_hash(data) if isinstance(data, dict) else "unreadable"
        except (OSError, UnreadableYaml):  # an unreadable config.yaml: judge the folder by its other files
            theirs = "unreadable"
    results = [path.name for path in files.results if path.exists()]
    if theirs not in (None, our_hash) and nothing_trained(run_dir):
        log.info("%s holds config %s's files but nothing trained: this run (config %s) starts in it", run_dir,
                 theirs, our_hash)  # fmt: skip
        return
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


def refuse_links(run_dir: Path) -> None:
    """Raise :class:`RunFolderError` if ``run_dir`` is not a folder, or if one of its entries is a symbolic link."""
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is not a folder; choose another paths.run_dir")
    links = RunFiles(run_dir).links()
    if links:
        names = ", ".join(repr(p.name) for p in links)
        raise RunFolderError(
            f"{run_dir} holds symbolic links ({names}); a run never writes through a link out of its folder: "
            "replace each by the file or folder it points to, or choose another paths.run_dir"
        )


def judge(run_dir: Path, our_hash: str, our_config: dict[str, Any] | None = None) -> bool:
    """Whether ``run_dir`` may be this run's, decided by reading only: True to resume it, False to start in it.

    A folder that does not exist, or holds neither a checkpoint nor another run's files, starts a new
    run; a checkpoint of this config resumes. Anything else raises (and nothing has been touched):
    :class:`RunFolderError` for another run's files, a folder that is not one, or an entry that is a
    symbolic link; :class:`~rsst.folder.checkpoint.CheckpointError` for another config's or an
    unreadable checkpoint (``our_config``, the hashed config, lets it name the keys that differ).
    """
    files = RunFiles(run_dir)
    if not run_dir.exists() and not run_dir.is_symlink():
        return False
    refuse_links(run_dir)
    if files.checkpoint.exists():
        try:
            if read_identity(files.checkpoint) == our_hash:
                return True
        except CheckpointError:
            pass
        load_checkpoint(files.checkpoint, our_hash, our_config)  # raises, naming what differs or why unreadable
        return True
    refuse_foreign(run_dir, our_hash)
    return False


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files the run's own interrupted atomic writes left in its folder; return them."""
    gone = RunFiles(run_dir).leftover_temporaries()
    for p in gone:
        p.unlink(missing_ok=True)
    if gone:  # the names are the project's own; printed escaped all the same
        shown = ", ".join(printable(p) for p in gone)
        log.info("removed %d leftover temporary file(s): %s", len(gone), shown)
    return gone


def _masks_differ(path: Path, masks: Mapping[str, torch.Tensor]) -> bool:
    """Whether the mask file at ``path`` is not ``masks``; its tensors are compared only once each has the mask's
    shape and stores every element (a received file may declare far more than it stores)."""
    try:
        on_disk = load_tensors(path)
    except Exception:
        return True
    return (
        not isinstance(on_disk, dict)
        or on_disk.keys() != masks.keys()
        or not all(
            isinstance(t, torch.Tensor) and t.shape == masks[n].shape and dense_storage(t) for n, t in on_disk.items()
        )
        or any(not torch.equal(on_disk[n].bool(), m.bool().cpu()) for n, m in masks.items())
    )


def repair(
    run_dir: Path,
    config_text: str,
    epoch_rows: Sequence[dict[str, Any]],
    round_rows: Sequence[dict[str, Any]],
    tickets: Mapping[int, Mapping[str, torch.Tensor]],
    last_weights: Callable[[], Mapping[str, torch.Tensor]] | None,
    sums: dict[str, str] | None = None,
) -> list[Path]:
    """Rewrite the run's files from the checkpoint's state; return the files that cannot be rebuilt.

    ``tickets`` maps each finished round to its final masks; ``last_weights`` gives the last
    finished round's weights when the run stands at a round boundary (else None). ``sums`` (the
    checkpoint's record of the round files, updated in place for a rebuilt one) finds a weights file
    that was replaced or damaged: it is rebuilt where the checkpoint holds its weights, else named.
    """
    sums = {} if sums is None else sums
    files = RunFiles(run_dir)
    cfg_file = files.config
    if not cfg_file.is_file() or cfg_file.read_text() != config_text:
        if cfg_file.is_file():
            # the run's identity was checked before this (folder name and checkpoint hash): only the text differs
            log.warning(
                "%s did not hold this run's config as written (edited, damaged, or from another rsst version that "
                "writes other keys at their neutral values): rewritten",
                cfg_file,
            )
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
                sums[mask_file.relative_to(run_dir).as_posix()] = file_sum(mask_file)
        elif not mask_file.is_file():
            lost.append(mask_file)
        weights_file = files.weights(r)
        wrong = mismatch(run_dir, weights_file, sums)
        if not weights_file.is_file() or wrong is not None:
            if r == done - 1 and last_weights is not None:
                log.warning("%s: rebuilt from the checkpoint", wrong or f"{weights_file} was missing")
                atomic_torch_save(dict(last_weights()), weights_file)
                sums[weights_file.relative_to(run_dir).as_posix()] = file_sum(weights_file)
            elif wrong is not None:
                log.warning("%s, and the checkpoint does not hold that round's weights to rebuild it", wrong)
                lost.append(weights_file)
            else:
                log.warning("%s is missing and cannot be rebuilt from the checkpoint", weights_file)
                lost.append(weights_file)
    return lost
