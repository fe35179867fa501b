"""Refill and RSST in the round loop (docs/algorithms.md, sections 1, 2, 4): the mask each round trains, the penalty."""

from __future__ import annotations

import copy
import importlib
import math
from pathlib import Path

import pytest
import torch
from helpers import FAST, compose_config, launch, read_rounds
from hydra.errors import HydraException
from torch import nn

from rsst.config.checks import ConfigError
from rsst.folder.tickets import load_masks
from rsst.loop.run import RoundLoop, epoch_seed, run
from rsst.pruning.criteria import Remain
from rsst.pruning.masks import Masks, global_magnitude_prune
from rsst.pruning.refill import refill
from rsst.pruning.regularizer import ExpCustomExponentsSchedule
from rsst.pruning.strategies import RSST, PruneContext

# the module whose train_epoch the round loop calls (the tests spy on it)
run_module = importlib.import_module("rsst.loop.epochs")


def storages(masks) -> list[int]:
    return [t.untyped_storage().data_ptr() for t in masks.values()]


# -- the plan -------------------------------------------------------------------------------------


def test_rsst_plan_trains_with_m_or_r_penalises_m_minus_r_and_ends_with_r():
    conv = nn.Conv2d(2, 4, 1, bias=False)
    model = nn.Sequential(conv)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[9.0, 8.0], [7.0, 0.1], [6.0, 0.2], [0.3, 0.4]]).view(4, 2, 1, 1))
    weights = {"0.weight": conv.weight.detach()}
    ticket = Masks.ones_like(weights)
    ctx = PruneContext(round=1, model=model, weights=weights, masks=ticket, rate=0.5, batches=lambda: iter([]))
    plan = RSST(Remain(), ExpCustomExponentsSchedule()).plan(ctx)
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]).view(4, 2, 1, 1)  # the 4 largest |w|
    # d = 4/8, so n = floor(0.5 * 4) = 2 channels by `remain`: channel 0 (2 alive), then channel 1
    # (1 alive, tied with channel 2 and ahead of it by index)
    r = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]).view(4, 2, 1, 1)
    assert torch.equal(plan.train["0.weight"], torch.maximum(m, r))
    assert torch.equal(plan.final["0.weight"], r)
    assert torch.equal(plan.penalised["0.weight"], m * (1 - r))
    assert int(plan.penalised["0.weight"].sum()) == 1  # channel 2's surviving weight: P_r is not empty
    assert ticket.equal(Masks.ones_like(weights))  # the ticket it was given is untouched
    ptrs = storages(plan.train) + storages(plan.final) + storages(plan.penalised) + storages(ticket)
    assert len(set(ptrs)) == len(ptrs)


# -- rounds in the loop ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def round0(tmp_path_factory) -> dict:
    """The state after a trained dense round 0 (the same for every strategy), computed once."""
    root = tmp_path_factory.mktemp("round0")
    cfg = compose_config([*FAST, "struct=imp", f"paths.root={root}"])
    loop = new_loop(cfg, root / "run")
    loop.fresh_start()
    loop.begin_round()
    for _ in range(cfg.train.epochs):
        loop.run_epoch()
    loop.end_round()
    return copy.deepcopy(loop.checkpoint())


def new_loop(cfg, run_dir: Path) -> RoundLoop:
    run_dir.mkdir(parents=True, exist_ok=True)
    return RoundLoop(cfg, run_dir)


def loop_at_round_1(round0: dict, tmp_path: Path, *overrides: str) -> RoundLoop:
    cfg = compose_config([*FAST, f"paths.root={tmp_path}", *overrides])
    loop = new_loop(cfg, tmp_path / "run")
    loop.restore(copy.deepcopy(round0))
    assert loop.state.round == 1 and loop.state.plan is None
    return loop


