"""SNIP, GraSP, SynFlow, OMP and random pruning (rsst.pruning.init_methods) on toy networks, in milliseconds."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsst.folder.checkpoint import clone_state
from rsst.models import prunable_weights
from rsst.pruning.admm import ADMM
from rsst.pruning.init_methods import (
    OMP,
    SNIP,
    GraSP,
    Random,
    SynFlow,
    grasp_scores,
    hessian_gradient_product,
    keep_top_k,
    model_at_rewind,
    snip_scores,
    synflow_masks,
)
from rsst.pruning.masks import Masks, global_magnitude_prune
from rsst.pruning.strategies import PruneContext, imp_equivalent_density, target_keep


class Toy(nn.Module):
    """A stem conv, two prunable convs with BatchNorm, a classifier: the smallest net with every piece."""

    stem_name = "stem"
    classifier_name = "fc"

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.stem(x))
        x = torch.tanh(self.bn1(self.conv1(x)))
        return self.fc(torch.tanh(self.conv2(x)).mean((2, 3)))


def toy_batches(seed: int, n: int = 3, shape=(8, 1, 5, 5)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g), torch.randint(0, 3, (shape[0],), generator=g)) for _ in range(n)]


def make_ctx(model: nn.Module, density: float | None = 0.3, data=None, masks: Masks | None = None, **kw):
    """A round-1 context: ``model`` is "trained", its rewind point a fresh initialisation of the same net."""
    weights = {n: w.detach() for n, w in prunable_weights(model, kw.pop("include_stem", False)).items()}
    torch.manual_seed(123)
    theta = clone_state(type(model)())
    data = toy_batches(0) if data is None else data
    return PruneContext(
        round=kw.pop("round", 1),
        model=model,
        weights=weights,
        masks=Masks.ones_like(weights) if masks is None else masks,
        rate=0.2,
        batches=lambda: iter(data),
        density=density,
        seed=kw.pop("seed", 0),
        theta_rewind=theta,
        dense=lambda: model.state_dict(),
    )


def toy() -> Toy:
    torch.manual_seed(0)
    return Toy()


STRATEGIES = {
    "snip": lambda: SNIP(batches=2),
    "grasp": lambda: GraSP(batches=2),
    "synflow": lambda: SynFlow(iterations=10),
    "omp": OMP,
    "random_global": lambda: Random("global"),
    "random_layerwise": lambda: Random("layerwise"),
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("density", [0.3, 0.01])
def test_every_method_hits_its_target_density_and_leaves_stem_and_model_alone(name, density):
    model = toy()
    before = clone_state(model)
    ctx = make_ctx(model, density)
    plan = STRATEGIES[name]().plan(ctx)
    total, layers = ctx.masks.numel(), len(ctx.masks)
    assert set(plan.train) == {"conv1.weight", "conv2.weight"}  # the stem is not prunable by default
    if name == "random_layerwise":  # per layer round(d * numel): within one weight per layer
        assert abs(plan.train.alive() - density * total) <= layers
    else:
        assert plan.train.alive() == round(density * total)
    assert plan.final.equal(plan.train) and plan.final is not plan.train
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items())  # scoring ran on a copy (BN buffers too)


@pytest.mark.parametrize("name", ["snip", "grasp", "synflow", "omp", "random_global"])
def test_with_include_stem_the_stem_is_pruned_too(name):
    ctx = make_ctx(toy(), 0.05, include_stem=True)
    plan = STRATEGIES[name]().plan(ctx)
    assert "stem.weight" in plan.train and plan.train.alive() == round(0.05 * ctx.masks.numel())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_later_round_prunes_inside_the_ticket_to_the_imp_equivalent_count(name):
    model = toy()
    slack = 2 if name == "random_layerwise" else 0  # layerwise rounds per layer: one weight per layer
    first = STRATEGIES[name]().plan(make_ctx(model, None))
    assert target_keep(make_ctx(model, None)) == 540 - round(0.2 * 540)
    assert abs(first.train.alive() - (540 - round(0.2 * 540))) <= slack
    second = STRATEGIES[name]().plan(make_ctx(model, None, masks=first.final, round=2))
    alive = first.final.alive()
    assert abs(second.train.alive() - (alive - round(0.2 * alive))) <= slack
    assert second.train.minus(first.final).alive() == 0  # nested: nothing comes back


def test_imp_equivalent_density_is_what_imp_reaches_round_by_round():
    weights = {"a": torch.randn(37, 3), "b": torch.randn(5, 7, 3)}
    masks = Masks.ones_like(weights)
    for r in range(1, 9):
        masks = global_magnitude_prune(weights, masks, 0.2)
        assert round(imp_equivalent_density(masks.numel(), 0.2, r) * masks.numel()) == masks.alive()


def test_keep_top_k_keeps_exactly_k_alive_weights_ties_to_the_earlier_index():
    scores = {"a": torch.tensor([3.0, 1.0, 1.0, 5.0]), "b": torch.tensor([1.0, 9.0])}
    masks = Masks({"a": torch.tensor([1.0, 1.0, 1.0, 0.0]), "b": torch.ones(2)})
    out = keep_top_k(scores, masks, 3)
    assert out["a"].tolist() == [1.0, 1.0, 0.0, 0.0] and out["b"].tolist() == [0.0, 1.0]  # 5.0 is not alive
    assert keep_top_k(scores, masks, 10).equal(masks)
    with pytest.raises(ValueError, match="NaN"):
        keep_top_k({"a": torch.full((4,), float("nan")), "b": torch.ones(2)}, masks, 2)


# -- SNIP -----------------------------------------------------------------------------------------


class Linearish(nn.Module):
    """``logits = V W A x`` with 1x1 convs: every gradient has a closed form."""

    stem_name = "a"

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1, bias=False)
        self.w = nn.Conv2d(2, 3, 1, bias=False)
        self.v = nn.Linear(3, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.w(self.a(x)).flatten(1))


def test_snip_scores_equal_abs_g_times_w_by_hand():
    torch.manual_seed(0)
    net = Linearish()
    data = [
        (torch.randn(4, 2, 1, 1), torch.tensor([0, 1, 1, 0])),
        (torch.randn(4, 2, 1, 1), torch.tensor([1, 1, 0, 0])),
    ]
    scores = snip_scores(net, ["w.weight"], lambda: iter(data), 2)
    a, w, v = net.a.weight[:, :, 0, 0].detach(), net.w.weight[:, :, 0, 0].detach(), net.v.weight.detach()
    grad = torch.zeros_like(w)
    for x, y in data:
        h = x[:, :, 0, 0] @ a.T  # [B, 2]: the input of w
        p = torch.softmax(h @ w.T @ v.T, dim=1)
        delta = (p - F.one_hot(y, 2).float()) / len(y)  # dLoss/dlogits of the batch's mean cross-entropy
        grad += (delta @ v).T @ h  # dLoss/dW = V^T delta^T h
    torch.testing.assert_close(scores["w.weight"][:, :, 0, 0], (grad * w).abs())
    one = snip_scores(net, ["w.weight"], lambda: iter(data), 1)  # only the first `batches` count
    assert not torch.allclose(one["w.weight"], scores["w.weight"])


def test_snip_scores_the_rewind_point_not_the_trained_weights():
    model = toy()
    ctx = make_ctx(model, 0.3)
    at_init = copy.deepcopy(model)
    at_init.load_state_dict(ctx.theta_rewind)
    expected = snip_scores(at_init, ctx.masks, ctx.batches, 2)
    assert SNIP(batches=2).plan(ctx).train.equal(keep_top_k(expected, ctx.masks, target_keep(ctx)))
    trained = snip_scores(copy.deepcopy(model), ctx.masks, ctx.batches, 2)
    assert not keep_top_k(trained, ctx.masks, target_keep(ctx)).equal(keep_top_k(expected, ctx.masks, target_keep(ctx)))


# -- GraSP ----------------------------------------------------------------------------------------


def test_grasp_hessian_gradient_product_matches_finite_differences():
    model = toy().double()
    data = [(x.double(), y) for x, y in toy_batches(1, n=2)]
    names = ["conv1.weight", "conv2.weight"]
    params = [model.get_parameter(n) for n in names]
    g, hg = hessian_gradient_product(model, names, lambda: iter(data), 2, temperature=2.0)

    def total_grad() -> list[torch.Tensor]:
        loss = sum(F.cross_entropy(model(x) / 2.0, y) for x, y in data)
        return list(torch.autograd.grad(loss, params))

    eps, theta = 1e-5, [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_add_(params, [g[n] for n in names], alpha=eps)
    plus = total_grad()
    with torch.no_grad():
        torch._foreach_add_(params, [g[n] for n in names], alpha=-2 * eps)
    minus = total_grad()
    for n, p, t, gp, gm in zip(names, params, theta, plus, minus, strict=True):
        with torch.no_grad():
            p.copy_(t)
        torch.testing.assert_close(hg[n], (gp - gm) / (2 * eps), rtol=1e-6, atol=1e-9)
        assert hg[n].abs().max() > 1e-4  # a real, non-trivial product


def test_grasp_removes_the_largest_minus_w_hg_and_keeps_the_smallest():
    ctx = make_ctx(toy(), 0.3)
    scores = grasp_scores(model_at_rewind(ctx), ctx.masks, ctx.batches, 2, 200.0)
    plan = GraSP(batches=2).plan(ctx)
    flat = torch.cat([scores[n].flatten() for n in ctx.masks])
    kept = torch.cat([plan.train[n].flatten() for n in ctx.masks]).bool()
    assert flat[kept].max() <= flat[~kept].min()  # every kept S is below every removed S


# -- SynFlow --------------------------------------------------------------------------------------


def test_synflow_masks_do_not_depend_on_the_data():
    model = toy()
    a = SynFlow(iterations=20).plan(make_ctx(model, 0.1, data=toy_batches(1)))
    b = SynFlow(iterations=20).plan(make_ctx(model, 0.1, data=[(x * 7 + 3, (y + 1) % 3) for x, y in toy_batches(2)]))
    assert a.train.equal(b.train) and a.train.alive() == round(0.1 * 540)


class DeepNarrow(nn.Module):
    """Eight 8-channel convs in a chain; the fourth is initialised 100x smaller than the others."""

    stem_name = "stem"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.body = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU()) for _ in range(8)]
        )
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            self.body[3][0].weight.mul_(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


def test_synflow_avoids_the_layer_collapse_of_one_shot_magnitude_pruning_at_one_percent():
    model = DeepNarrow()
    weights = {n: w.detach() for n, w in prunable_weights(model).items()}
    masks = Masks.ones_like(weights)
    keep = round(0.01 * masks.numel())
    magnitude = global_magnitude_prune(weights, masks, 1 - keep / masks.numel())
    assert magnitude.alive() == keep
    assert magnitude["body.3.0.weight"].sum() == 0  # one-shot magnitude pruning collapses the small layer
    synflow = synflow_masks(copy.deepcopy(model), masks, keep, 100, torch.Size([1, 4, 4]))
    assert synflow.alive() == keep
    assert all(m.sum() > 0 for m in synflow.values()), synflow.layer_density()


# -- OMP and random -------------------------------------------------------------------------------


def test_omp_keeps_the_largest_weights_of_the_trained_dense_network_whatever_the_ticket_holds():
    model = toy()
    dense = clone_state(model)
    ticket = OMP().plan(make_ctx(model, 0.5)).final
    with torch.no_grad():  # later rounds see other trained weights; OMP still scores round 0's
        for p in model.parameters():
            p.mul_(torch.rand_like(p))
    ctx = make_ctx(model, 0.1, masks=ticket, round=3)
    ctx.dense = lambda: dense
    plan = OMP().plan(ctx)
    scores = {n: dense[n].abs() for n in ctx.masks}
    assert plan.train.equal(keep_top_k(scores, Masks.ones_like(scores), round(0.1 * 540)))


def test_random_layerwise_gives_every_layer_the_same_density_and_global_the_target():
    weights = {"a": torch.zeros(40, 10), "b": torch.zeros(20, 10), "c": torch.zeros(300)}
    ctx = PruneContext(1, nn.Identity(), weights, Masks.ones_like(weights), 0.2, lambda: iter([]), density=0.25)
    layerwise = Random("layerwise").plan(ctx).train
    assert layerwise.layer_density() == {"a": 0.25, "b": 0.25, "c": 0.25}
    glob = Random("global").plan(ctx).train
    assert glob.alive() == 225 and len(set(glob.layer_density().values())) > 1


def test_random_masks_are_reproducible_from_seed_and_round():
    model = toy()

    def plan(seed: int, round_: int) -> Masks:
        return Random("global").plan(make_ctx(model, 0.3, seed=seed, round=round_)).train

    assert plan(0, 1).equal(plan(0, 1))
    assert not plan(0, 1).equal(plan(1, 1)) and not plan(0, 1).equal(plan(0, 2))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Random("diagonal"), r"mode='diagonal' is invalid: expected one of layerwise, global"),
        (lambda: SynFlow(iterations=0), r"iterations=0 is invalid: expected an integer >= 1"),
        (lambda: SNIP(batches=0), r"batches=0 is invalid: expected an integer >= 1"),
        (lambda: GraSP(temperature=0), r"temperature=0 is invalid: expected a number > 0"),
        (lambda: ADMM(rho=-1.0), r"rho=-1.0 is invalid: expected a number > 0"),
        (lambda: ADMM(update_every=0), r"update_every=0 is invalid: expected an integer >= 1"),
    ],
)
def test_a_wrong_argument_is_refused_with_key_value_and_what_is_allowed(build, message):
    with pytest.raises(ValueError, match=message):
        build()
