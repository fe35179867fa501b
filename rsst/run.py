"""``run(cfg)``: the single run function. The round loop of DESIGN section 4 lives here.

State is saved after every epoch; a rerun of the same config resumes from the
last finished epoch, and a finished run reports its result without training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from rsst.checkpoint import clone_state, load_checkpoint, save_checkpoint
from rsst.config import ConfigError, build, validate_config
from rsst.export import is_channel_wise, structured_size
from rsst.io import atomic_torch_save, atomic_write_text
from rsst.models import prunable_weights, stem_module_name
from rsst.optim import build_optimizer, build_scheduler
from rsst.preemption import GracefulStop, graceful_stop
from rsst.pruning.masks import Masks, apply_masks_
from rsst.pruning.regularizer import penalised_norm
from rsst.pruning.strategies import Penalty, PruneContext, RoundPlan, Strategy, imp_equivalent_density
from rsst.rundir import config_hash, hashed_config, run_directory
from rsst.tracking import format_table
from rsst.training import Execution, compile_model, evaluate, resolve_device, train_epoch

log = logging.getLogger("rsst")

ROUND_COLUMNS = (
    "round",
    "remain_weight",
    "channel_sparsity",
    "best_val_acc",
    "test_acc",
    "final_test_acc",
    "reg_lambda",
    "penalised_norm_start",
    "penalised_norm_end",
    "epochs",
    "seconds",
)


def epoch_seed(seed: int, round_: int, epoch: int) -> int:
    """The data-order seed of one epoch: a pure function, so a resumed epoch replays exactly."""
    return (seed << 32) + (round_ << 16) + epoch


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def load_pretrained(path: str, model: nn.Module, classifier: str) -> dict[str, torch.Tensor]:
    """theta_0 for ``prune.rewind=pretrained``: the file's weights, with stem and classifier re-initialised.

    The stem conv and the classifier keep ``model``'s fresh initialisation, as the
    original tool's ``pt`` mode did (the pretrained head and input layer do not fit
    a new data set's classes and channels).
    """
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(blob, dict):
        blob = blob.get("state_dict", blob.get("model", blob))
    if not isinstance(blob, dict):
        raise ConfigError(f"prune.pretrained={path!r}: expected a state_dict, found {type(blob).__name__}")
    blob = {k.removeprefix("module."): v for k, v in blob.items()}
    fresh = clone_state(model)
    reinit = (f"{stem_module_name(model)}.", f"{classifier}.")
    missing = sorted(k for k in fresh if k not in blob and not k.startswith(reinit))
    if missing:
        raise ConfigError(f"prune.pretrained={path!r} lacks weights this architecture needs: {missing[:5]}")
    theta = {}
    for k, v in fresh.items():
        if k.startswith(reinit):
            theta[k] = v
        elif blob[k].shape != v.shape:
            raise ConfigError(
                f"prune.pretrained={path!r}: {k} has shape {tuple(blob[k].shape)}, expected {tuple(v.shape)}"
            )
        else:
            theta[k] = blob[k].detach().clone().to(v.dtype)
    return theta


class RoundLoop:
    """The state of one run, and the verbs of the round loop. Everything here goes into the checkpoint."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.hash = config_hash(cfg)
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        self.strategy: Strategy = build(cfg.struct, "struct")
        self.data = build(cfg.dataset, "dataset")
        factory = build(cfg.arch, "arch")
        self.execution = Execution.from_config(cfg.train.amp, cfg.train.channels_last, self.device)
        self.model: nn.Module = self.execution.prepare(
            factory(
                num_classes=self.data.num_classes, in_channels=self.data.in_channels, image_size=self.data.image_size
            ).to(self.device)
        )
        self.forward = compile_model(self.model, cfg.train.compile)  # compiled once; shares self.model's tensors
        self.tracker = build(cfg.logger, "logger")
        self.weights = prunable_weights(self.model, cfg.prune.include_stem, cfg.prune.include_fc)
        self.names = list(self.weights)
        # run state (checkpointed)
        self.round = 0
        self.epoch = 0
        self.plan: RoundPlan | None = None
        self.ticket: Masks | None = None  # the final masks of the last finished round
        self.theta_0 = clone_state(self.model)
        self.theta_rewind: dict[str, torch.Tensor] | None = None
        self.epoch_rows: list[dict[str, Any]] = []
        self.round_rows: list[dict[str, Any]] = []
        self.round_seconds = 0.0
        self.tracker_id: str | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.penalty: Penalty | None = None  # rebuilt from the plan; its state_dict(), if any, is checkpointed

    # -- state ------------------------------------------------------------------------------------

    def fresh_start(self) -> None:
        prune = self.cfg.prune
        if prune.rewind == "pretrained":
            self.theta_0 = load_pretrained(prune.pretrained, self.model, getattr(self.model, "classifier_name", "fc"))
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
            else {"train": plan.train, "final": plan.final, "penalised": plan.penalised, "target": plan.target},
            "penalty": self.penalty.state_dict() if hasattr(self.penalty, "state_dict") else None,
            "ticket": self.ticket,
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
            self.new_penalty()
            if state.get("penalty") is not None:
                self.penalty.load_state_dict(state["penalty"])
        if self.execution.scaler is not None and state.get("scaler"):  # fp16: resume at the scale reached
            self.execution.scaler.load_state_dict(state["scaler"])
        self.ticket = None if state["ticket"] is None else Masks(state["ticket"]).to(self.device)
        self.theta_0, self.theta_rewind = state["theta_0"], state["theta_rewind"]
        self.epoch_rows, self.round_rows = state["epoch_rows"], state["round_rows"]
        self.round_seconds, self.tracker_id = state["round_seconds"], state["tracker_id"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def save(self) -> None:
        save_checkpoint(self.run_dir / "checkpoint.pt", self.state())

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

    def train_batches(self, seed: int):
        return self.data.batches("train", self.cfg.train.batch_size, self.device, seed=seed)

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
                batches=lambda: self.train_batches(epoch_seed(self.cfg.seed, r, 1 << 15)),
                density=self.target_density(r),
                seed=self.cfg.seed,
                theta_rewind=self.theta_rewind,
                dense=self.dense_weights,
            )
            self.plan = self.strategy.plan(ctx)
            assert self.theta_rewind is not None, "theta_rewind is set by the end of round 0"
            self.model.load_state_dict(self.theta_rewind)
        apply_masks_(self.weights.values(), [self.plan.train[n] for n in self.names])
        self.epoch, self.round_seconds = 0, 0.0
        self.new_optimizer()
        self.new_penalty()

    def run_epoch(self) -> None:
        r, e, cfg = self.round, self.epoch, self.cfg
        assert self.plan is not None and self.optimizer is not None and self.scheduler is not None
        start = time.perf_counter()
        total = self.data.num_batches("train", cfg.train.batch_size)
        if self.penalty is not None:
            self.penalty.start_epoch(e)
        with tqdm(
            total=total,
            desc=f"round {r} epoch {e + 1}/{cfg.train.epochs}",
            leave=False,
            disable=not cfg.progress,
            dynamic_ncols=True,
        ) as bar:
            stats = train_epoch(
                self.forward,
                self.train_batches(epoch_seed(cfg.seed, r, e)),
                self.optimizer,
                self.scheduler,
                list(self.weights.values()),
                [self.plan.train[n] for n in self.names],
                grad_hook=self.penalty,
                progress=bar,
                execution=self.execution,
            )
        row = {
            "round": r,
            "epoch": e,
            "lr": self.optimizer.param_groups[0]["lr"],
            **stats,
            "val_acc": self.evaluate("val"),
            "test_acc": self.evaluate("test"),
            "remain_weight": 100.0 * self.plan.train.density(),
            **({} if self.penalty is None else self.penalty.metrics()),
        }
        self.round_seconds += time.perf_counter() - start
        row["seconds"] = self.round_seconds
        self.epoch_rows.append(row)
        self.epoch = e + 1
        if r == 0 and cfg.prune.rewind == "epoch" and self.epoch == cfg.prune.rewind_epoch:
            self.theta_rewind = clone_state(self.model)

    def evaluate(self, split: str) -> float:
        batches = self.data.batches(split, self.cfg.train.eval_batch_size, self.device)
        return evaluate(self.forward, batches, self.execution)

    def end_round(self) -> dict[str, Any]:
        """Switch to the round's final mask, record the round, and save its ticket."""
        assert self.plan is not None
        r, plan = self.round, self.plan
        final = self.strategy.final_masks(plan, self.penalty)
        rows = [row for row in self.epoch_rows if row["round"] == r]
        best = max(rows, key=lambda row: row["val_acc"])  # first epoch with the best val accuracy
        penalised = {}
        if plan.penalised is not None:  # measured before the switch to the final mask zeroes P_r
            assert self.theta_rewind is not None
            penalised = {
                "reg_lambda": rows[-1].get("reg_lambda"),
                "penalised_norm_start": penalised_norm(self.theta_rewind, plan.penalised),
                "penalised_norm_end": penalised_norm(self.weights, plan.penalised),
            }
        apply_masks_(self.weights.values(), [final[n] for n in self.names])
        record = {
            "round": r,
            "remain_weight": 100.0 * final.density(),
            "channel_sparsity": 100.0 * final.channel_sparsity(),
            "best_val_acc": best["val_acc"],
            "best_epoch": best["epoch"],
            "test_acc": best["test_acc"],
            "final_test_acc": self.evaluate("test") if not final.equal(plan.train) else rows[-1]["test_acc"],
            **penalised,
            "epochs": len(rows),
            "seconds": round(self.round_seconds, 3),
        }
        if is_channel_wise(final):  # a Refill/RSST ticket: the size of its structured export
            shape = (1, self.data.in_channels, self.data.image_size, self.data.image_size)
            record.update(structured_size(self.model, final, shape))
        final.save(self.run_dir / "masks" / f"round_{r}.pt")
        atomic_torch_save(self.model.state_dict(), self.run_dir / "weights" / f"round_{r}.pt")
        self.round_rows.append(record)
        self.ticket = final
        self.round, self.epoch, self.plan = r + 1, 0, None
        self.optimizer = self.scheduler = self.penalty = None
        return record


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or report) the experiment ``cfg`` describes; return its summary."""
    validate_config(cfg)
    run_dir = run_directory(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _log_to_file(run_dir):
        return _run(cfg, run_dir)


def _run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    loop = RoundLoop(cfg, run_dir)
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists():
        loop.restore(load_checkpoint(ckpt, loop.hash))
        log.info("resuming %s at round %d, epoch %d", run_dir, loop.round, loop.epoch)
    else:
        loop.fresh_start()
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        log.info("new run in %s", run_dir)
    rounds = cfg.prune.rounds
    if loop.round < rounds:  # a finished run only reports; it opens no logger
        logged = (len(loop.epoch_rows), len(loop.round_rows))
        loop.tracker_id = loop.tracker.start(run_dir, hashed_config(cfg), loop.tracker_id, logged)
        if loop.epoch_rows:  # a resumed run: make the files match the checkpoint
            loop.tracker.log_epochs(loop.epoch_rows)
            loop.tracker.log_rounds(loop.round_rows)
    with graceful_stop() as stop:
        try:
            while loop.round < rounds:
                _train_round(loop, stop)
        finally:
            loop.tracker.finish()
    log.info("finished %s\n%s", run_dir, format_table(loop.round_rows, ROUND_COLUMNS))
    return {"run_dir": str(run_dir), "config_hash": loop.hash, "rounds": loop.round_rows}


def _train_round(loop: RoundLoop, stop: GracefulStop | None) -> None:
    """Finish the current round, saving after every epoch; a pending stop request is honoured after a save."""
    if loop.plan is None:
        loop.begin_round()
        loop.save()
    while loop.epoch < loop.cfg.train.epochs:
        loop.run_epoch()
        loop.save()
        loop.tracker.log_epochs(loop.epoch_rows)
        if stop is not None:
            stop.check()
    record = loop.end_round()
    loop.save()
    loop.tracker.log_rounds(loop.round_rows)
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


@contextmanager
def _log_to_file(run_dir: Path) -> Iterator[None]:
    """Mirror the ``rsst`` logger into ``run.log`` in the run directory while the run lasts."""
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
