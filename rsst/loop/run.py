"""``run(cfg)``: the single run function, and the run as a whole (docs/algorithms.md, section 1).

Everything is checked and built before the run folder is touched, and the folder is judged to be
this run's (:func:`rsst.folder.repair.judge`, reading only) before anything in it is created, removed
or rewritten: a refused folder is left byte for byte as it was. The folder is then held with an
exclusive lock, repaired from the checkpoint, logged to (``run.log``), described (``provenance.json``)
and tracked; the rounds (:mod:`rsst.loop.rounds`) and controls (:mod:`rsst.loop.controls`) are trained
with a save after every epoch, so a rerun of the same config resumes from the last finished epoch and
a finished run reports its result without training.

Ctrl-C (``KeyboardInterrupt``) ends a run with one line on stderr, "interrupted at round r, epoch e;
the same command resumes", and exit status 130: the checkpoint of the last finished epoch is intact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from rsst.config.checks import validate_config
from rsst.errors import RsstError
from rsst.folder import provenance
from rsst.folder.atomic import atomic_write_json, io_error, open_no_follow
from rsst.folder.checkpoint import load_checkpoint, save_checkpoint
from rsst.folder.layout import RunFiles
from rsst.folder.lock import RunLock
from rsst.folder.naming import RunFolderError, hashed_config, run_directory
from rsst.folder.repair import judge, refuse_links, remove_temporaries, repair
from rsst.loop.divergence import Diverged
from rsst.loop.epochs import epoch_seed
from rsst.loop.preemption import GracefulStop, graceful_stop
from rsst.loop.restorable import restore_checked
from rsst.loop.rounds import RoundLoop
from rsst.loop.stability import STABILITY
from rsst.parallel import dist
from rsst.parallel.fail_together import together
from rsst.runtime.environment import Runtime, resolve_runtime
from rsst.tracking import format_table

log = logging.getLogger("rsst")

INTERRUPTED = 130  # the exit status of a run ended by Ctrl-C (SIGINT), as a shell reports it: 128 + 2

__all__ = ["RoundLoop", "epoch_seed", "resolve_precision", "run"]

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


def resolve_precision(cfg: DictConfig, runtime: Runtime | None = None) -> tuple[DictConfig, dict[str, str]]:
    """A copy of ``cfg`` with ``train.amp`` resolved to the precision this machine will run.

    ``auto`` resolves per machine (bf16 where it is faster, else off), so the resolved name, not
    ``auto``, is what the run's hash, folder and ``config.yaml`` carry.
    """
    if runtime is None:
        runtime = resolve_runtime(cfg.device, cfg.train.amp, cfg.train.batch_size, from_launcher=False)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.train.amp = runtime.precision.resolved
    return cfg, runtime.precision.as_dict()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or report) the experiment ``cfg`` describes; return its summary.

    Everything is checked and built before the run folder is created: a bad value, a missing
    device or an unusable pretrained file leaves nothing on disk. Started by ``torchrun`` or by
    Slurm with several tasks, every process runs this function: they train one run together, and
    rank 0 writes its folder.
    """
    validate_config(cfg)
    runtime = resolve_runtime(cfg.device, cfg.train.amp, cfg.train.batch_size)
    cfg, _ = resolve_precision(cfg, runtime)
    run_dir = run_directory(cfg)
    loop: RoundLoop | None = None
    try:
        with dist.process_group(runtime.env, cfg.collective_timeout_s):
            loop, pretrained = together(runtime.env, lambda: _build(cfg, run_dir, runtime))
            loop.distribute()
            try:
                with ExitStack() as held:
                    together(runtime.env, lambda: _open_folder(loop, held))
                    log.info("precision: %s (%s)", runtime.precision.resolved, runtime.precision.reason)
                    env = runtime.env
                    if env.is_distributed:
                        log.info("%d processes (%s, %s backend); rank 0 on %s", env.world_size, env.launcher,
                                 env.backend, runtime.device)  # fmt: skip
                    try:
                        return _run(loop, pretrained)
                    except KeyboardInterrupt:
                        _ignore_further_interrupts()
                        _to_run_log(interrupted(loop))  # while run.log is still attached
                        raise
            finally:
                loop.leave_group()  # the DDP wrapper goes before the group does
    except KeyboardInterrupt:
        _ignore_further_interrupts()
        if runtime.writer:  # one line, not a traceback; the other ranks of a multi-process run stop quietly
            sys.stderr.write(interrupted(loop) + "\n")
            sys.stderr.flush()
        kill_point("interrupted")  # the tests' second Ctrl-C, while the run ends
        raise SystemExit(INTERRUPTED) from None


