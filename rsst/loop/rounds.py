"""The round lifecycle: plan a round from the trained weights, rewind, train it epoch by epoch, end it.

:class:`RoundLoop` holds the objects a run builds from its config (strategy, data, model, execution,
tracker) and the run's :class:`~rsst.loop.state.RunState`, with the optimizer, scheduler and penalty
of the round in progress. In a run of several processes every rank holds the same state; each trains
on its shard of every batch, and only rank 0 (``writer``) writes files.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from rsst.config.checks import ConfigError, build
from rsst.folder.atomic import atomic_torch_save
from rsst.folder.checkpoint import clone_state, file_sum, mismatch, save_checkpoint
from rsst.folder.layout import RunFiles
from rsst.folder.naming import RunFolderError, config_hash, hashed_config
from rsst.folder.safeload import UnloadableFile, load_tensors
from rsst.folder.tickets import save_masks
from rsst.loop import controls, stability
from rsst.loop.epochs import Epochs, epoch_seed
from rsst.loop.optim import build_optimizer, build_scheduler
from rsst.loop.pretrained import load_pretrained
from rsst.loop.record import fingerprint, round_record, ticket_numbers, ticket_row
from rsst.loop.stability import STABILITY
from rsst.loop.state import RunState
from rsst.models import prunable_weights
from rsst.models.norms import following_norms
from rsst.models.size import is_channel_wise, structured_size
from rsst.parallel import ddp, dist
from rsst.parallel.fail_together import together
from rsst.pruning.masks import Masks, apply_masks_
from rsst.pruning.regularizer import dropped_channels, penalised_norm
from rsst.pruning.strategies import Penalty, PruneContext, RoundPlan, Strategy, imp_equivalent_density
from rsst.runtime.environment import Runtime, resolve_runtime
from rsst.runtime.execution import Execution, compile_model
from rsst.tracking import Silent

log = logging.getLogger("rsst")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class RoundLoop:
    """The state of one run, and the verbs of the round loop."""

    def __init__(self, cfg: DictConfig, run_dir: Path, runtime: Runtime | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.hash = config_hash(cfg)
        if runtime is None:  # one process, as the unit tests build loops
            runtime = resolve_runtime(cfg.device, cfg.train.amp, cfg.train.batch_size, from_launcher=False)
        self.runtime = runtime
        self.device, self.env, self.writer, self.shard = runtime.device, runtime.env, runtime.writer, runtime.shard
        seed_everything(cfg.seed)
        self.strategy: Strategy = build(cfg.struct, "struct")
        self.data = build(cfg.dataset, "dataset")
        self.factory = build(cfg.arch, "arch")
        self.execution = Execution.from_config(cfg.train.amp, cfg.train.channels_last, self.device)
        self.model: nn.Module = self.execution.prepare(self.new_model().to(self.device))
        forward = compile_model(self.model, cfg.train.compile)  # compiled once; shares self.model's tensors
        self.tracker = build(cfg.logger, "logger") if self.writer else Silent()
        self.make_optimizer = build(cfg.optimizer, "optimizer")  # one optimiser per round, from this factory
        self.check_optimizer()
        self.weights = prunable_weights(self.model, cfg.prune.include_stem, cfg.prune.include_fc)
        self.names = list(self.weights)
        self.epochs = Epochs(
            cfg, self.data, self.model, forward, forward, self.execution, self.weights, self.strategy,
            self.device, self.shard, self.writer,
        )  # fmt: skip
        self.norms = self.find_norms()
        self.check_rewind_step()
        self.state = RunState(theta_0=clone_state(self.model))
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.penalty: Penalty | None = None  # rebuilt from the plan; its state_dict(), if any, is checkpointed

    def find_norms(self) -> dict[str, str] | None:
        """``penalty_scope=channels``: each prunable conv weight's name -> the name of the BatchNorm scale after it.

        None for any other method or scope. Found once, before training, by one forward pass on a
        zero input (:func:`rsst.models.norms.following_norms`).
        """
        if getattr(self.strategy, "penalty_scope", "weights") != "channels":
            return None
        shape = (1, self.data.in_channels, self.data.image_size, self.data.image_size)
        params = dict(self.model.named_parameters())
        found = {
            f"{conv}.weight": f"{norm}.weight"
            for conv, norm in following_norms(self.model, shape).items()
            if f"{conv}.weight" in self.weights and f"{norm}.weight" in params
        }
        if not found:
            log.warning(
                "struct.penalty_scope=channels: no BatchNorm follows a prunable conv of this network (%s); "
                "the penalty acts on the conv weights alone, as with penalty_scope=weights",
                type(self.model).__name__,
            )
        return found

    def norm_scales(self) -> dict[str, torch.Tensor] | None:
        """The model's own gamma parameters for :meth:`find_norms`'s pairs (the tensors the penalty updates)."""
        if self.norms is None:
            return None
        params = dict(self.model.named_parameters())
        return {conv: params[gamma] for conv, gamma in self.norms.items()}

    def distribute(self) -> None:
        """Multi-process run: BatchNorm over the global batch, and the model in DistributedDataParallel.

        A collective (DDP checks that every rank holds the same parameters): every rank calls it.
        """
        if not self.env.is_distributed:
            return
        ddp.global_batch_norm(self.model)
        self.epochs.train_forward = compile_model(ddp.wrap(self.model, self.env, self.device), self.cfg.train.compile)

    def leave_group(self) -> None:
        """Multi-process run: drop the DistributedDataParallel wrapper before the process group is destroyed.

        Its reducer holds gloo work; left to the interpreter's exit, after the group is gone, its teardown
        aborted a rank now and then ("terminate called without an active exception", exit -6: 2 of 30
        two-process runs of tests/test_distributed.py's worker, 0 of 40 once the wrapper went first).
        """
        if self.env.is_distributed:
            self.epochs.train_forward = self.epochs.forward

    @property
    def files(self) -> RunFiles:
        """The names of the run folder's files."""
        return RunFiles(self.run_dir)

    def new_model(self) -> nn.Module:
        """The network ``arch`` describes for the data; one line (:class:`ConfigError`) if memory cannot hold it."""
        data = self.data
        try:
            return self.factory(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            asked = re.search(r"allocate ([0-9]+) bytes", str(exc))
            if not isinstance(exc, torch.OutOfMemoryError) and "allocate memory" not in str(exc):
                raise
            keys = ", ".join(f"arch.{k}={v}" for k, v in self.cfg.arch.items() if not str(k).startswith("_"))
            size = f" (one of its tensors asks for {int(asked[1]) / 2**30:.1f} GiB)" if asked else ""
            raise ConfigError(
                f"{keys or 'arch'}: the network does not fit in memory{size}; "
                "choose a smaller arch.width (or another arch)"
            ) from None

    # -- the rewind point and the schedule a round trains -----------------------------------------

    def check_rewind_step(self) -> None:
        """``prune.rewind=step``: the step must lie inside round 0, so that a pruned round has steps left to train."""
        prune, train = self.cfg.prune, self.cfg.train
        total = train.epochs * self.epochs.steps()
        if prune.rewind == "step" and prune.rewind_step >= total:
            raise ConfigError(
                f"prune.rewind_step={prune.rewind_step} is invalid: expected an integer below {total}, the optimizer "
                f"steps of round 0 (train.epochs={train.epochs} x {self.epochs.steps()} batches of "
                f"train.batch_size={train.batch_size} over {self.data.size('train')} training images)"
            )

    def rewind_point(self) -> int:
        """The optimizer steps of round 0 after which ``theta_rewind`` is taken (0: it is ``theta_0``)."""
        prune = self.cfg.prune
        if prune.rewind == "step":
            return int(prune.rewind_step)
        if prune.rewind == "epoch":
            return int(prune.rewind_epoch) * self.epochs.steps()
        return 0

    def start_step(self) -> int:
        """The step of round 0's schedule the current round or branch starts at (its lr, data position, penalty).

        A pruned round and its controls and copy start at ``prune.rewind_step`` with ``rewind=step``, and at step 0
        otherwise (``rewind=epoch`` restarts the schedule, as the original's ``rewind_lt``); round 0 starts at 0,
        and its stability copy at the rewind point, where it continues round 0's training.
        """
        state = self.state
        if state.current_round == 0:
            return self.rewind_point() if state.branch == STABILITY else 0
        return int(self.cfg.prune.rewind_step) if self.cfg.prune.rewind == "step" else 0

    def first_epoch(self) -> int:
        """The epoch (0-based) the current round or branch starts in: the one holding :meth:`start_step`."""
        return self.start_step() // self.epochs.steps()

    def rewind_snapshot(self) -> tuple[int, Callable[[], None]] | None:
        """Round 0's epoch that reaches the rewind point: ``(its step, keep it)`` for :meth:`Epochs.run`, else None.

        The whole state_dict is kept (BatchNorm buffers too) and, with ``prune.stability``, the optimizer state,
        for round 0's stability copy.
        """
        state, k, steps = self.state, self.rewind_point(), self.epochs.steps()
        if state.round != 0 or state.branch is not None or k == 0 or (k - 1) // steps != state.epoch:
            return None

        def keep() -> None:
            state.theta_rewind = clone_state(self.model)
            if self.cfg.prune.stability:
                assert self.optimizer is not None
                state.rewind_optimizer = copy.deepcopy(self.optimizer.state_dict())  # no tensor shared

        return (k - 1) % steps, keep

    # -- state ------------------------------------------------------------------------------------

    def check_pretrained(self) -> dict[str, torch.Tensor] | None:
        """``prune.rewind=pretrained``: the file's weights as theta_0, checked before anything is written."""
        if self.cfg.prune.rewind != "pretrained":
            return None
        classifier = getattr(self.model, "classifier_name", "fc")
        return load_pretrained(self.cfg.prune.pretrained, self.model, classifier)

    def fresh_start(self, pretrained: dict[str, torch.Tensor] | None = None) -> None:
        prune, state = self.cfg.prune, self.state
        if prune.rewind == "pretrained":
            state.theta_0 = pretrained if pretrained is not None else self.check_pretrained()
            self.model.load_state_dict(state.theta_0)
        if self.rewind_point() == 0:  # init, pretrained, or a rewind to epoch 0 or step 0
            state.theta_rewind = state.theta_0

    def checkpoint(self) -> dict[str, Any]:
        """What ``checkpoint.pt`` holds: the run's identity, its :class:`RunState`, and the live objects."""
        return {
            "config_hash": self.hash,
            "config": hashed_config(self.cfg),
            **self.state.encode(),
            "penalty": self.penalty.state_dict() if hasattr(self.penalty, "state_dict") else None,
            "model": self.model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.execution.scaler is None else self.execution.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def restore(self, blob: dict[str, Any]) -> None:
        """The run as :meth:`checkpoint` saved it."""
        self.state = state = RunState.decode(blob, self.device)
        if state.plan is not None:  # the masks in their weights' layout, as a round that starts makes them
            state.plan = state.plan.like(self.weights)
        if state.ticket is not None:
            state.ticket = state.ticket.like(self.weights)
        self.model.load_state_dict(blob["model"])
        if state.plan is not None:
            self.new_optimizer()
            self.optimizer.load_state_dict(blob["optimizer"])
            self.scheduler.load_state_dict(blob["scheduler"])
            if state.branch in (None, STABILITY):  # the stability copy trains the round's penalty too
                self.new_penalty()
            if blob.get("penalty") is not None:
                self.penalty.load_state_dict(blob["penalty"])
        if self.execution.scaler is not None and blob.get("scaler"):  # fp16: resume at the scale reached
            self.execution.scaler.load_state_dict(blob["scaler"])
        torch.set_rng_state(blob["torch_rng"])
        if blob["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["cuda_rng"])

    def write(self, action: Callable[[], Any]) -> None:
        """Rank 0 writes (``action()``); every rank waits for it, and stops with it if the write fails."""
        together(self.env, lambda: action() if self.writer else None)

    def save(self) -> None:
        """Rank 0 saves the checkpoint (every rank holds the same state); the others wait for it."""
        self.write(lambda: save_checkpoint(self.files.checkpoint, self.checkpoint()))

    # -- the round --------------------------------------------------------------------------------

    def check_optimizer(self) -> None:
        """Build one optimiser over the model, as every round will, so that an option it refuses stops the run
        before the run folder exists (:class:`ConfigError` naming the group)."""
        try:
            build_optimizer(self.make_optimizer, self.model.parameters(), self.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"optimizer: {exc}") from None

    def new_optimizer(self) -> None:
        sched = self.cfg.lr_schedule
        self.optimizer = build_optimizer(self.make_optimizer, self.model.parameters(), self.device)
        self.scheduler = build_scheduler(
            self.optimizer,
            self.epochs.steps(),
            sched.warmup_epochs,
            list(sched.milestones),
            sched.gamma,
            self.start_step(),
        )

    def new_penalty(self) -> None:
        """The strategy's gradient penalty for the current plan (RSST's ``lambda(t) * w`` on ``P_r``), if any."""
        assert self.state.plan is not None
        self.penalty = self.strategy.penalty(
            self.state.plan,
            self.weights,
            self.epochs.steps(),
            self.cfg.train.epochs,
            self.norm_scales(),
            start_step=self.start_step(),
        )

    def target_density(self, round_: int) -> float:
        """``prune.density`` if set, else the density IMP reaches after ``round_`` rounds of ``prune.rate``."""
        if self.cfg.prune.density is not None:
            return float(self.cfg.prune.density)
        total = sum(w.numel() for w in self.weights.values())
        return imp_equivalent_density(total, float(self.cfg.prune.rate), round_)

    def dense_weights(self) -> dict[str, torch.Tensor]:
        """The trained dense network: the state_dict saved at the end of round 0."""
        path = self.files.weights(0)
        try:
            blob = load_tensors(path)
        except FileNotFoundError:
            raise RunFolderError(
                f"{path} is missing: the trained dense network (round 0) is needed to prune, and no other file "
                "holds it; rerun the run into a fresh paths.run_dir"
            ) from None
        except UnloadableFile as exc:
            raise RunFolderError(f"{exc}; it is the trained dense network (round 0), needed to prune") from None
        if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
            raise RunFolderError(f"{path}: expected the trained dense network's state_dict (named tensors)")
        wrong = mismatch(self.run_dir, path, self.state.file_sums)
        if wrong is not None:
            raise RunFolderError(f"{wrong}: it is the trained dense network (round 0), needed to prune; restore it")
        return {k: v.to(self.device) for k, v in blob.items()}

    def begin_round(self) -> None:
        """Plan round ``state.round`` from the trained weights, rewind, and apply the round's training mask."""
        state = self.state
        r = state.round
        if r == 0:
            ones = Masks.ones_like(self.weights).to(self.device)
            state.plan = RoundPlan(train=ones, final=ones)
        else:
            assert state.ticket is not None, "the ticket is set at the end of every round"
            ctx = PruneContext(
                round=r,
                model=self.model,
                weights={n: w.detach() for n, w in self.weights.items()},
                masks=state.ticket,
                rate=float(self.cfg.prune.rate),
                rate_fc=self.cfg.prune.get("rate_fc"),
                rate_output=self.cfg.prune.get("rate_output"),
                # every rank scores on the whole global batches, so the plan does not depend on the world size
                batches=lambda: self.epochs.train_batches(epoch_seed(self.cfg.seed, r, 1 << 15), sharded=False),
                density=self.target_density(r),
                seed=self.cfg.seed,
                theta_rewind=state.theta_rewind,
                dense=self.dense_weights,
            )
            state.plan = self.share_plan(self.strategy.plan(ctx)).like(self.weights)
            assert state.theta_rewind is not None, "theta_rewind is set by the end of round 0"
            self.model.load_state_dict(state.theta_rewind)
            self.check_ranks(f"round {r} start", state.plan.train)
        apply_masks_(self.weights.values(), [state.plan.train[n] for n in self.names])
        state.epoch, state.round_seconds = self.first_epoch(), 0.0
        self.new_optimizer()
        self.new_penalty()

    def dropped_gammas(self, plan: RoundPlan) -> dict[str, torch.Tensor]:
        """``{gamma name: mask of the channels the round drops}`` for the convs :meth:`find_norms` paired."""
        assert plan.penalised is not None and self.norms is not None
        return {
            gamma: dropped_channels(plan.penalised[conv], plan.final[conv])
            for conv, gamma in self.norms.items()
            if conv in plan.penalised
        }

    def share_masks(self, masks: Masks) -> Masks:
        """Multi-process run: rank 0's masks on every rank, in place (each rank computed them from the same inputs)."""
        if self.shard is not None:
            dist.broadcast_masks_(masks)
        return masks

    def share_plan(self, plan: RoundPlan) -> RoundPlan:
        for masks in (plan.train, plan.final, plan.penalised):
            if masks is not None:
                self.share_masks(masks)
        return plan

    def check_ranks(self, what: str, masks: Masks) -> None:
        """Multi-process run: raise on every rank unless the weights, buffers and ``masks`` agree exactly."""
        if self.shard is None:
            return
        tensors = {**self.model.state_dict(), **{f"mask:{n}": m for n, m in masks.items()}}
        dist.check_identical(tensors, what)
        log.info("%s: weights, buffers and masks identical on %d processes", what, self.env.world_size)

    def run_epoch(self) -> None:
        """Train the next epoch of the current round or control and record its row."""
        state = self.state
        row, seconds = self.epochs.run(
            state, self.optimizer, self.scheduler, self.penalty, self.start_step(), self.rewind_snapshot()
        )
        state.round_seconds += seconds
        row["seconds"] = state.round_seconds
        state.epoch_rows.append(row)
        state.epoch += 1

    def end_round(self) -> dict[str, Any]:
        """Switch to the round's final mask, record the round, and save its ticket."""
        state = self.state
        assert state.plan is not None
        r, plan = state.round, state.plan
        final = self.share_masks(self.strategy.final_masks(plan, self.penalty))
        rows = [row for row in state.epoch_rows if row["round"] == r and "branch" not in row]
        separate = not final.equal(plan.train)  # RSST, ADMM: the ticket is not the network as trained
        best = ticket_row(rows, fingerprint(final) if separate else None)
        penalised = {}
        if plan.penalised is not None:  # measured before the switch to the final mask zeroes P_r
            assert state.theta_rewind is not None
            penalised = {
                "reg_lambda": rows[-1].get("reg_lambda"),
                "penalised_norm_start": penalised_norm(state.theta_rewind, plan.penalised),
                "penalised_norm_end": penalised_norm(self.weights, plan.penalised),
            }
            if self.norms:  # penalty_scope=channels: the BatchNorm scales of the channels the round drops
                gammas = self.dropped_gammas(plan)
                params = dict(self.model.named_parameters())
                penalised["penalised_gamma_start"] = penalised_norm(state.theta_rewind, gammas)
                penalised["penalised_gamma_end"] = penalised_norm(params, gammas)
        apply_masks_(self.weights.values(), [final[n] for n in self.names])
        self.check_ranks(f"round {r} end", final)
        final_test = self.epochs.evaluate("test") if separate else rows[-1]["test_acc"]
        final_val = self.epochs.evaluate("val") if best is None else None  # the mask moved after the last eval
        ticket = ticket_numbers(best, separate, final_test, rows[-1], final_val)
        record = round_record(
            r, rows, ticket, final.density(), final.channel_sparsity(), final_test, state.round_seconds, penalised
        )
        if is_channel_wise(final):  # a Refill/RSST ticket: the size of its structured export
            shape = (1, self.data.in_channels, self.data.image_size, self.data.image_size)
            record.update(structured_size(self.model, final, shape))
        state.tickets[r] = {n: m.bool().cpu() for n, m in final.items()}

        def write_ticket() -> None:
            save_masks(final, self.files.masks(r))
            atomic_torch_save(self.model.state_dict(), self.files.weights(r))
            for path in (self.files.masks(r), self.files.weights(r)):  # the checkpoint records what was written
                state.file_sums[path.relative_to(self.run_dir).as_posix()] = file_sum(path)

        self.write(write_ticket)
        state.round_rows.append(record)
        state.ticket = final
        state.round, state.epoch, state.plan = r + 1, 0, None
        self.optimizer = self.scheduler = self.penalty = None
        state.pending = [STABILITY] if self.cfg.prune.stability else []
        if r >= 1:
            state.pending += list(self.cfg.prune.controls)
        if state.pending:  # branches of this round: the ticket's weights are set aside while they train
            state.trunk_weights = clone_state(self.model)
        if self.cfg.prune.stability:
            state.trunk_plan = plan
        return record

    # -- a round's branches: lottery-ticket controls (rsst/loop/controls.py), the stability copy (stability.py) --

    def begin_branch(self) -> None:
        """Start the next pending branch of the last finished round."""
        (stability.begin if self.state.pending[0] == STABILITY else controls.begin)(self)

    def end_branch(self) -> dict[str, Any]:
        """End the branch in training; its record (a control's row, or what the copy added to the round's row)."""
        return (stability.end if self.state.branch == STABILITY else controls.end)(self)
