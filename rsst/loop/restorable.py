"""What a checkpoint must hold before the loop restores it: checked against this run's model and config.

A checkpoint's config hash and the round files' sums say which run wrote it, not that its contents
fit that run: a damaged or hand-edited checkpoint may carry another network's tensors, a mask with
a declared shape far beyond what it stores (a stride-0 view), a random state of the wrong kind, or a
round beyond the run's. Each part is checked here, by its shape, dtype and storage first and only then
by its values, so that checking costs no more than the model does; anything else the loop's
:meth:`~rsst.loop.rounds.RoundLoop.restore` cannot take is caught there. Either way the run stops
with one line naming the checkpoint and the part, before anything in the folder is rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rsst.config.schema import CONTROLS
from rsst.folder.checkpoint import CheckpointError
from rsst.folder.safeload import dense_storage
from rsst.loop.stability import STABILITY

if TYPE_CHECKING:
    from rsst.loop.rounds import RoundLoop

BRANCHES = (*CONTROLS, STABILITY)  # what a round's branch may be: a control, or the stability copy

# What Python raises when a checkpoint's part does not fit the object restored from it.
RESTORE_FAILURES = (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError)


class _Wrong(Exception):
    """A part of the checkpoint that does not fit this run; the message says which and why."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tensors(blob: Any, like: Mapping[str, Tensor], what: str, masks: bool = False) -> None:
    """``blob`` holds ``like``'s names, each a tensor of its shape, storing each element once; masks hold 0 and 1,
    other tensors ``like``'s dtypes."""
    if not isinstance(blob, Mapping) or not all(isinstance(v, Tensor) for v in blob.values()):
        raise _Wrong(f"{what} is not a mapping of names to tensors")
    missing, extra = sorted(set(like) - set(blob)), sorted(set(blob) - set(like))
    if missing or extra:
        raise _Wrong(f"{what} does not name this run's tensors (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, ref in like.items():
        t = blob[name]
        if t.shape != ref.shape or not dense_storage(t):
            raise _Wrong(f"{what}: {name} has shape {tuple(t.shape)} (storing {t.untyped_storage().nbytes()} bytes), "
                         f"expected {tuple(ref.shape)}")  # fmt: skip
        if not masks and t.dtype != ref.dtype:
            raise _Wrong(f"{what}: {name} is {t.dtype}, expected {ref.dtype}")
    if masks:
        for name, m in blob.items():
            if m.dtype != torch.bool and (m.is_complex() or not bool(((m == 0) | (m == 1)).all())):
                raise _Wrong(f"{what}: the mask of {name} holds values other than 0 and 1")


def _count(value: Any, low: int, high: int, what: str) -> None:
    if not _is_int(value) or not low <= value <= high:
        raise _Wrong(f"{what} is {value!r}, expected an integer from {low} to {high}")


def _check(blob: Mapping[str, Any], loop: RoundLoop) -> None:
    cfg = loop.cfg
    model = {k: v.detach() for k, v in loop.model.state_dict().items()}
    weights = {n: w.detach() for n, w in loop.weights.items()}
    _count(blob.get("round"), 0, cfg.prune.rounds, "round")
    _count(blob.get("epoch"), 0, cfg.train.epochs, "epoch")
    branch, pending = blob.get("branch"), blob.get("pending", [])
    if branch is not None and branch not in BRANCHES:
        raise _Wrong(f"branch is {branch!r}, expected none or one of {', '.join(BRANCHES)}")
    if not isinstance(pending, list) or not all(p in BRANCHES for p in pending):
        raise _Wrong(f"pending is {pending!r}, expected a list of branches from {', '.join(BRANCHES)}")
    _tensors(blob.get("model"), model, "model")
    for key in ("theta_0", "theta_rewind", "trunk_weights"):
        if key in blob and (blob[key] is not None or key == "theta_0"):
            _tensors(blob[key], model, key)
    for key in ("plan", "trunk_plan"):  # the round's plan; the trunk's, kept while a stability copy trains
        plan = blob.get(key)
        if plan is None:
            continue
        if not isinstance(plan, Mapping):
            raise _Wrong(f"{key} is not a mapping of masks")
        for part in ("train", "final", "penalised"):
            if part != "penalised" or plan.get(part) is not None:
                _tensors(plan.get(part), weights, f"{key}.{part}", masks=True)
    if blob.get("ticket") is not None:
        _tensors(blob["ticket"], weights, "ticket", masks=True)
    tickets = blob.get("tickets", {})
    if not isinstance(tickets, Mapping):
        raise _Wrong("tickets is not a mapping of rounds to masks")
    for r, masks in tickets.items():
        _count(int(r) if isinstance(r, str) and r.isdigit() else r, 0, cfg.prune.rounds - 1, "a key of tickets")
        _tensors(masks, weights, f"tickets[{r}]", masks=True)
    for key in ("epoch_rows", "round_rows"):
        rows = blob.get(key, [])
        if not isinstance(rows, list) or not all(isinstance(row, dict) and _is_int(row.get("round")) for row in rows):
            raise _Wrong(f"{key} is not a list of rows, each with an integer round")
        try:  # what repair writes them as: a number Python will not print, or a value JSON has no form for
            json.dumps(rows)
        except (ValueError, TypeError, RecursionError) as exc:
            raise _Wrong(f"{key} holds a value that cannot be written as JSON ({type(exc).__name__})") from None
    sums = blob.get("file_sums", {})
    if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sums.items()):
        raise _Wrong("file_sums is not a mapping of file names to sums")
    rng = blob.get("torch_rng")
    like = torch.get_rng_state()
    if not isinstance(rng, Tensor) or rng.dtype != like.dtype or rng.shape != like.shape or not dense_storage(rng):
        found = f"{rng.dtype} of shape {tuple(rng.shape)}" if isinstance(rng, Tensor) else type(rng).__name__
        raise _Wrong(
            f"torch_rng is {found}, expected PyTorch's random state ({like.dtype} of shape {tuple(like.shape)})"
        )


def restore_checked(loop: RoundLoop, blob: dict[str, Any], path: Path) -> None:
    """``loop.restore(blob)``, once every part of ``blob`` fits this run; :class:`CheckpointError` naming ``path``
    and the part otherwise."""
    advice = "move it away to start this run over, or restore it from a backup"
    try:
        _check(blob, loop)
    except _Wrong as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this run: {exc}; {advice}") from None
    try:
        loop.restore(blob)
    except RESTORE_FAILURES as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"checkpoint {path} does not restore into this run ({type(exc).__name__}: {detail}); {advice}"
        ) from None
