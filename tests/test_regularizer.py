"""The RSST penalty and its lambda schedules (docs/algorithms.md, section 4), checked against the formulas."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import CONF, compose_config

from rsst.config.checks import build
from rsst.pruning.masks import Masks
from rsst.pruning.regularizer import (
    ExpCustomExponentsSchedule,
    ExpCustomSchedule,
    RSSTPenalty,
    SteppedSchedule,
    penalised_norm,
)
from rsst.pruning.strategies import RoundPlan

E1 = math.e - 1


def lam(schedule, t: int, T: int) -> float:
    return float(schedule(torch.tensor(t), T))


@pytest.mark.parametrize("T", [10, 64, 391])
def test_exp_custom_matches_its_formula_at_0_half_and_end(T):
    g = 0.7
    s = ExpCustomSchedule(reg_granularity_prune=g)
    assert lam(s, 0, T) == 0.0
    assert lam(s, T // 2, T) == pytest.approx(g / E1 * (math.exp((T // 2) / T) - 1), rel=1e-6)
    assert lam(s, T, T) == pytest.approx(g, rel=1e-6)


@pytest.mark.parametrize("n", [1, 2, 4, 2.5])
def test_exp_custom_exponents_matches_its_formula_at_0_half_and_end(n):
    g, T = 1.0, 100
    s = ExpCustomExponentsSchedule(reg_granularity_prune=g, exponents=n)
    assert lam(s, 0, T) == 0.0
    assert lam(s, 50, T) == pytest.approx(g / E1 * (math.exp(0.5**n) - 1), rel=1e-6)
    assert lam(s, T, T) == pytest.approx(g, rel=1e-6)
    if n == 4:  # the default curve is flat early: under 4% of g at half time
        assert lam(s, 50, T) == pytest.approx(0.03753, abs=1e-5)


F = {"x": lambda z: z, "x2": lambda z: z**2, "x3": lambda z: z**3, "exp": math.exp}


@pytest.mark.parametrize("kind", F)
def test_stepped_schedules_match_f_of_min_u_g_ceiling(kind):
    g, every, ceiling, T = 0.05, 5, 0.6, 100
    f = F[kind]
    s = SteppedSchedule(kind=kind, reg_granularity_prune=g, update_every=every, ceiling=ceiling)
    for t in range(T + 1):
        u = t // every
        assert lam(s, t, T) == pytest.approx(f(min(u * g, ceiling)), rel=1e-6), t
    assert lam(s, 0, T) == f(0.0)
    assert lam(s, 50, T) == pytest.approx(f(10 * g), rel=1e-6)  # u*g = 0.5: still rising
    assert lam(s, T, T) == pytest.approx(f(ceiling), rel=1e-6)  # u*g = 1.0 capped at 0.6 from t = 60 on


def test_stepped_schedules_respect_the_ceiling_and_update_every():
    s = SteppedSchedule(kind="x", reg_granularity_prune=0.1, update_every=3, ceiling=0.45)
    seq = [lam(s, t, 100) for t in range(20)]
    assert seq[:3] == [0.0, 0.0, 0.0]  # no notch before `update_every` steps
    assert seq[3:6] == pytest.approx([0.1] * 3)
    assert seq[6] == pytest.approx(0.2)
    assert max(seq) == pytest.approx(0.45) and seq[-1] == pytest.approx(0.45)  # u*g = 0.6 is capped


def test_exp_caps_its_argument_so_it_rises_from_1_towards_e():
    """The original stopped updating once ``g * i >= 1``: ``exp(min(u*g, 1))``, never a constant ``min(1, exp)``."""
    s = SteppedSchedule(kind="exp", reg_granularity_prune=0.1, update_every=1, ceiling=1.0)
    assert lam(s, 0, 100) == 1.0
    assert lam(s, 5, 100) == pytest.approx(math.exp(0.5), rel=1e-6)
    assert lam(s, 10, 100) == pytest.approx(math.e, rel=1e-6) and lam(s, 60, 100) == pytest.approx(math.e, rel=1e-6)
    assert lam(SteppedSchedule(kind="exp", reg_granularity_prune=1.0, ceiling=5.0), 50, 100) == pytest.approx(
        math.exp(5.0), rel=1e-6
    )


# -- every schedule at its conf defaults ----------------------------------------------------------------

SCHEDULES = sorted(p.stem for p in (CONF / "schedule").glob("*.yaml"))
PAPER_T = 352 * 120  # CIFAR-100: 45,000 training images at batch 128, a 120-epoch round


def documented(name: str, schedule, t: int, T: int) -> float:
    """lambda(t) as docs/algorithms.md writes it, in double precision."""
    g = schedule.reg_granularity_prune
    if name in F:
        return F[name](min((t // schedule.update_every) * g, schedule.ceiling))
    n = 1 if name == "exp_custom" else schedule.exponents
    return g / E1 * (math.exp((t / T) ** n) - 1)


@pytest.fixture(scope="module")
def default_round() -> tuple[int, int]:
    """(steps per epoch, epochs) of a round of the default run."""
    cfg = compose_config()
    return build(cfg.dataset, "dataset").num_batches("train", cfg.train.batch_size), cfg.train.epochs


def lambdas_of_a_round(name: str, steps: int, epochs: int) -> tuple[object, list[float]]:
    """The schedule as the run builds it (the real conf, through ``struct=rsst``) and its lambda at every step."""
    strategy = build(compose_config(["struct=rsst", f"schedule={name}"]).struct, "struct")
    w = torch.ones(2, 3)
    ones = Masks.ones_like({"w": w})
    plan = RoundPlan(train=ones, final=Masks({"w": torch.zeros(2, 3)}), penalised=ones.clone())
    penalty = strategy.penalty(plan, {"w": w}, steps, epochs)
    seq = []
    for e in range(epochs):
        penalty.start_epoch(e)
        for _ in range(steps):
            w.grad = torch.zeros_like(w)
            penalty()
            seq.append(float(penalty.lam))
    return strategy.schedule, seq


def rises_over_the_first_half(name: str, schedule, lam_at: list[float]) -> None:
    """``lam_at[t]`` for t = 0 .. T/2: strictly increasing at every update (every step, or every notch)."""
    every = getattr(schedule, "update_every", 1)
    updates = lam_at[::every]
    assert len(updates) >= 10, f"{name}: too few updates in the first half to call it a ramp"
    assert all(b > a for a, b in zip(updates, updates[1:], strict=False)), f"{name} is flat somewhere"
    assert all(b >= a for a, b in zip(lam_at, lam_at[1:], strict=False)), f"{name} falls somewhere"


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_rises_strictly_over_the_first_half_of_its_period_in_a_default_round(name, default_round):
    steps, epochs = default_round
    schedule, seq = lambdas_of_a_round(name, steps, epochs)
    # the original's periods: the exp_custom schedules restart every epoch, the x family climbs over the round
    assert schedule.period == ("epoch" if name.startswith("exp_custom") else "round")
    T = steps * epochs if schedule.period == "round" else steps
    lam_at = [float(schedule(torch.tensor(0), T)), *seq]  # lam_at[k]: step k (1-based) of the round
    rises_over_the_first_half(name, schedule, lam_at[: T // 2 + 1])
    # step k of the round is step t = k of a round-long period, or step (k - 1) % T + 1 of its epoch
    want = [documented(name, schedule, 0, T)]
    want += [
        documented(name, schedule, k if schedule.period == "round" else (k - 1) % T + 1, T)
        for k in range(1, len(seq) + 1)
    ]
    assert lam_at == pytest.approx(want, rel=1e-5, abs=1e-30)


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_rises_strictly_over_the_first_half_of_a_paper_round(name):
    schedule = build(compose_config(["struct=rsst", f"schedule={name}"]).struct, "struct").schedule
    t = torch.arange(PAPER_T // 2 + 1)
    lam_at = schedule(t, PAPER_T).tolist()
    rises_over_the_first_half(name, schedule, lam_at)
    for k in (1, 7, PAPER_T // 4, PAPER_T // 2):
        assert lam_at[k] == pytest.approx(documented(name, schedule, k, PAPER_T), rel=1e-5), k


def run_penalty(penalty: RSSTPenalty, epochs: range, steps: int, w: torch.Tensor) -> list[float]:
    seq = []
    for e in epochs:
        penalty.start_epoch(e)
        for _ in range(steps):
            w.grad = torch.zeros_like(w)
            penalty()
            seq.append(float(penalty.lam))
    return seq


@pytest.mark.parametrize("period", ["round", "epoch"])
def test_penalty_follows_the_schedule_over_its_period(period):
    spe, epochs, g = 4, 3, 2.0
    w = torch.ones(2, 2)
    schedule = ExpCustomExponentsSchedule(reg_granularity_prune=g, exponents=2, period=period)
    penalty = RSSTPenalty([w], [torch.ones(2, 2)], schedule, steps_per_epoch=spe, epochs=epochs)
    seq = run_penalty(penalty, range(epochs), spe, w)
    T = spe * epochs if period == "round" else spe
    # step k (1-based) of the period uses lambda(k): the last step of a period uses lambda(T) = g
    expected = [
        g / E1 * (math.exp((k / T) ** 2) - 1)
        for k in (range(1, T + 1) if period == "round" else list(range(1, spe + 1)) * epochs)
    ]
    assert seq == pytest.approx(expected, rel=1e-6)
    assert seq[-1] == pytest.approx(g)
    if period == "epoch":
        assert seq[spe - 1] == pytest.approx(g) and seq[spe] == pytest.approx(expected[0])


def test_a_resumed_round_continues_the_exact_lambda_sequence():
    spe, epochs = 5, 4
    schedule = SteppedSchedule(kind="x2", reg_granularity_prune=0.1, update_every=2, ceiling=10.0)
    w = torch.ones(3)
    whole = run_penalty(RSSTPenalty([w], [torch.ones(3)], schedule, spe, epochs), range(epochs), spe, w)
    resumed = run_penalty(RSSTPenalty([w], [torch.ones(3)], schedule, spe, epochs), range(2, epochs), spe, w)
    assert resumed == whole[2 * spe :]


def make_layer(seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 3, 3, 3, generator=gen)
    p = torch.zeros(4, 3, 3, 3)
    p[1] = (torch.rand(3, 3, 3, generator=gen) < 0.5).float()  # partly alive channels, cut by refill
    p[3] = 1.0
    return w, p


def constant(value: float) -> SteppedSchedule:
    """lambda = value from the first step on."""
    return SteppedSchedule(kind="x", reg_granularity_prune=value, update_every=1, ceiling=value)


def test_penalty_is_nonzero_exactly_on_P_and_equals_lambda_w():
    (w1, p1), (w2, _) = make_layer(0), make_layer(1)
    p2 = torch.zeros_like(w2)  # a layer with nothing penalised
    task = [torch.randn_like(w1), torch.randn_like(w2)]
    w1.grad, w2.grad = task[0].clone(), task[1].clone()
    w_before = [w1.clone(), w2.clone()]
    RSSTPenalty([w1, w2], [p1, p2], constant(0.5), steps_per_epoch=10, epochs=1)()
    added = w1.grad - task[0]
    assert torch.equal(added != 0, (p1 == 1) & (w1 != 0))
    torch.testing.assert_close(added, 0.5 * w1 * p1)
    assert torch.equal(w2.grad, task[1])
    assert torch.equal(w1, w_before[0]) and torch.equal(w2, w_before[1])  # weights are the optimiser's job


def test_block_loss_grad_changes_only_the_gradients_of_P():
    w, p = make_layer(2)
    task = torch.randn_like(w)
    outside = p == 0
    for block in (False, True):
        w.grad = task.clone()
        RSSTPenalty([w], [p], constant(0.25), 10, 1, block_loss_grad=block)()
        assert torch.equal(w.grad[outside], task[outside])  # bit for bit
        inside = p == 1
        expected = 0.25 * w[inside] + (0 if block else task[inside])
        torch.testing.assert_close(w.grad[inside], expected)
    assert not torch.equal(task[p == 1], w.grad[p == 1])


def test_penalty_step_never_reads_a_tensor_on_the_host(monkeypatch):
    w, p = make_layer(3)
    penalty = RSSTPenalty([w], [p], ExpCustomExponentsSchedule(1.0, 4), 10, 2, block_loss_grad=True)
    w.grad = torch.zeros_like(w)

    def host_read(*args, **kwargs):
        raise AssertionError("the penalty step read a tensor on the host")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    for _ in range(3):
        penalty()
    monkeypatch.undo()
    assert penalty.t.item() == 3 and penalty.lam.dim() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to check for host synchronisation")
def test_penalty_step_does_not_synchronise_with_the_gpu():
    w, p = (t.cuda() for t in make_layer(4))
    penalty = RSSTPenalty([w], [p], ExpCustomExponentsSchedule(1.0, 4), 10, 2)
    w.grad = torch.zeros_like(w)
    penalty.start_epoch(1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            penalty()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert penalty.t.item() == 15
    assert penalty.lam.item() == pytest.approx(1 / E1 * (math.exp((15 / 20) ** 4) - 1), rel=1e-5)


def test_penalised_norm_is_the_l2_norm_of_the_penalised_weights():
    w = {"a": torch.tensor([[3.0, 1.0], [4.0, 2.0]]), "b": torch.tensor([12.0, 5.0])}
    p = {"a": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "b": torch.tensor([1.0, 0.0])}
    assert penalised_norm(w, p) == pytest.approx(13.0)  # sqrt(9 + 16 + 144)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: ExpCustomSchedule(1.0, period="week"),
            r"schedule.period='week' is invalid: expected one of round, ep",
        ),
        (lambda: ExpCustomExponentsSchedule(1.0, exponents=-1), r"schedule.exponents=-1 is invalid: expected a fin"),
        (lambda: ExpCustomSchedule(-0.5), r"schedule.reg_granularity_prune=-0.5 is invalid: expected a finite number"),
        (lambda: SteppedSchedule(kind="x4"), r"schedule.kind='x4' is invalid: expected one of x, x2, x3, exp"),
        (lambda: SteppedSchedule(update_every=0), r"schedule.update_every=0 is invalid: expected an integer >= 1"),
        (lambda: SteppedSchedule(ceiling=0), r"schedule.ceiling=0 is invalid: expected a finite number > 0"),
    ],
)
def test_schedules_reject_wrong_values_with_key_value_and_what_is_allowed(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# -- penalty_scope=channels: the BatchNorm scale of the dropped channels ----------------------------


def conv_bn_net() -> torch.nn.Module:
    """conv(2->4, 1x1) -> BN(4) -> ReLU -> pool -> linear: gamma of channel c scales conv channel c's output."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 1, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(inplace=True),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    )  # fmt: skip
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -1.5, 2.0, 3.0]))  # distinct gammas, one negative
    return net


