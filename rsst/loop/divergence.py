"""Divergence: a non-finite loss or weight ends the round with one line, and nothing diverged is recorded.

Checked once per epoch, where the epoch's loss is already read on the host (:func:`train_epoch`
returns it as a float) and where the weights are about to be saved: no host synchronisation is
added to any step. The epoch that diverged is neither saved nor recorded, so the checkpoint keeps
the last finite epoch and ``rounds.json`` holds only rounds that finished finite.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from omegaconf import DictConfig
from torch import Tensor

from rsst.errors import RsstError

log = logging.getLogger("rsst")


class Diverged(RsstError, ArithmeticError):
    """Training produced a non-finite loss or weight; the message names the round, the epoch, the value and
    what to try. ``launch.py`` prints it on one line and exits 2; in a sweep the job fails alone. The run
    records it in ``diverged.json`` (:meth:`record`), which ``rsst.report`` shows."""

    def __init__(self, message: str, round_: int | None = None, branch: str | None = None, epoch: int | None = None):
        super().__init__(message)
        self.round, self.branch, self.epoch = round_, branch, epoch

    def record(self) -> dict[str, object]:
        """What ``diverged.json`` holds: the round, the branch (a control, or null), the epoch from 1, the line."""
        epoch = None if self.epoch is None else self.epoch + 1
        return {"round": self.round, "branch": self.branch, "epoch": epoch, "message": str(self)}


def non_finite(tensors: Mapping[str, Tensor]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity (one host read for all of them)."""
    floats = {n: t for n, t in tensors.items() if t.is_floating_point()}
    if not floats:
        return []
    finite = torch.stack([torch.isfinite(t).all() for t in floats.values()])
    if bool(finite.all()):
        return []
    return [n for n, ok in zip(floats, finite.tolist(), strict=True) if not ok]


def where(round_: int, branch: str | None, epoch: int) -> str:
    """``round 1, epoch 3`` (``round 1 reinit control, epoch 3``); the epoch counted from 1, as the progress bar."""
    return f"round {round_}{f' {branch} control' if branch else ''}, epoch {epoch + 1}"


def check_epoch(
    cfg: DictConfig,
    round_: int,
    branch: str | None,
    epoch: int,
    train_loss: float,
    state: Mapping[str, Tensor],
    scaled: bool = False,
) -> None:
    """Raise :class:`Diverged` if the epoch's ``train_loss`` or a tensor of ``state`` (the model's) is not finite.

    With a gradient scaler (fp16, ``scaled``) a non-finite loss in some steps is the scaler's business
    (it skips those steps and lowers its scale), so there only non-finite weights stop the run.
    """
    bad = non_finite(state)
    loss_bad = not math.isfinite(train_loss)
    if not bad and not (loss_bad and not scaled):
        if loss_bad:
            log.warning("%s: the train loss is %s; the fp16 gradient scaler skipped those steps", where(
                round_, branch, epoch), train_loss)  # fmt: skip
        return
    value = f"the train loss is {train_loss:.4g}"
    if bad:
        value += f" and {len(bad)} of {sum(t.is_floating_point() for t in state.values())} tensors of the model hold "
        value += f"non-finite values (first: {bad[0]})"
    lr = cfg.optimizer.get("lr")
    amp = cfg.train.get("amp")
    hints = [f"a lower optimizer.lr (it is {lr})" if lr is not None else "a lower optimizer.lr"]
    if amp not in (None, "off"):
        hints.append(f"train.amp=off (fp32; it is {amp})")
    raise Diverged(
        f"training diverged at {where(round_, branch, epoch)}: {value}; nothing of this epoch is saved or recorded "
        f"(the checkpoint keeps the last finite epoch); try {' or '.join(hints)}",
        round_,
        branch,
        epoch,
    )