def expected_masks(loop: RoundLoop) -> tuple[Masks, Masks]:
    """``(M_1, R_1)`` recomputed from the trained round-0 network, independently of the strategy's plan."""
    weights = {n: w.detach().clone() for n, w in loop.weights.items()}
    pruned = global_magnitude_prune(weights, loop.state.ticket, float(loop.cfg.prune.rate))
    criteria = getattr(loop.strategy, "criteria", None)
    if criteria is None:
        return pruned, pruned
    seed = epoch_seed(loop.cfg.seed, 1, 1 << 15)
    scores = criteria.scores(loop.model, pruned, lambda: loop.epochs.train_batches(seed))
    return pruned, refill(pruned, scores, loop.cfg.struct.fillback_rate)


class TrainSpy:
    """Stands in for ``train_epoch``: records the masks and gradient hook each epoch was trained with."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[torch.Tensor], object]] = []

    def __call__(self, model, batches, optimizer, scheduler, weights, masks, grad_hook=None, **kw):
        self.calls.append(([m.clone() for m in masks], grad_hook))
        return TRAIN_EPOCH(model, batches, optimizer, scheduler, weights, masks, grad_hook, **kw)


TRAIN_EPOCH = run_module.train_epoch


class PenaltySpy:
    """Wraps the RSST penalty: records, per step, the gradient change it made and the lambda it used."""

    def __init__(self, inner, weights: dict[str, torch.Tensor]) -> None:
        self.inner, self.weights, self.steps = inner, weights, []

    def start_epoch(self, epoch: int) -> None:
        self.inner.start_epoch(epoch)

    def metrics(self) -> dict[str, float]:
        return self.inner.metrics()

    def __call__(self) -> None:
        before = {n: w.grad.clone() for n, w in self.weights.items()}
        self.inner()
        diff = {n: w.grad - before[n] for n, w in self.weights.items()}
        self.steps.append((diff, {n: w.detach().clone() for n, w in self.weights.items()}, float(self.inner.lam)))


@pytest.fixture(scope="module")
def rsst_round(round0, tmp_path_factory) -> dict:
    """One RSST round (round 1) from the shared round 0, with the masks and the penalty observed."""
    tmp = tmp_path_factory.mktemp("rsst")
    # the round-long period: lambda climbs once over the round (the per-epoch default is tested below)
    loop = loop_at_round_1(round0, tmp, "struct=rsst", "criteria=l1", "schedule=exp_custom", "schedule.period=round")
    m, r = expected_masks(loop)
    loop.begin_round()
    plan = loop.state.plan
    norm_start = math.sqrt(sum(float((w.detach() * plan.penalised[n]).square().sum()) for n, w in loop.weights.items()))
    spy, penalty = TrainSpy(), PenaltySpy(loop.penalty, loop.weights)
    loop.penalty = penalty
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "train_epoch", spy)
        for _ in range(loop.cfg.train.epochs):
            loop.run_epoch()
    weights_end = {n: w.detach().clone() for n, w in loop.weights.items()}
    record = loop.end_round()
    return {
        "loop": loop,
        "m": m,
        "r": r,
        "plan": plan,
        "spy": spy,
        "penalty": penalty,
        "record": record,
        "norm_start": norm_start,
        "weights_end": weights_end,
        "weights_final": {n: w.detach().clone() for n, w in loop.weights.items()},
    }


def test_an_rsst_round_trains_with_exactly_m_or_r(rsst_round):
    m, r, plan, loop = rsst_round["m"], rsst_round["r"], rsst_round["plan"], rsst_round["loop"]
    assert plan.train.equal(m.union(r)) and plan.final.equal(r) and plan.penalised.equal(m.minus(r))
    assert plan.penalised.alive() > 0
    calls = rsst_round["spy"].calls
    assert len(calls) == loop.cfg.train.epochs
    for masks, hook in calls:
        assert all(torch.equal(t, plan.train[n]) for t, n in zip(masks, loop.names, strict=True))
        assert hook is rsst_round["penalty"]
    for n, w in rsst_round["weights_end"].items():  # trained: nothing outside M | R survives
        assert int((w[plan.train[n] == 0] != 0).sum()) == 0


def test_an_rsst_round_ends_with_exactly_r(rsst_round):
    r, loop = rsst_round["r"], rsst_round["loop"]
    assert loop.state.ticket.equal(r)
    assert Masks(load_masks(loop.run_dir / "masks" / "round_1.pt")).equal(r)
    saved = torch.load(loop.run_dir / "weights" / "round_1.pt", weights_only=True)
    for n, w in rsst_round["weights_final"].items():
        assert torch.equal((w != 0).float(), r[n] * (w != 0).float())
        assert int((saved[n][r[n] == 0] != 0).sum()) == 0
    assert rsst_round["record"]["channel_sparsity"] == pytest.approx(100.0 * r.channel_sparsity())
    assert rsst_round["record"]["remain_weight"] == pytest.approx(100.0 * r.density())


def test_the_penalty_is_nonzero_exactly_on_p(rsst_round):
    p, steps = rsst_round["plan"].penalised, rsst_round["penalty"].steps
    spe = rsst_round["loop"].data.num_batches("train", rsst_round["loop"].cfg.train.batch_size)
    assert len(steps) == spe * rsst_round["loop"].cfg.train.epochs
    for diff, weights, lam in steps:
        assert lam > 0  # lambda(1) > 0: the penalty acts from the first step on
        for n, d in diff.items():
            assert int((d[p[n] == 0] != 0).sum()) == 0, f"{n}: a gradient outside P_r changed"
            torch.testing.assert_close(d, lam * weights[n] * p[n], rtol=1e-3, atol=1e-7)
            inside = p[n] == 1
            assert int((d[inside] != 0).sum()) == int((weights[n][inside] != 0).sum()), n


def test_an_rsst_round_records_lambda_and_the_penalised_norms(rsst_round):
    record, loop = rsst_round["record"], rsst_round["loop"]
    p, end = rsst_round["plan"].penalised, rsst_round["weights_end"]
    assert record["reg_lambda"] == pytest.approx(1.0)  # exp_custom reaches g = 1 at the end of the round
    assert record["penalised_norm_start"] == pytest.approx(rsst_round["norm_start"], rel=1e-6)
    norm_end = math.sqrt(sum(float((w * p[n]).square().sum()) for n, w in end.items()))
    assert record["penalised_norm_end"] == pytest.approx(norm_end, rel=1e-6)
    assert record["penalised_norm_end"] < record["penalised_norm_start"]
    assert {"test_acc", "final_test_acc", "channel_sparsity"} <= set(record)
    assert record["channel_sparsity"] > 0
    rows = [row for row in loop.state.epoch_rows if row["round"] == 1]
    spe, epochs = loop.data.num_batches("train", loop.cfg.train.batch_size), loop.cfg.train.epochs
    expected = [1 / (math.e - 1) * (math.exp((e + 1) * spe / (spe * epochs)) - 1) for e in range(epochs)]
    assert [row["reg_lambda"] for row in rows] == pytest.approx(expected, rel=1e-5)
    assert all("reg_lambda" not in row for row in loop.state.epoch_rows if row["round"] == 0)


def test_a_refill_round_trains_and_ends_with_exactly_r(round0, tmp_path):
    loop = loop_at_round_1(round0, tmp_path, "struct=refill", "criteria=magnitude", "struct.fillback_rate=0.1")
    m, r = expected_masks(loop)
    assert not r.equal(m)
    loop.begin_round()
    assert loop.state.plan.train.equal(r) and loop.state.plan.final.equal(r) and loop.state.plan.penalised is None
    assert loop.penalty is None
    spy = TrainSpy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "train_epoch", spy)
        loop.run_epoch()
    masks, hook = spy.calls[0]
    assert all(torch.equal(t, r[n]) for t, n in zip(masks, loop.names, strict=True)) and hook is None
    record = loop.end_round()
    assert loop.state.ticket.equal(r) and "reg_lambda" not in record


def test_an_imp_round_trains_and_ends_with_exactly_m(round0, tmp_path):
    loop = loop_at_round_1(round0, tmp_path, "struct=imp")
    m, _ = expected_masks(loop)
    loop.begin_round()
    assert loop.state.plan.train.equal(m) and loop.state.plan.final.equal(m) and loop.penalty is None
    spy = TrainSpy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "train_epoch", spy)
        loop.run_epoch()
    assert all(torch.equal(t, m[n]) for t, n in zip(spy.calls[0][0], loop.names, strict=True))
    loop.end_round()
    assert loop.state.ticket.equal(m)


def test_a_resumed_rsst_round_continues_the_exact_lambda_sequence(round0, tmp_path):
    args = (
        "struct=rsst",
        "criteria=remain",
        "schedule=exp_custom_exponents",
        "schedule.period=round",
        "train.epochs=3",
    )
    straight = loop_at_round_1(round0, tmp_path / "straight", *args)
    straight.begin_round()
    for _ in range(3):
        straight.run_epoch()

    first = loop_at_round_1(round0, tmp_path / "killed", *args)
    first.begin_round()
    first.run_epoch()
    state = copy.deepcopy(first.checkpoint())  # what the checkpoint after epoch 1 holds
    resumed = loop_at_round_1(round0, tmp_path / "resumed", *args)
    resumed.restore(state)
    resumed.run_epoch()
    resumed.run_epoch()

    def lambdas(lp: RoundLoop) -> list[float]:
        return [row["reg_lambda"] for row in lp.state.epoch_rows if row["round"] == 1]

    assert lambdas(resumed) == lambdas(straight)
    assert lambdas(straight)[-1] == pytest.approx(1.0)
    assert float(resumed.penalty.t) == float(straight.penalty.t) == 3 * straight.data.num_batches("train", 64)
    assert all(torch.equal(resumed.weights[n], straight.weights[n]) for n in straight.names)


@pytest.mark.parametrize("struct", ["rsst", "refill", "imp"])
def test_a_rounds_masks_are_in_their_weights_memory_format_when_made_and_when_restored(round0, tmp_path, struct):
    """With channels-last weights (the CPU default) every mask of the plan is channels-last too, made once per round."""
    loop = loop_at_round_1(round0, tmp_path / "a", f"struct={struct}")
    cl = torch.channels_last
    convs = [n for n, w in loop.weights.items() if w.dim() == 4]
    assert convs and all(loop.weights[n].is_contiguous(memory_format=cl) for n in convs)
    loop.begin_round()
    plan = loop.state.plan
    for masks in (plan.train, plan.final, plan.penalised):
        if masks is not None:
            assert all(masks[n].is_contiguous(memory_format=cl) for n in convs)
    loop.run_epoch()
    again = loop_at_round_1(round0, tmp_path / "b", f"struct={struct}")
    again.restore(copy.deepcopy(loop.checkpoint()))
    assert all(again.state.plan.train[n].is_contiguous(memory_format=cl) for n in convs)
    assert again.state.plan.train.equal(plan.train)


def gamma_round(round0, tmp_path: Path, scope: str, *extra: str) -> dict:
    """Round 1 of RSST with a strong penalty (lambda climbs by 1 a step to 10) under ``scope``, every gamma observed."""
    args = ["struct=rsst", "criteria=l1", "schedule=x", "schedule.update_every=1", "schedule.ceiling=10"]
    args += ["schedule.reg_granularity_prune=1", "lr_schedule.milestones=[1]"]  # the second epoch at lr 0.01
    loop = loop_at_round_1(round0, tmp_path / scope, *args, f"struct.penalty_scope={scope}", *extra)
    loop.begin_round()
    plan = loop.state.plan
    gammas = {n: p for n, p in loop.model.named_parameters() if n.endswith(".weight") and p.dim() == 1}
    dropped = {}  # gamma name -> the channels the round drops (R row empty, M holds weights), found by hand
    for conv, mask in plan.final.items():
        gamma = conv.replace(".conv", ".bn").replace("conv1.weight", "bn1.weight")
        dropped[gamma] = (mask.flatten(1).sum(1) == 0) & (plan.penalised[conv].flatten(1).sum(1) > 0)
    start = {n: gammas[n].detach().clone() for n in dropped}
    spy = PenaltySpy(loop.penalty, gammas)
    loop.penalty = spy
    for _ in range(loop.cfg.train.epochs):
        loop.run_epoch()
    return {"loop": loop, "dropped": dropped, "start": start, "spy": spy, "record": loop.end_round()}


@pytest.mark.parametrize("extra", [(), ("train.amp=fp16", "struct.block_loss_grad=true")], ids=["fp32", "fp16-block"])
def test_the_channel_scope_drives_the_dropped_channels_gamma_to_zero_and_leaves_the_kept_ones_alone(
    round0, tmp_path, extra
):
    runs = {scope: gamma_round(round0, tmp_path, scope, *extra) for scope in ("weights", "channels")}
    for scope, seen in runs.items():
        loop, dropped = seen["loop"], seen["dropped"]
        assert sum(int(d.sum()) for d in dropped.values()) > 0
        saved = torch.load(loop.run_dir / "weights" / "round_1.pt", weights_only=True)
        ratio = math.sqrt(sum(float(saved[n][d].square().sum()) for n, d in dropped.items())) / math.sqrt(
            sum(float(seen["start"][n][d].square().sum()) for n, d in dropped.items())
        )
        if scope == "channels":  # observed 0.039: the penalty takes the dropped gammas to near zero
            assert ratio < 0.1, ratio
            assert seen["record"]["penalised_gamma_end"] == pytest.approx(
                math.sqrt(sum(float(saved[n][d].square().sum()) for n, d in dropped.items())), rel=1e-5
            )
        else:  # the task alone moves them: they keep their size (observed 0.92 and 0.96)
            assert ratio > 0.5, ratio
            assert "penalised_gamma_end" not in seen["record"]
        for diff, values, lam in seen["spy"].steps:  # the penalty's own change to every gamma's gradient
            for n, d in diff.items():
                mask = dropped.get(n, torch.zeros_like(d, dtype=torch.bool))
                assert int((d[~mask] != 0).sum()) == 0, f"{scope}: a kept channel's gamma gradient changed ({n})"
                if scope == "weights":
                    assert int((d != 0).sum()) == 0, n
                elif not extra:  # added: exactly lambda * gamma (with block_loss_grad the task's part is replaced)
                    torch.testing.assert_close(d[mask], lam * values[n][mask], rtol=1e-4, atol=1e-6)


# -- configuration --------------------------------------------------------------------------------


def test_the_defaults_are_the_original_tools():
    cfg = compose_config([])
    assert cfg.struct._target_ == "rsst.pruning.strategies.RSST"
    assert cfg.struct.fillback_rate == 0.0 and cfg.struct.block_loss_grad is False
    assert cfg.struct.criteria._target_ == "rsst.pruning.criteria.L1"
    s = cfg.struct.schedule
    assert s._target_.endswith("ExpCustomExponentsSchedule") and s.exponents == 4
    # the original's periods: exp_custom* compute lambda from the batch within the epoch, the x family over the round
    assert s.reg_granularity_prune == 1.0 and s.period == "epoch"
    assert compose_config(["schedule=exp_custom"]).struct.schedule.period == "epoch"
    assert cfg.struct.penalty_scope == "weights"
    for kind in ("x", "x2", "x3", "exp"):
        s = compose_config([f"schedule={kind}"]).struct.schedule
        assert (s.kind, s.update_every, s.ceiling, s.reg_granularity_prune) == (kind, 5, 1.0, 1e-4)
        assert s.period == "round"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("struct.fillback_rate=1.5", r"^struct.fillback_rate=1.5 is invalid: expected a number in \[0, 1\]"),
        ("schedule.period=week", r"^schedule.period='week' is invalid: expected one of round, epoch"),
        ("struct.penalty_scope=bn", r"^struct.penalty_scope='bn' is invalid: expected one of weights, channels"),
        ("schedule.exponents=-1", r"^schedule.exponents=-1 is invalid: expected a finite number > 0"),
        ("criteria.batches=0", r"^criteria.batches=0 is invalid: expected an integer >= 1"),
    ],
)
def test_a_wrong_value_fails_before_training_naming_key_value_and_allowed(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        run(compose_config([*FAST, f"paths.root={tmp_path}", override]))
    assert not list(tmp_path.glob("*/checkpoint.pt"))


def test_an_unknown_criterion_is_refused_with_the_options():
    with pytest.raises(HydraException, match=r"(?s)criteria/cosine.*l1.*saliency"):
        compose_config(["criteria=cosine"])


PRESETS = {
    "rsst_cifar100_resnet20": {"struct": "RSST", "criteria": "L1", "fillback_rate": 0.0},
    "refill_cifar100_resnet20": {"struct": "Refill", "criteria": "Magnitude", "fillback_rate": 0.1},
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_experiment_presets_reproduce_the_original_commands(preset):
    cfg = compose_config([f"experiment={preset}"])
    want = PRESETS[preset]
    assert "cifar" in cfg.dataset._target_.lower() and cfg.arch._target_.endswith("resnet20")
    assert cfg.struct._target_.endswith(f".{want['struct']}")
    assert cfg.struct.criteria._target_.endswith(f".{want['criteria']}")
    assert cfg.struct.fillback_rate == want["fillback_rate"]
    assert (cfg.prune.rounds, cfg.prune.rate, cfg.train.epochs, cfg.train.batch_size) == (20, 0.2, 120, 128)
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.01, 0.9, 1e-4)
    assert cfg.lr_schedule.warmup_epochs == 20 and list(cfg.lr_schedule.milestones) == [91, 136]
    if want["struct"] == "RSST":
        s = cfg.struct.schedule
        assert s._target_.endswith("ExpCustomExponentsSchedule") and (s.exponents, s.reg_granularity_prune) == (4, 1.0)
        assert s.period == "epoch"  # the original computes lambda from the batch index within the epoch
        assert cfg.struct.block_loss_grad is False and cfg.struct.penalty_scope == "weights"


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_preset_without_its_data_fails_with_a_message_not_a_traceback(preset, tmp_path):
    proc = launch(f"experiment={preset}", f"paths.root={tmp_path}", f"dataset.root={tmp_path / 'no_data'}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "CIFAR-100" in out and str(tmp_path / "no_data") in out
    assert "Traceback" not in out
    assert not list(tmp_path.glob("*/checkpoint.pt"))


# -- end to end through launch.py ---------------------------------------------------------------------

E2E = [*FAST, "train.epochs=1", "train.batch_size=128", "prune.rounds=2"]


def sweep_rounds(sweep: Path) -> dict[str, list[dict]]:
    return {p.name: read_rounds(p) for p in sorted(sweep.iterdir()) if (p / "rounds.json").exists()}


@pytest.mark.slow
def test_launch_imp_rsst_and_refill_finish_on_the_embedded_data(tmp_path):
    proc = launch("-m", *E2E, "struct=imp,rsst", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    refill_run = launch(
        *E2E, "struct=refill", "criteria=magnitude", "struct.fillback_rate=0.1", f"paths.root={tmp_path}"
    )
    assert refill_run.returncode == 0, refill_run.stderr[-3000:]
    runs = {**sweep_rounds(tmp_path / "sweep"), **sweep_rounds(tmp_path)}
    by_struct = {name.split("_")[0]: rows for name, rows in runs.items()}
    assert set(by_struct) == {"imp", "rsst", "refill"}
    for rows in by_struct.values():
        assert [r["round"] for r in rows] == [0, 1]
    assert by_struct["imp"][1]["channel_sparsity"] == 0.0  # unstructured
    assert by_struct["refill"][1]["channel_sparsity"] > 0 and by_struct["rsst"][1]["channel_sparsity"] > 0
    assert by_struct["rsst"][1]["reg_lambda"] == pytest.approx(1.0)


@pytest.mark.slow
def test_every_criterion_runs_a_round(tmp_path):
    names = ["remain", "magnitude", "l1", "l2", "saliency"]
    proc = launch("-m", *E2E, "struct=rsst", f"criteria={','.join(names)}", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sweep_rounds(tmp_path)
    assert len(runs) == len(names)
    for rows in runs.values():
        assert [r["round"] for r in rows] == [0, 1] and rows[1]["channel_sparsity"] > 0


def notch(k: int) -> float:
    """The x family's argument ``min(u*g, ceiling)`` at its defaults (g = 1e-4, u a notch every 5 steps, ceiling 1)."""
    return min(k // 5 * 1e-4, 1.0)


def epoch_ramp(k: int, steps: int, n: float) -> float:
    """``g/(e-1) * (exp((t/T)^n) - 1)`` at g = 1, ``T`` an epoch: step ``k`` of the round is step ``t`` of its epoch."""
    t = (k - 1) % steps + 1
    return (math.exp((t / steps) ** n) - 1) / (math.e - 1)


# Each schedule's lambda at step k (1-based) of a round of epochs of `steps` steps, at its conf defaults, written
# from docs/algorithms.md's table: the x family over the round, exp_custom and exp_custom_exponents per epoch.
CURVES = {
    "x": lambda k, steps: notch(k),
    "x2": lambda k, steps: notch(k) ** 2,
    "x3": lambda k, steps: notch(k) ** 3,
    "exp": lambda k, steps: math.exp(notch(k)),
    "exp_custom": lambda k, steps: epoch_ramp(k, steps, 1),
    "exp_custom_exponents": lambda k, steps: epoch_ramp(k, steps, 4),
}


@pytest.mark.parametrize("name", sorted(CURVES))
def test_every_schedule_runs_a_round_along_its_own_formula_at_every_step(name, round0, tmp_path):
    loop = loop_at_round_1(round0, tmp_path, "struct=rsst", "criteria=magnitude", f"schedule={name}")
    loop.begin_round()
    penalty = loop.penalty = PenaltySpy(loop.penalty, loop.weights)
    for _ in range(loop.cfg.train.epochs):
        loop.run_epoch()
    record = loop.end_round()
    steps = loop.data.num_batches("train", loop.cfg.train.batch_size)
    seen = [lam for _, _, lam in penalty.steps]
    assert len(seen) == 2 * steps and steps >= 10  # two epochs of the round: both periods show
    want = {other: [curve(k, steps) for k in range(1, 2 * steps + 1)] for other, curve in CURVES.items()}
    assert seen == pytest.approx(want[name], rel=1e-5, abs=1e-30)
    assert record["reg_lambda"] == pytest.approx(want[name][-1], rel=1e-5, abs=1e-30)
    for other in CURVES.keys() - {name}:  # no other schedule's curve passes for this one
        assert seen != pytest.approx(want[other], rel=1e-3, abs=1e-30), other


@pytest.mark.slow
def test_the_penalty_shrinks_p_tenfold_while_a_control_without_it_does_not(tmp_path):
    # lambda climbs by 1 every step to 10 and stays there; the second epoch runs at lr 0.01. Observed on this
    # data set: |P_r| falls from 11.6 to 0.27 (42x) with the penalty, and grows (11.5 -> 12.5) without it.
    args = [*FAST, "prune.rounds=2", "train.batch_size=32", "lr_schedule.milestones=[1]", "struct=rsst"]
    args += ["criteria=l1", "schedule=x", "schedule.update_every=1", "schedule.ceiling=10"]
    proc = launch("-m", *args, "schedule.reg_granularity_prune=1,0", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = {rows[1]["reg_lambda"]: rows[1] for rows in sweep_rounds(tmp_path).values()}
    penalised, control = rounds[10.0], rounds[0.0]
    assert penalised["penalised_norm_start"] == pytest.approx(control["penalised_norm_start"])  # same P_r, same start
    assert penalised["penalised_norm_end"] <= penalised["penalised_norm_start"] / 10
    assert control["penalised_norm_end"] >= control["penalised_norm_start"] / 2