def _ignore_further_interrupts() -> None:
    """From the first Ctrl-C on, SIGINT is ignored: a second one while the run ends would print a traceback.

    The process is ending (exit 130) and the checkpoint is saved, so there is nothing left to interrupt.
    """
    with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def interrupted(loop: RoundLoop | None) -> str:
    """The line Ctrl-C ends a run with: where it was, and that the same command resumes from the last save."""
    if loop is None:
        return "interrupted before training started; the same command starts the run"
    state, epochs = loop.state, loop.cfg.train.epochs
    branch = f" {state.branch}{'' if state.branch == STABILITY else ' control'}" if state.branch else ""
    epoch = min(state.epoch + 1, epochs)  # the epoch in progress, counted from 1 as the progress bar does
    return f"interrupted at round {state.current_round}{branch}, epoch {epoch}; the same command resumes"


def _to_run_log(line: str) -> None:
    """``line`` into the ``rsst`` logger's own handlers (``run.log``), not to the console."""
    record = log.makeRecord(log.name, logging.WARNING, __file__, 0, "%s", (line,), None)
    for handler in log.handlers:
        handler.handle(record)


def _build(cfg: DictConfig, run_dir: Path, runtime: Runtime) -> tuple[RoundLoop, dict[str, torch.Tensor] | None]:
    """The loop, and a pretrained file's weights when a new run needs them (checked before any write)."""
    loop = RoundLoop(cfg, run_dir, runtime)
    return loop, None if loop.files.checkpoint.exists() else loop.check_pretrained()


def _open_folder(loop: RoundLoop, held: ExitStack) -> None:
    """Rank 0 judges the folder to be this run's, then creates it, takes its lock and logs into it; the other
    ranks log warnings only.

    The folder is judged before anything is created in it, and again once the lock is held (another
    config's run may have written it in between).
    """
    if not loop.writer:
        held.enter_context(_quiet())
        return
    config = hashed_config(loop.cfg)
    refuse_links(loop.run_dir)
    RunLock(loop.run_dir).check_free()  # a folder in use says so first
    judge(loop.run_dir, loop.hash, config)
    try:
        loop.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise io_error("create the run folder", loop.run_dir, exc) from exc
    held.enter_context(RunLock(loop.run_dir))
    judge(loop.run_dir, loop.hash, config)
    held.enter_context(_log_to_file(loop.run_dir))


def _restore_or_start(loop: RoundLoop, resumed: bool, pretrained: dict[str, torch.Tensor] | None) -> None:
    ckpt = loop.files.checkpoint
    if resumed:  # every part checked against this run before the loop takes it
        restore_checked(loop, load_checkpoint(ckpt, loop.hash, hashed_config(loop.cfg)), ckpt)
        log.info("resuming %s at round %d, epoch %d", loop.run_dir, loop.state.round, loop.state.epoch)
    else:  # rank 0 judged the folder (nothing of another run) before it created anything in it
        loop.fresh_start(pretrained)
        log.info("new run in %s", loop.run_dir)


def _put_in_order(loop: RoundLoop, resumed: bool, hosts: list[str]) -> None:
    """Rank 0: rebuild the derived files from the checkpoint, and record this start in provenance.json."""
    state, env = loop.state, loop.env
    last_weights = None  # the last finished round's weights, where the checkpoint holds them
    if state.trunk_weights is not None:  # controls are training: the ticket's weights are kept aside
        last_weights = state.trunk_weights
    elif resumed and state.plan is None and state.round > 0:  # at a round boundary: the model holds them
        last_weights = loop.model.state_dict()
    sums_before = dict(state.file_sums)
    repair(
        loop.run_dir,
        OmegaConf.to_yaml(loop.cfg, resolve=True),
        state.epoch_rows,
        state.round_rows,
        state.tickets,
        None if last_weights is None else (lambda: last_weights),
        state.file_sums,
    )
    if state.file_sums != sums_before:  # a round file was rebuilt: the checkpoint records its new sum
        save_checkpoint(loop.files.checkpoint, loop.checkpoint())
    processes = {"world_size": env.world_size, "backend": env.backend, "launcher": env.launcher, "hosts": hosts}
    extra = {"precision": loop.runtime.precision.as_dict(), "config_hash": loop.hash, "processes": processes}
    provenance.record_start(loop.run_dir, loop.device, resumed, extra)


