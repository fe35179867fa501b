"""Epochs and evaluation: one epoch of a round or control, with its progress bar and its row.

An :class:`Epochs` holds what every epoch of a run uses (the data, the forward functions, the
execution, the prunable weights and this rank's shard); the run's state, optimizer and penalty
are handed to :meth:`Epochs.run` by the round loop, which owns them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm.auto import tqdm

from rsst.loop.divergence import check_epoch
from rsst.loop.hot_loop import evaluate, evaluate_counts, train_epoch
from rsst.loop.record import fingerprint
from rsst.loop.stability import STABILITY, copy_seed
from rsst.loop.state import RunState
from rsst.parallel import ddp, dist
from rsst.pruning.masks import apply_masks_
from rsst.pruning.strategies import Penalty, Strategy
from rsst.runtime.execution import Execution
from rsst.seeds import derive_seed


def epoch_seed(seed: int, round_: int, epoch: int) -> int:
    """The data-order seed of one epoch: a pure function, so a resumed epoch replays exactly.

    Hashed into 32 bits (:func:`rsst.seeds.derive_seed`): each run seed has its own data order.
    """
    return derive_seed("epoch", seed, round_, epoch)


@dataclass
class Epochs:
    cfg: DictConfig
    data: Any  # a data module (rsst.data)
    model: nn.Module
    forward: Callable[[Tensor], Tensor]  # the (compiled) model, for evaluation
    train_forward: Callable[[Tensor], Tensor]  # the same in DistributedDataParallel in a multi-process run
    execution: Execution
    weights: dict[str, Tensor]
    strategy: Strategy
    device: torch.device
    shard: tuple[int, int] | None
    writer: bool

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def steps(self) -> int:
        """Training batches (optimizer steps) per epoch."""
        return self.data.num_batches("train", self.cfg.train.batch_size)

    def train_batches(self, seed: int, sharded: bool = True, start: int = 0):
        """One epoch of training batches in the order of ``seed``: this rank's shards of them unless not ``sharded``.

        ``start``: from that batch of the epoch on (passed only when set, so a data module without it still serves
        every run that does not rewind to a step inside an epoch).
        """
        shard = self.shard if sharded else None
        more = {"start": start} if start else {}
        return self.data.batches("train", self.cfg.train.batch_size, self.device, seed=seed, shard=shard, **more)

    def global_batch_sizes(self) -> list[int] | None:
        """The size of every global training batch of an epoch (a multi-process run scales its loss by them)."""
        if self.shard is None:
            return None
        n, size = self.data.size("train"), self.cfg.train.batch_size
        return [min(size, n - start) for start in range(0, n, size)]

    def evaluate(self, split: str) -> float:
        """Top-1 accuracy on ``split``; a multi-process run evaluates a share per rank and reduces the counts."""
        batches = self.data.batches(split, self.cfg.train.eval_batch_size, self.device, shard=self.shard)
        if self.shard is None:
            return evaluate(self.forward, batches, self.execution)
        return dist.reduce_accuracy(*evaluate_counts(self.forward, batches, self.execution))

    def evaluate_ticket(self, state: RunState, penalty: Penalty | None) -> dict[str, Any]:
        """RSST and ADMM train a denser mask than their ticket: evaluate the ticket itself as well.

        The ticket is the trained weights times the mask the round would end with now
        (``strategy.final_masks``); the weights are restored exactly afterwards. ``ticket_mask``
        fingerprints that mask, so the round's best epoch is chosen among evaluations of the
        mask it really ends with (ADMM's support can move between epochs).
        """
        assert state.plan is not None
        if state.branch is not None:
            return {}
        final = self.strategy.final_masks(state.plan, penalty)
        if final.equal(state.plan.train):
            return {}
        weights = list(self.weights.values())
        kept = [w.detach().clone() for w in weights]
        apply_masks_(weights, [final[n] for n in self.names])
        try:
            val, test = self.evaluate("val"), self.evaluate("test")
        finally:
            with torch.no_grad():
                torch._foreach_copy_(weights, kept)
        return {"ticket_val_acc": val, "ticket_test_acc": test, "ticket_mask": fingerprint(final)}

    def run(
        self,
        state: RunState,
        optimizer,
        scheduler,
        penalty: Penalty | None,
        start_step: int = 0,
        after_step: tuple[int, Callable[[], None]] | None = None,
    ) -> tuple[dict[str, Any], float]:
        """Train epoch ``state.epoch`` of the current round or control: its row (not yet recorded) and seconds.

        ``start_step``: the round trains round 0's schedule from that step on, so the epoch holding it starts
        at its batch ``start_step mod steps``. ``after_step``: see :func:`~rsst.loop.hot_loop.train_epoch`.
        The stability copy (:mod:`rsst.loop.stability`) draws its own data order. A non-finite loss or weight
        raises :class:`~rsst.loop.divergence.Diverged` before the epoch is evaluated, so the loop neither
        saves nor records it.
        """
        r, e, cfg = state.current_round, state.epoch, self.cfg
        assert state.plan is not None and optimizer is not None and scheduler is not None
        start = time.perf_counter()
        skip = max(start_step - e * self.steps(), 0)  # batches of this epoch before the round's first step
        seed = copy_seed(cfg.seed, r, e) if state.branch == STABILITY else epoch_seed(cfg.seed, r, e)
        sizes = self.global_batch_sizes()
        if penalty is not None:
            penalty.start_epoch(e)
        with (
            tqdm(
                total=self.steps() - skip,
                desc=f"round {r}{f' {state.branch}' if state.branch else ''} epoch {e + 1}/{cfg.train.epochs}",
                leave=False,
                disable=not (cfg.progress and self.writer),
                dynamic_ncols=True,
            ) as bar,
            ddp.synced(self.model, self.shard is not None),
        ):
            stats = train_epoch(
                self.train_forward,
                self.train_batches(seed, start=skip),
                optimizer,
                scheduler,
                list(self.weights.values()),
                [state.plan.train[n] for n in self.names],
                grad_hook=penalty,
                progress=bar,
                execution=self.execution,
                global_sizes=None if sizes is None else sizes[skip:],
                after_step=after_step,
            )
        # the loss is on the host already; the weights are read once: a diverged epoch goes no further
        check_epoch(
            cfg, r, state.branch, e, stats["train_loss"], self.model.state_dict(), self.execution.scaler is not None
        )
        row = {
            "round": r,
            **({} if state.branch is None else {"branch": state.branch}),
            "epoch": e,
            "lr": optimizer.param_groups[0]["lr"],
            **stats,
            "val_acc": self.evaluate("val"),
            "test_acc": self.evaluate("test"),
            "remain_weight": 100.0 * state.plan.train.density(),
            **self.evaluate_ticket(state, penalty),
            **({} if penalty is None else penalty.metrics()),
        }
        return row, time.perf_counter() - start
