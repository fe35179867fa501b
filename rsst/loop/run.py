"""``run(cfg)``: the single run function. The round loop of DESIGN section 4 lives here.

State is saved after every epoch; a rerun of the same config resumes from the
last finished epoch, and a finished run reports its result without training.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from tqdm.auto import tqdm

from rsst.config.checks import ConfigError, build, validate_config
from rsst.folder import provenance
from rsst.folder.atomic import atomic_torch_save, io_error
from rsst.folder.checkpoint import clone_state, load_checkpoint, save_checkpoint
from rsst.folder.lock import RunLock
from rsst.folder.naming import RunFolderError, config_hash, hashed_config, run_directory
from rsst.folder.repair import refuse_foreign, remove_temporaries, repair
from rsst.loop.optim import build_optimizer, build_scheduler
from rsst.loop.preemption import GracefulStop, graceful_stop
from rsst.loop.pretrained import load_pretrained
from rsst.loop.steps import evaluate, evaluate_counts, train_epoch
from rsst.models import prunable_weights
from rsst.models.size import is_channel_wise, structured_size
from rsst.parallel import ddp, dist
from rsst.parallel.agree import together
from rsst.parallel.dist import DistEnv
from rsst.pruning.controls import control_seed, shuffle_layerwise
from rsst.pruning.masks import Masks, apply_masks_
from rsst.pruning.regularizer import penalised_norm
from rsst.pruning.strategies import Penalty, PruneContext, RoundPlan, Strategy, imp_equivalent_density
from rsst.runtime.execution import Execution, compile_model, resolve_device
from rsst.runtime.precision import resolve_amp_name
from rsst.seeds import derive_seed
from rsst.tracking import Silent, format_table

log = logging.getLogger("rsst")

ROUND_COLUMNS = (
    "round",
    "branch",
    "remain_weight",
    "channel_sparsity",
    "best_val_acc",
    "test_acc",
    "trained_test_acc",
    "final_test_acc",
    "reg_lambda",
    "penalised_norm_start",
    "penalised_norm_end",
    "epochs",
    "seconds",
)


def epoch_seed(seed: int, round_: int, epoch: int) -> int:
    """The data-order seed of one epoch: a pure function, so a resumed epoch replays exactly.

    Hashed into 32 bits (:func:`rsst.seeds.derive_seed`): each run seed has its own data order.
    """
    return derive_seed("epoch", seed, round_, epoch)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class RoundLoop:
    """The state of one run, and the verbs of the round loop. Everything here goes into the checkpoint.

    In a run of several processes (``env``) every rank holds the same state; each trains on its
    shard of every batch, and only rank 0 (``self.writer``) writes files.
    """

    def __init__(
        self, cfg: DictConfig, run_dir: Path, env: DistEnv | None = None, device: torch.device | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.hash = config_hash(cfg)
        self.device = resolve_device(cfg.device) if device is None else device
        self.env = dist.single_process(self.device.type) if env is None else env
        self.writer = dist.is_writer(self.env)
        self.shard = (self.env.rank, self.env.world_size) if self.env.is_distributed else None
        seed_everything(cfg.seed)
        self.strategy: Strategy = build(cfg.struct, "struct")
        self.data = build(cfg.dataset, "dataset")
        self.factory = build(cfg.arch, "arch")
        self.execution = Execution.from_config(cfg.train.amp, cfg.train.channels_last, self.device)
        self.model: nn.Module = self.execution.prepare(self.new_model().to(self.device))
        self.forward = compile_model(self.model, cfg.train.compile)  # compiled once; shares self.model's tensors
        self.train_forward = self.forward  # DistributedDataParallel in a multi-process run (distribute())
        self.tracker = build(cfg.logger, "logger") if self.writer else Silent()
        self.weights = prunable_weights(self.model, cfg.prune.include_stem, cfg.prune.include_fc)
        self.names = list(self.weights)
        # run state (checkpointed)
        self.round = 0
        self.epoch = 0
        self.plan: RoundPlan | None = None
        self.ticket: Masks | None = None  # the final masks of the last finished round
        self.tickets: dict[int, dict[str, torch.Tensor]] = {}  # every finished round's final masks (bool)
        self.branch: str | None = None  # the control being trained (on round ``self.round - 1``'s ticket)
        self.pending: list[str] = []  # controls still to train for the last finished round
        self.trunk_weights: dict[str, torch.Tensor] | None = None  # the ticket's weights while controls train
        self.theta_0 = clone_state(self.model)
        self.theta_rewind: dict[str, torch.Tensor] | None = None
        self.epoch_rows: list[dict[str, Any]] = []
        self.round_rows: list[dict[str, Any]] = []
        self.round_seconds = 0.0
        self.tracker_id: str | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.penalty: Penalty | None = None  # rebuilt from the plan; its state_dict(), if any, is checkpointed

    def distribute(self) -> None:
        """Multi-process run: BatchNorm over the global batch, and the model in DistributedDataParallel.

        A collective (DDP checks that every rank holds the same parameters): every rank calls it.
        """
        if not self.env.is_distributed:
            return
        ddp.global_batch_norm(self.model)
        self.train_forward = compile_model(ddp.wrap(self.model, self.env, self.device), self.cfg.train.compile)

    def new_model(self) -> nn.Module:
        data = self.data
        return self.factory(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)

    @property
    def current_round(self) -> int:
        """The round whose masks are being trained: a control trains on the last finished round's ticket."""
        return self.round - 1 if self.branch is not None else self.round

    # -- state ------------------------------------------------------------------------------------

    def check_pretrained(self) -> dict[str, torch.Tensor] | None:
        """``prune.rewind=pretrained``: the file's weights as theta_0, checked before anything is written."""
        if self.cfg.prune.rewind != "pretrained":
            return None
        classifier = getattr(self.model, "classifier_name", "fc")
        return load_pretrained(self.cfg.prune.pretrained, self.model, classifier)

    def fresh_start(self, pretrained: dict[str, torch.Tensor] | None = None) -> None:
        prune = self.cfg.prune
        if prune.rewind == "pretrained":
            self.theta_0 = pretrained if pretrained is not None else self.check_pretrained()
            self.model.load_state_dict(self.theta_0)
        if (
            prune.rewind == "init"
            or (prune.rewind == "epoch" and prune.rewind_epoch == 0)
            or (prune.rewind == "pretrained")
        ):
            self.theta_rewind = self.theta_0

    def state(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "config_hash": self.hash,
            "config": hashed_config(self.cfg),
            "round": self.round,
            "epoch": self.epoch,
            "plan": None
            if plan is None
            else {
                "train": dict(plan.train),
                "final": dict(plan.final),
                "penalised": None if plan.penalised is None else dict(plan.penalised),
                "target": plan.target,
            },
            "penalty": self.penalty.state_dict() if hasattr(self.penalty, "state_dict") else None,
            "ticket": None if self.ticket is None else dict(self.ticket),
            "tickets": self.tickets,
            "branch": self.branch,
            "pending": self.pending,
            "trunk_weights": self.trunk_weights,
            "model": self.model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.execution.scaler is None else self.execution.scaler.state_dict(),
            "theta_0": self.theta_0,
            "theta_rewind": self.theta_rewind,
            "epoch_rows": self.epoch_rows,
            "round_rows": self.round_rows,
            "round_seconds": self.round_seconds,
            "tracker_id": self.tracker_id,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.round, self.epoch = state["round"], state["epoch"]
        self.branch, self.pending = state.get("branch"), list(state.get("pending", []))
        self.trunk_weights = state.get("trunk_weights")
        self.model.load_state_dict(state["model"])
        plan = state["plan"]
        if plan is not None:
            self.plan = RoundPlan(
                train=Masks(plan["train"]).to(self.device),
                final=Masks(plan["final"]).to(self.device),
                penalised=None if plan["penalised"] is None else Masks(plan["penalised"]).to(self.device),
                target=plan.get("target"),
            )
            self.new_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.branch is None:
                self.new_penalty()
            if state.get("penalty") is not None:
                self.penalty.load_state_dict(state["penalty"])
        if self.execution.scaler is not None and state.get("scaler"):  # fp16: resume at the scale reached
            self.execution.scaler.load_state_dict(state["scaler"])
        self.ticket = None if state["ticket"] is None else Masks(state["ticket"]).to(self.device)
        self.tickets = {int(r): m for r, m in state.get("tickets", {}).items()}
        self.theta_0, self.theta_rewind = state["theta_0"], state["theta_rewind"]
        self.epoch_rows, self.round_rows = state["epoch_rows"], state["round_rows"]
        self.round_seconds, self.tracker_id = state["round_seconds"], state["tracker_id"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def write(self, action: Callable[[], Any]) -> None:
        """Rank 0 writes (``action()``); every rank waits for it, and stops with it if the write fails."""
        together(self.env, lambda: action() if self.writer else None)

    def save(self) -> None:
        """Rank 0 saves the checkpoint (every rank holds the same state); the others wait for it."""
        self.write(lambda: save_checkpoint(self.run_dir / "checkpoint.pt", self.state()))

    # -- the loop ---------------------------------------------------------------------------------

    def new_optimizer(self) -> None:
        sched = self.cfg.lr_schedule
        self.optimizer = build_optimizer(build(self.cfg.optimizer, "optimizer"), self.model.parameters(), self.device)
        steps = self.data.num_batches("train", self.cfg.train.batch_size)
        self.scheduler = build_scheduler(
            self.optimizer, steps, sched.warmup_epochs, list(sched.milestones), sched.gamma
        )

    def new_penalty(self) -> None:
        """The strategy's gradient penalty for the current plan (RSST's ``lambda(t) * w`` on ``P_r``), if any."""
        assert self.plan is not None
        steps = self.data.num_batches("train", self.cfg.train.batch_size)
        self.penalty = self.strategy.penalty(self.plan, self.weights, steps, self.cfg.train.epochs)

    def train_batches(self, seed: int, sharded: bool = True):
        """One epoch of training batches in the order of ``seed``: this rank's shards of them unless not ``sharded``."""
        shard = self.shard if sharded else None
        return self.data.batches("train", self.cfg.train.batch_size, self.device, seed=seed, shard=shard)

    def global_batch_sizes(self) -> list[int] | None:
        """The size of every global training batch of an epoch (a multi-process run scales its loss by them)."""
        if self.shard is None:
            return None
        n, size = self.data.size("train"), self.cfg.train.batch_size
        return [min(size, n - start) for start in range(0, n, size)]

    def target_density(self, round_: int) -> float:
        """``prune.density`` if set, else the density IMP reaches after ``round_`` rounds of ``prune.rate``."""
        if self.cfg.prune.density is not None:
            return float(self.cfg.prune.density)
        total = sum(w.numel() for w in self.weights.values())
        return imp_equivalent_density(total, float(self.cfg.prune.rate), round_)

    def dense_weights(self) -> dict[str, torch.Tensor]:
        """The trained dense network: the state_dict saved at the end of round 0."""
        path = self.run_dir / "weights" / "round_0.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the trained dense network (round 0) is needed to prune")
        return torch.load(path, map_location=self.device, weights_only=True)

    def begin_round(self) -> None:
        """Plan round ``self.round`` from the trained weights, rewind, and apply the round's training mask."""
        r = self.round
        if r == 0:
            ones = Masks.ones_like(self.weights).to(self.device)
            self.plan = RoundPlan(train=ones, final=ones)
        else:
            assert self.ticket is not None, "the ticket is set at the end of every round"
            ctx = PruneContext(
                round=r,
                model=self.model,
                weights={n: w.detach() for n, w in self.weights.items()},
                masks=self.ticket,
                rate=float(self.cfg.prune.rate),
                rate_fc=self.cfg.prune.get("rate_fc"),
                rate_output=self.cfg.prune.get("rate_output"),
                # every rank scores on the whole global batches, so the plan does not depend on the world size
                batches=lambda: self.train_batches(epoch_seed(self.cfg.seed, r, 1 << 15), sharded=False),
                density=self.target_density(r),
                seed=self.cfg.seed,
                theta_rewind=self.theta_rewind,
                dense=self.dense_weights,
            )
            self.plan = self.share_plan(self.strategy.plan(ctx))
            assert self.theta_rewind is not None, "theta_rewind is set by the end of round 0"
            self.model.load_state_dict(self.theta_rewind)
            self.check_ranks(f"round {r} start", self.plan.train)
        apply_masks_(self.weights.values(), [self.plan.train[n] for n in self.names])
        self.epoch, self.round_seconds = 0, 0.0
        self.new_optimizer()
        self.new_penalty()

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
        r, e, cfg = self.current_round, self.epoch, self.cfg
        assert self.plan is not None and self.optimizer is not None and self.scheduler is not None
        start = time.perf_counter()
        total = self.data.num_batches("train", cfg.train.batch_size)
        if self.penalty is not None:
            self.penalty.start_epoch(e)
        with (
            tqdm(
                total=total,
                desc=f"round {r}{f' {self.branch}' if self.branch else ''} epoch {e + 1}/{cfg.train.epochs}",
                leave=False,
                disable=not (cfg.progress and self.writer),
                dynamic_ncols=True,
            ) as bar,
            ddp.synced(self.model, self.shard is not None),
        ):
            stats = train_epoch(
                self.train_forward,
                self.train_batches(epoch_seed(cfg.seed, r, e)),
                self.optimizer,
                self.scheduler,
                list(self.weights.values()),
                [self.plan.train[n] for n in self.names],
                grad_hook=self.penalty,
                progress=bar,
                execution=self.execution,
                global_sizes=self.global_batch_sizes(),
            )
        row = {
            "round": r,
            **({} if self.branch is None else {"branch": self.branch}),
            "epoch": e,
            "lr": self.optimizer.param_groups[0]["lr"],
            **stats,
            "val_acc": self.evaluate("val"),
            "test_acc": self.evaluate("test"),
            "remain_weight": 100.0 * self.plan.train.density(),
            **self.evaluate_ticket(),
            **({} if self.penalty is None else self.penalty.metrics()),
        }
        self.round_seconds += time.perf_counter() - start
        row["seconds"] = self.round_seconds
        self.epoch_rows.append(row)
        self.epoch = e + 1
        if r == 0 and self.branch is None and cfg.prune.rewind == "epoch" and self.epoch == cfg.prune.rewind_epoch:
            self.theta_rewind = clone_state(self.model)

    def evaluate_ticket(self) -> dict[str, Any]:
        """RSST and ADMM train a denser mask than their ticket: evaluate the ticket itself as well.

        The ticket is the trained weights times the mask the round would end with now
        (``strategy.final_masks``); the weights are restored exactly afterwards. ``ticket_mask``
        fingerprints that mask, so the round's best epoch is chosen among evaluations of the
        mask it really ends with (ADMM's support can move between epochs).
        """
        assert self.plan is not None
        if self.branch is not None:
            return {}
        final = self.strategy.final_masks(self.plan, self.penalty)
        if final.equal(self.plan.train):
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

    def evaluate(self, split: str) -> float:
        """Top-1 accuracy on ``split``; a multi-process run evaluates a share per rank and reduces the counts."""
        batches = self.data.batches(split, self.cfg.train.eval_batch_size, self.device, shard=self.shard)
        if self.shard is None:
            return evaluate(self.forward, batches, self.execution)
        return dist.reduce_accuracy(*evaluate_counts(self.forward, batches, self.execution))

    def end_round(self) -> dict[str, Any]:
        """Switch to the round's final mask, record the round, and save its ticket."""
        assert self.plan is not None
        r, plan = self.round, self.plan
        final = self.share_masks(self.strategy.final_masks(plan, self.penalty))
        rows = [row for row in self.epoch_rows if row["round"] == r and "branch" not in row]
        trained = max(rows, key=lambda row: row["val_acc"])  # first epoch with the best val accuracy
        separate = not final.equal(plan.train)  # RSST, ADMM: the ticket is not the network as trained
        # the ticket's best epoch: among the evaluations of exactly the final mask
        mark = fingerprint(final) if separate else None
        candidates = [row for row in rows if row.get("ticket_mask") == mark] if separate else rows
        best = max(candidates, key=lambda row: row["ticket_val_acc" if separate else "val_acc"], default=None)
        penalised = {}
        if plan.penalised is not None:  # measured before the switch to the final mask zeroes P_r
            assert self.theta_rewind is not None
            penalised = {
                "reg_lambda": rows[-1].get("reg_lambda"),
                "penalised_norm_start": penalised_norm(self.theta_rewind, plan.penalised),
                "penalised_norm_end": penalised_norm(self.weights, plan.penalised),
            }
        apply_masks_(self.weights.values(), [final[n] for n in self.names])
        self.check_ranks(f"round {r} end", final)
        final_test = self.evaluate("test") if separate else rows[-1]["test_acc"]
        if best is None:  # the mask moved after the last evaluation (ADMM's update at the round's end)
            ticket = {"best_val_acc": self.evaluate("val"), "best_epoch": rows[-1]["epoch"], "test_acc": final_test}
        else:
            prefix = "ticket_" if separate else ""
            ticket = {
                "best_val_acc": best[f"{prefix}val_acc"],
                "best_epoch": best["epoch"],
                "test_acc": best[f"{prefix}test_acc"],
            }
        record = {
            "round": r,
            "remain_weight": 100.0 * final.density(),
            "channel_sparsity": 100.0 * final.channel_sparsity(),
            **ticket,
            "trained_best_val_acc": trained["val_acc"],
            "trained_best_epoch": trained["epoch"],
            "trained_test_acc": trained["test_acc"],
            "final_test_acc": final_test,
            **penalised,
            "epochs": len(rows),
            "seconds": round(self.round_seconds, 3),
        }
        if is_channel_wise(final):  # a Refill/RSST ticket: the size of its structured export
            shape = (1, self.data.in_channels, self.data.image_size, self.data.image_size)
            record.update(structured_size(self.model, final, shape))
        self.tickets[r] = {n: m.bool().cpu() for n, m in final.items()}

        def write_ticket() -> None:
            final.save(self.run_dir / "masks" / f"round_{r}.pt")
            atomic_torch_save(self.model.state_dict(), self.run_dir / "weights" / f"round_{r}.pt")

        self.write(write_ticket)
        self.round_rows.append(record)
        self.ticket = final
        self.round, self.epoch, self.plan = r + 1, 0, None
        self.optimizer = self.scheduler = self.penalty = None
        if r >= 1 and self.cfg.prune.controls:
            self.pending = list(self.cfg.prune.controls)
            self.trunk_weights = clone_state(self.model)
        return record

    # -- lottery-ticket controls (rsst/pruning/controls.py) --------------------------------------------

    def begin_control(self) -> None:
        """Start the next pending control of the last finished round: its mask, its initial weights."""
        assert self.ticket is not None and self.theta_rewind is not None and self.pending
        name, r = self.pending[0], self.round - 1
        gen = torch.Generator().manual_seed(control_seed(self.cfg.seed, r, name))
        if name == "reinit":  # the ticket's mask from a fresh random initialisation (BN included)
            mask = self.ticket.clone()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
                self.model.load_state_dict(self.new_model().state_dict())
        else:  # shuffle_layerwise: a random mask with the ticket's per-layer counts, from the rewind point
            mask = shuffle_layerwise(self.ticket, gen).to(self.device)
            self.model.load_state_dict(self.theta_rewind)
        self.branch, self.plan = name, RoundPlan(train=mask, final=mask)
        apply_masks_(self.weights.values(), [mask[n] for n in self.names])
        self.epoch, self.round_seconds = 0, 0.0
        self.new_optimizer()
        self.penalty = None

    def end_control(self) -> dict[str, Any]:
        """Record the control's row beside its ticket's; after the last control, restore the ticket's weights."""
        assert self.plan is not None and self.branch is not None
        r, name, mask = self.round - 1, self.branch, self.plan.train
        rows = [row for row in self.epoch_rows if row["round"] == r and row.get("branch") == name]
        best = max(rows, key=lambda row: row["val_acc"])
        record = {
            "round": r,
            "branch": name,
            "remain_weight": 100.0 * mask.density(),
            "channel_sparsity": 100.0 * mask.channel_sparsity(),
            "best_val_acc": best["val_acc"],
            "best_epoch": best["epoch"],
            "test_acc": best["test_acc"],
            "final_test_acc": rows[-1]["test_acc"],
            "epochs": len(rows),
            "seconds": round(self.round_seconds, 3),
        }
        self.write(lambda: mask.save(self.run_dir / "masks" / f"round_{r}_{name}.pt"))
        self.round_rows.append(record)
        self.pending.pop(0)
        self.branch, self.epoch, self.plan = None, 0, None
        self.optimizer = self.scheduler = None
        if not self.pending:
            assert self.trunk_weights is not None
            self.model.load_state_dict(self.trunk_weights)
            self.trunk_weights = None
        return record


def fingerprint(masks: Masks) -> str:
    """A short digest of a mask set: equal masks, equal digests."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].detach().bool().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def resolve_precision(cfg: DictConfig, device: torch.device | None = None) -> tuple[DictConfig, dict[str, str]]:
    """A copy of ``cfg`` with ``train.amp`` resolved to the precision this machine will run.

    ``auto`` resolves per machine (bf16 where the device has native bf16, else off), so the
    resolved name, not ``auto``, is what the run's hash, folder and ``config.yaml`` carry.
    """
    requested = cfg.train.amp
    name, reason = resolve_amp_name(requested, resolve_device(cfg.device) if device is None else device)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.train.amp = name
    return cfg, {"requested": str(requested), "resolved": name, "reason": reason}


def distributed_environment(cfg: DictConfig) -> tuple[DistEnv, torch.device]:
    """This process's place in the run (``torchrun`` or Slurm through submitit) and its device.

    A process of a multi-process run uses its local rank's GPU (``device`` names the type);
    ``train.batch_size``, the global batch, must split evenly over the processes.
    """
    device = resolve_device(cfg.device)
    try:
        env = dist.from_environment(device.type)
        if env.is_distributed:
            dist.shard_windows(0, int(cfg.train.batch_size), env.rank, env.world_size)
            device = dist.local_device(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return env, device


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or report) the experiment ``cfg`` describes; return its summary.

    Everything is checked and built before the run folder is created: a bad value, a missing
    device or an unusable pretrained file leaves nothing on disk. The folder is then held with
    an exclusive lock for the whole run. Started by ``torchrun`` or by Slurm with several tasks,
    every process runs this function: they train one run together, and rank 0 writes its folder.
    """
    validate_config(cfg)
    env, device = distributed_environment(cfg)
    cfg, precision = resolve_precision(cfg, device)
    run_dir = run_directory(cfg)
    with dist.process_group(env):
        return _run_processes(cfg, env, device, run_dir, precision)


def _run_processes(
    cfg: DictConfig, env: DistEnv, device: torch.device, run_dir: Path, precision: dict[str, str]
) -> dict[str, Any]:
    def build_loop() -> tuple[RoundLoop, dict[str, torch.Tensor] | None]:
        loop = RoundLoop(cfg, run_dir, env, device)
        return loop, None if (run_dir / "checkpoint.pt").exists() else loop.check_pretrained()

    loop, pretrained = together(env, build_loop)
    loop.distribute()
    with ExitStack() as held:

        def open_folder() -> None:
            if not loop.writer:
                held.enter_context(_quiet())
                return
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise io_error("create the run folder", run_dir, exc) from exc
            held.enter_context(RunLock(run_dir))
            held.enter_context(_log_to_file(run_dir))

        together(env, open_folder)
        log.info("precision: %s (%s)", precision["resolved"], precision["reason"])
        if env.is_distributed:
            log.info("%d processes (%s, %s backend); rank 0 on %s", env.world_size, env.launcher, env.backend, device)
        return _run(loop, pretrained, precision)


def _run(loop: RoundLoop, pretrained: dict[str, torch.Tensor] | None, precision: dict[str, str]) -> dict[str, Any]:
    cfg, run_dir, env = loop.cfg, loop.run_dir, loop.env
    loop.write(lambda: remove_temporaries(run_dir))
    ckpt = run_dir / "checkpoint.pt"
    resumed = ckpt.exists()
    if env.is_distributed and dist.any_rank(resumed) != (not dist.any_rank(not resumed)):
        raise RunFolderError(
            f"{ckpt} is visible to some processes of this run and not to others: the run folder must be on a "
            "file system every node shares"
        )

    def restore_or_start() -> None:
        if resumed:
            loop.restore(load_checkpoint(ckpt, loop.hash, hashed_config(cfg)))
            log.info("resuming %s at round %d, epoch %d", run_dir, loop.round, loop.epoch)
        else:
            if loop.writer:
                refuse_foreign(run_dir, loop.hash)
            loop.fresh_start(pretrained)
            log.info("new run in %s", run_dir)

    together(env, restore_or_start)
    hosts = dist.hostnames()

    def put_in_order() -> None:  # rank 0: rebuild the derived files, record this start
        last_weights = None  # the last finished round's weights, where the checkpoint holds them
        if loop.trunk_weights is not None:  # controls are training: the ticket's weights are kept aside
            last_weights = loop.trunk_weights
        elif resumed and loop.plan is None and loop.round > 0:  # at a round boundary: the model holds them
            last_weights = loop.model.state_dict()
        repair(
            run_dir,
            OmegaConf.to_yaml(cfg, resolve=True),
            loop.epoch_rows,
            loop.round_rows,
            loop.tickets,
            None if last_weights is None else (lambda: last_weights),
        )
        processes = {
            "world_size": env.world_size,
            "backend": env.backend,
            "launcher": env.launcher,
            "hosts": hosts,
        }
        extra = {"precision": precision, "config_hash": loop.hash, "processes": processes}
        provenance.record_start(run_dir, loop.device, resumed, extra)

    loop.write(put_in_order)
    rounds = cfg.prune.rounds
    if loop.round < rounds or loop.pending:  # a finished run only reports; it opens no logger
        logged = (len(loop.epoch_rows), len(loop.round_rows))

        def start_tracker() -> None:
            loop.tracker_id = loop.tracker.start(run_dir, hashed_config(cfg), loop.tracker_id, logged)

        loop.write(start_tracker)
    with graceful_stop() as stop:
        try:
            while loop.round < rounds or loop.pending:
                if loop.pending:
                    _train_control(loop, stop)
                else:
                    _train_round(loop, stop)
        finally:
            loop.tracker.finish()
    columns = [c for c in ROUND_COLUMNS if any(c in row for row in loop.round_rows)]
    log.info("finished %s\n%s", run_dir, format_table(loop.round_rows, columns))
    return {"run_dir": str(run_dir), "config_hash": loop.hash, "rounds": loop.round_rows}


def _train_round(loop: RoundLoop, stop: GracefulStop | None) -> None:
    """Finish the current round, saving after every epoch; a pending stop request is honoured after a save."""
    if loop.plan is None:
        loop.begin_round()
        loop.save()
    _train_epochs(loop, stop)
    record = loop.end_round()
    loop.save()
    kill_point(f"round_saved:{record['round']}")
    loop.write(lambda: loop.tracker.log_rounds(loop.round_rows))
    log.info(
        "round %d/%d: %.2f%% weights remain, best val %.2f%%, test %.2f%% (epoch %d), %.1fs",
        record["round"],
        loop.cfg.prune.rounds - 1,
        record["remain_weight"],
        record["best_val_acc"],
        record["test_acc"],
        record["best_epoch"],
        record["seconds"],
    )
    if "penalised_norm_end" in record:
        log.info(
            "round %d: lambda %.4g at the end; |P_r| %.4g -> %.4g; test %.2f%% after the switch to R_r",
            record["round"],
            record["reg_lambda"],
            record["penalised_norm_start"],
            record["penalised_norm_end"],
            record["final_test_acc"],
        )


def _train_epochs(loop: RoundLoop, stop: GracefulStop | None) -> None:
    """The remaining epochs of the current round or control, saving after each."""
    while loop.epoch < loop.cfg.train.epochs:
        loop.run_epoch()
        loop.save()
        kill_point(f"epoch_saved:{loop.current_round}:{loop.branch or 'ticket'}:{loop.epoch - 1}")
        loop.write(lambda: loop.tracker.log_epochs(loop.epoch_rows))
        stop_if_requested(loop, stop)


def _train_control(loop: RoundLoop, stop: GracefulStop | None) -> None:
    """Train the next pending control of the last finished round and record it beside the ticket."""
    if loop.plan is None:
        loop.begin_control()
        loop.save()
    _train_epochs(loop, stop)
    record = loop.end_control()
    loop.save()
    loop.write(lambda: loop.tracker.log_rounds(loop.round_rows))
    log.info(
        "round %d %s control: %.2f%% weights remain, best val %.2f%%, test %.2f%% (epoch %d), %.1fs",
        record["round"],
        record["branch"],
        record["remain_weight"],
        record["best_val_acc"],
        record["test_acc"],
        record["best_epoch"],
        record["seconds"],
    )


def stop_if_requested(loop: RoundLoop, stop: GracefulStop | None) -> None:
    """After a save: hand a pending preemption signal to the launcher; in a multi-process run, all ranks
    stop together when the signal reached any of them."""
    requested = stop is not None and stop.pending is not None
    if loop.env.is_distributed:
        requested = dist.any_rank(requested)
    if requested and stop is not None:
        stop.hand_over()


def kill_point(name: str) -> None:
    """Where the tests reproduce a node dying: ``RSST_KILL_AT=<name>`` kills the process here (SIGKILL).

    ``round_saved:<r>``: after round ``r``'s checkpoint is saved, before ``rounds.json`` is written;
    ``epoch_saved:<r>:<branch>:<e>``: after epoch ``e`` of round ``r`` (``ticket`` or a control) is saved.
    """
    if os.environ.get("RSST_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def _quiet() -> Iterator[None]:
    """Ranks other than 0 log warnings and errors only: rank 0 speaks for the run."""
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


@contextmanager
def _log_to_file(run_dir: Path) -> Iterator[None]:
    """Mirror the ``rsst`` logger into ``run.log`` in the run directory while the run lasts."""
    try:
        handler = logging.FileHandler(run_dir / "run.log")
    except OSError as exc:
        raise io_error("write", run_dir / "run.log", exc) from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