def _run(loop: RoundLoop, pretrained: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    cfg, run_dir, env, state = loop.cfg, loop.run_dir, loop.env, loop.state
    loop.write(lambda: remove_temporaries(run_dir))
    ckpt = loop.files.checkpoint
    resumed = ckpt.exists()
    if env.is_distributed and dist.any_rank(resumed) != (not dist.any_rank(not resumed)):
        raise RunFolderError(
            f"{ckpt} is visible to some processes of this run and not to others: the run folder must be on a "
            "file system every node shares"
        )
    together(env, lambda: _restore_or_start(loop, resumed, pretrained))
    state = loop.state  # restore() replaces it
    hosts = dist.hostnames()
    loop.write(lambda: _put_in_order(loop, resumed, hosts))
    rounds = cfg.prune.rounds
    if state.round < rounds or state.pending:  # a finished run only reports; it opens no logger
        logged = (len(state.epoch_rows), len(state.round_rows))

        def start_tracker() -> None:
            state.tracker_id = loop.tracker.start(run_dir, hashed_config(cfg), state.tracker_id, logged)

        loop.write(start_tracker)
    with graceful_stop() as stop:
        try:
            while state.round < rounds or state.pending:
                if state.pending:
                    _train_branch(loop, stop)
                else:
                    _train_round(loop, stop)
        except Diverged as exc:  # a result too: recorded for rsst.report, the run stays resumable
            record = exc.record()
            loop.write(lambda: atomic_write_json(loop.files.diverged, record))
            raise
        finally:
            loop.tracker.finish()
    loop.write(lambda: loop.files.diverged.unlink(missing_ok=True))  # finished: whatever diverged before is gone
    columns = [c for c in ROUND_COLUMNS if any(c in row for row in state.round_rows)]
    log.info("finished %s\n%s", run_dir, format_table(state.round_rows, columns))
    return {"run_dir": str(run_dir), "config_hash": loop.hash, "rounds": state.round_rows}


def _train_round(loop: RoundLoop, stop: GracefulStop | None) -> None:
    """Finish the current round, saving after every epoch; a pending stop request is honoured after a save."""
    if loop.state.plan is None:
        loop.begin_round()
        loop.save()
    _train_epochs(loop, stop)
    record = loop.end_round()
    loop.save()
    kill_point(f"round_saved:{record['round']}")
    loop.write(lambda: loop.tracker.log_rounds(loop.state.round_rows))
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
    if "penalised_gamma_end" in record:
        log.info(
            "round %d: |gamma| of the channels dropped %.4g -> %.4g",
            record["round"],
            record["penalised_gamma_start"],
            record["penalised_gamma_end"],
        )


def _train_epochs(loop: RoundLoop, stop: GracefulStop | None) -> None:
    """The remaining epochs of the current round or control, saving after each."""
    while loop.state.epoch < loop.cfg.train.epochs:
        loop.run_epoch()
        loop.save()
        kill_point(f"epoch_saved:{loop.state.current_round}:{loop.state.branch or 'ticket'}:{loop.state.epoch - 1}")
        loop.write(lambda: loop.tracker.log_epochs(loop.state.epoch_rows))
        stop_if_requested(loop, stop)


def _train_branch(loop: RoundLoop, stop: GracefulStop | None) -> None:
    """Train the next pending branch of the last finished round (a control, or the stability copy) and record it."""
    if loop.state.plan is None:
        loop.begin_branch()
        loop.save()
    _train_epochs(loop, stop)
    record = loop.end_branch()
    loop.save()
    loop.write(lambda: loop.tracker.log_rounds(loop.state.round_rows))
    if record["branch"] == STABILITY:
        barrier, copy = record["stability_barrier"], record["stability_copy"]
        log.info(
            "round %d stability: error barrier %.2f (val), %.2f (test) points on a path of %d; the copy tests %.2f%%",
            record["round"],
            barrier["val"],
            barrier["test"],
            len(record["stability_curve"]["alpha"]),
            copy["test_acc"],
        )
        return
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
    ``interrupted``: after a Ctrl-C's line is written, as the run ends. Several names, comma-separated,
    each fire; ``RSST_KILL_RANK=<r>`` limits them to rank ``r`` of a multi-process run.
    ``RSST_KILL_SIGNAL=INT`` (or another name) sends that signal instead: a Ctrl-C at a known point.
    """
    if os.environ.get("RSST_KILL_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return  # RSST_KILL_RANK=<r>: only that rank of a multi-process run
    if name in os.environ.get("RSST_KILL_AT", "").split(","):
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get('RSST_KILL_SIGNAL', 'KILL')}"))


@contextmanager
def _quiet() -> Iterator[None]:
    """Ranks other than 0 log warnings and errors only: rank 0 speaks for the run."""
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


class _RunLogHandler(logging.FileHandler):
    """A ``FileHandler`` appending to a regular file opened without following a link (``O_NOFOLLOW``)."""

    def _open(self):  # noqa: ANN202  (logging's own signature)
        fd = open_no_follow(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "write")
        return open(fd, "a", encoding=self.encoding, errors=self.errors)  # noqa: PTH123, SIM115


@contextmanager
def _log_to_file(run_dir: Path) -> Iterator[None]:
    """Mirror the ``rsst`` logger into ``run.log`` in the run directory while the run lasts."""
    path = RunFiles(run_dir).log
    try:
        handler = _RunLogHandler(path)
    except RsstError:  # a RunIOError from open_no_follow: a link, or not a regular file
        raise
    except OSError as exc:
        raise io_error("write", path, exc) from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    except RsstError as exc:  # the one line the user sees on stderr, kept in run.log too (only there)
        handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (exc,), None))
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