def hand_plan() -> RoundPlan:
    """Channels 0, 1 kept whole (R); channel 2 dropped with one weight left in M (P); channel 3 already dead."""
    final = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]).view(4, 2, 1, 1)
    penalised = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]).view(4, 2, 1, 1)
    train = final + penalised
    name = "0.weight"
    return RoundPlan(train=Masks({name: train}), final=Masks({name: final}), penalised=Masks({name: penalised}))


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("scope", ["weights", "channels"])
def test_the_channel_scope_adds_lambda_times_gamma_to_the_dropped_channels_gradient_alone(scope, block):
    from rsst.pruning.criteria import L1
    from rsst.pruning.strategies import RSST

    net = conv_bn_net()
    x = torch.randn(6, 2, 3, 3)
    net(x).square().sum().backward()
    task = {n: p.grad.clone() for n, p in net.named_parameters()}
    schedule = ExpCustomExponentsSchedule(reg_granularity_prune=0.8, exponents=2, period="epoch")
    strategy = RSST(L1(), schedule, block_loss_grad=block, penalty_scope=scope)
    weights = {"0.weight": net[0].weight}
    penalty = strategy.penalty(hand_plan(), weights, steps_per_epoch=4, epochs=2, norms={"0.weight": net[1].weight})
    penalty.start_epoch(0)
    penalty()
    lam1 = 0.8 / E1 * (math.exp((1 / 4) ** 2) - 1)  # step 1 of a 4-step period
    assert float(penalty.lam) == pytest.approx(lam1, rel=1e-6)
    gamma, w = net[1].weight.detach(), net[0].weight.detach()
    # by hand: only channel 2 is dropped (R row empty, a weight of M in it); channel 3 holds no weight of M
    expected_gamma = task["1.weight"].clone()
    if scope == "channels":
        expected_gamma[2] = (0.0 if block else expected_gamma[2]) + lam1 * 2.0
    torch.testing.assert_close(net[1].weight.grad, expected_gamma, rtol=1e-6, atol=1e-7)
    expected_w = task["0.weight"].clone()
    expected_w[2, 0] = (0.0 if block else expected_w[2, 0]) + lam1 * w[2, 0]
    torch.testing.assert_close(net[0].weight.grad, expected_w, rtol=1e-6, atol=1e-7)
    assert float(gamma[2]) == 2.0  # the penalty changes gradients, never the tensors
    for name in ("1.bias", "5.weight", "5.bias"):  # beta and everything else: untouched
        assert torch.equal(dict(net.named_parameters())[name].grad, task[name])


def test_following_norms_pairs_each_conv_with_the_batchnorm_that_normalises_its_output():
    from rsst.models.cifar_resnet import resnet20
    from rsst.models.lth import conv2
    from rsst.models.norms import following_norms

    model = resnet20(num_classes=10, in_channels=3, image_size=32, width=4)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = following_norms(model, (1, 3, 32, 32))
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    # every conv of a CIFAR ResNet is followed by its own BN: conv1->bn1, layerX.Y.convZ->layerX.Y.bnZ
    assert pairs == {c: c.replace("conv", "bn") for c in convs} and len(pairs) == 19
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())  # eval mode: no statistic moved
    assert model.training
    assert following_norms(conv2(num_classes=10, in_channels=3, image_size=32), (1, 3, 32, 32)) == {}
    dense = torchvision_densenet()
    found = following_norms(dense, (1, 3, 32, 32))
    layer = "features.denseblock1.denselayer1"
    assert found[f"{layer}.conv1"] == f"{layer}.norm2"  # the bottleneck: conv1 -> norm2 directly
    assert f"{layer}.conv2" not in found  # conv2 feeds the concatenation: no BN normalises it alone


def torchvision_densenet() -> torch.nn.Module:
    from torchvision.models import DenseNet

    return DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=10)
