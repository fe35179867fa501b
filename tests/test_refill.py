"""Refill (docs/algorithms.md, section 2): whole output channels, exactly n of them, top-n by score, no aliasing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rsst.pruning.criteria import L1, Magnitude, Remain
from rsst.pruning.masks import Masks
from rsst.pruning.refill import channels_to_keep, refill, top_channels
from rsst.pruning.regularizer import ExpCustomSchedule
from rsst.pruning.strategies import RSST, PruneContext, Refill, magnitude_mask


def expected_n(alive: int, numel: int, c_out: int, rate: float) -> int:
    """The formula written out with Python floats, for cases where floats are exact."""
    d = alive / numel
    return min(max(math.floor(d * c_out + (c_out - d * c_out) * rate), 1), c_out)


def random_mask(shape: tuple[int, ...], density: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < density).float()


@pytest.mark.parametrize(
    ("alive", "numel", "c_out", "rate", "n"),
    [
        (0, 72, 8, 0.0, 1),  # density 0 -> one channel
        (0, 72, 8, 0.5, 4),  # density 0, half filled back
        (72, 72, 8, 0.0, 8),  # density 1 -> all channels
        (72, 72, 8, 0.3, 8),
        (36, 72, 8, 0.0, 4),  # d*C_out = 4
        (35, 72, 8, 0.0, 3),  # d*C_out = 3.89: floor
        (36, 72, 8, 0.5, 6),  # 4 + 4*0.5
        (36, 72, 8, 1.0, 8),  # fillback_rate 1 keeps all
        (10, 72, 8, 0.1, 1),  # 1.11 + 6.89*0.1 = 1.8
        (9, 72, 8, 0.0, 1),  # exactly one channel's worth
    ],
)
def test_channels_to_keep_follows_the_formula(alive, numel, c_out, rate, n):
    assert channels_to_keep(alive, numel, c_out, rate) == n
    assert expected_n(alive, numel, c_out, rate) == n


def test_channels_to_keep_is_exact_where_floats_round_down():
    # d*C_out = 14/9 and (6 - 14/9) * 0.1 = 4/9: exactly 2 channels, while floats give 1.9999999999999998
    d = 14 / 54
    assert d * 6 + (6 - d * 6) * 0.1 < 2
    assert channels_to_keep(14, 54, 6, 0.1) == 2
    # the fill-back rate is the decimal as written: 10 * 0.3 is 3 channels, not 2.999...
    assert channels_to_keep(0, 90, 10, 0.3) == 3


@pytest.mark.parametrize("density", [0.0, 0.05, 0.2, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_refill_rows_are_whole_with_exactly_n_per_layer(density, rate):
    shapes = {"conv_a.weight": (8, 3, 3, 3), "conv_b.weight": (16, 8, 1, 1), "fc.weight": (5, 16)}
    masks = Masks({n: random_mask(s, density, seed=i) for i, (n, s) in enumerate(shapes.items())})
    scores = {n: torch.randn(s[0], generator=torch.Generator().manual_seed(7)) for n, s in shapes.items()}
    out = refill(masks, scores, rate)
    assert set(out) == set(masks)
    for name, r in out.items():
        m = masks[name]
        assert r.shape == m.shape and r.dtype == torch.float32
        rows = r.flatten(1)
        assert bool(((rows == 0).all(1) | (rows == 1).all(1)).all()), f"{name}: a row is partly kept"
        n = expected_n(int(m.sum()), m.numel(), m.shape[0], rate)
        assert int(rows[:, 0].sum()) == n
    if density == 0.0 and rate == 0.0:
        assert all(int(r.flatten(1)[:, 0].sum()) == 1 for r in out.values())
    if density == 1.0 or rate == 1.0:
        assert all(bool((r == 1).all()) for r in out.values())


def test_refill_keeps_the_top_scores_and_breaks_ties_by_index():
    mask = torch.zeros(6, 2, 1, 1)
    mask[:3] = 1  # d*C_out = 3
    scores = torch.tensor([0.5, 2.0, 0.5, 9.0, 0.5, 0.1])
    r = refill({"w": mask}, {"w": scores})["w"]
    assert r[:, 0, 0, 0].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]  # 9, 2, then the first of three 0.5s
    assert top_channels(torch.zeros(4), 2).tolist() == [0, 1]
    assert top_channels(torch.tensor([1.0, 3.0, 3.0, 2.0]), 3).tolist() == [1, 2, 3]


def test_refill_never_writes_into_or_aliases_its_inputs():
    masks = Masks({"a.weight": random_mask((8, 4, 3, 3), 0.3, 0), "b.weight": random_mask((4, 8, 3, 3), 0.6, 1)})
    scores = {"a.weight": torch.arange(8.0), "b.weight": torch.tensor([3.0, 1.0, 2.0, 0.0])}
    before = masks.clone()
    scores_before = {n: s.clone() for n, s in scores.items()}
    out = refill(masks, scores, 0.2)
    assert masks.equal(before)
    assert all(torch.equal(scores[n], scores_before[n]) for n in scores)
    inputs = {t.untyped_storage().data_ptr() for t in [*masks.values(), *scores.values()]}
    outputs = [t.untyped_storage().data_ptr() for t in out.values()]
    assert not inputs & set(outputs) and len(set(outputs)) == len(outputs)
    out["a.weight"].zero_()
    assert masks.equal(before)


def test_refill_rejects_a_fillback_rate_outside_0_1():
    with pytest.raises(ValueError, match=r"fillback_rate=1.5 is invalid: expected a number in \[0, 1\]"):
        refill({"w": torch.ones(2, 1)}, {"w": torch.ones(2)}, 1.5)
    with pytest.raises(ValueError, match=r"fillback_rate=-0.1"):
        Refill(Remain(), fillback_rate=-0.1)


class HandPicked(nn.Module):
    """``conv1``: 4 filters of 1x2 weights; ``conv2``: 3 filters of 4 (1x1 over 4 channels). 20 weights whose
    magnitudes are all distinct, so every step of a Refill round can be worked out by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, (1, 2), bias=False)
        self.conv2 = nn.Conv2d(4, 3, 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.copy_(
                torch.tensor([[0.9, 0.1], [0.6, 0.55], [-1.0, 0.2], [0.05, -0.15]]).view(4, 1, 1, 2)
            )
            w2 = [[0.4, -0.45, 0.01, 0.02], [1.2, 0.03, 0.04, 0.06], [0.36, 0.37, 0.38, 0.25]]
            self.conv2.weight.copy_(torch.tensor(w2).view(3, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)).mean((2, 3))


def test_refill_strategy_trains_and_ends_with_the_hand_derived_channels_of_the_magnitude_mask():
    model = HandPicked()
    weights = {n: p.detach() for n, p in model.named_parameters()}
    ticket = Masks.ones_like(weights)
    ctx = PruneContext(round=1, model=model, weights=weights, masks=ticket, rate=0.5, batches=lambda: iter([]))
    plan = Refill(Magnitude(), fillback_rate=0.0).plan(ctx)
    # M_1: rate 0.5 of 20 alive removes the 10 smallest |w| (0.01 .. 0.25); the 10 from 0.36 up stay.
    m1 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]).view(4, 1, 1, 2)
    m2 = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]).view(3, 4, 1, 1)
    assert torch.equal(magnitude_mask(ctx)["conv1.weight"], m1) and torch.equal(magnitude_mask(ctx)["conv2.weight"], m2)
    # conv1: 4 of 8 alive, n = floor(4/8 * 4) = 2; masked L1 per channel 0.9, 1.15, 1.0, 0 keeps channels 1 and 2
    # (by the count of survivors, `remain`, it would be channels 1 and 0). conv2: 6 of 12 alive, n = floor(1.5) = 1;
    # masked L1 0.85, 1.2, 1.11 keeps channel 1, whose single survivor outweighs channel 2's three.
    r1 = torch.tensor([0.0, 1.0, 1.0, 0.0]).view(4, 1, 1, 1).expand(4, 1, 1, 2)
    r2 = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1, 1).expand(3, 4, 1, 1)
    for masks in (plan.train, plan.final):
        assert torch.equal(masks["conv1.weight"], r1) and torch.equal(masks["conv2.weight"], r2)
    assert plan.penalised is None
    assert plan.train["conv1.weight"].data_ptr() != plan.final["conv1.weight"].data_ptr()
    assert ticket.equal(Masks.ones_like(weights))
    by_count = Refill(Remain(), fillback_rate=0.0).plan(ctx).final  # conv1: channels 0 and 2 tie; the lower index wins
    assert by_count["conv1.weight"][:, 0, 0, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert by_count["conv2.weight"][:, 0, 0, 0].tolist() == [0.0, 0.0, 1.0]


class ConvFC(nn.Module):
    """Two convs, a hidden fully connected layer and a 10-class classifier ``fc``."""

    classifier_name = "fc"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.hidden = nn.Linear(8 * 4 * 4, 12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.relu(self.hidden(out.flatten(1))))


@pytest.mark.parametrize("strategy", ["refill", "rsst"])
@pytest.mark.parametrize("criterion", [Magnitude, L1])
def test_with_include_fc_refill_keeps_linear_masks_unstructured_and_every_class(strategy, criterion):
    """Refill acts on conv channels only: a classifier row is a class, and M_r's Linear masks pass through."""
    torch.manual_seed(0)
    model = ConvFC()
    weights = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}  # include_fc=true
    ticket = Masks.ones_like(weights)
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 1, 4, 4, generator=gen), torch.randint(10, (16,), generator=gen))
    ctx = PruneContext(round=1, model=model, weights=weights, masks=ticket, rate=0.6, batches=lambda: iter([batch]))
    made = Refill(criterion(), 0.0) if strategy == "refill" else RSST(criterion(), ExpCustomSchedule(1.0), 0.0)
    plan = made.plan(ctx)
    pruned = magnitude_mask(ctx)
    for name in ("hidden.weight", "fc.weight"):
        assert torch.equal(plan.final[name], pruned[name])  # R_r's Linear mask is M_r's
        rows = plan.final[name].sum(1)
        assert bool(((rows > 0) & (rows < plan.final[name].shape[1])).any())  # not row-wise: partial rows exist
    assert int((plan.final["fc.weight"].sum(1) == 0).sum()) == 0  # every one of the 10 classes keeps weights
    for name in ("conv1.weight", "conv2.weight"):
        rows = plan.final[name].flatten(1).sum(1)
        assert bool(((rows == 0) | (rows == plan.final[name][0].numel())).all())  # whole output channels
        assert 0 < int((rows > 0).sum()) < plan.final[name].shape[0]
    if strategy == "rsst":
        assert plan.penalised is not None
        assert plan.penalised["fc.weight"].sum() == 0 and plan.penalised["hidden.weight"].sum() == 0
        assert plan.train["fc.weight"].equal(pruned["fc.weight"])
    # what refill would do to the classifier if it treated it as channels: 93 of 120 alive keeps 7 rows, 3 classes gone
    assert int(pruned["fc.weight"].sum()) == 93
    row_wise = refill({"fc.weight": pruned["fc.weight"]}, {"fc.weight": torch.arange(10.0)}, 0.0)
    assert int((row_wise["fc.weight"].sum(1) == 0).sum()) == 3


def test_refill_copies_unstructured_layers_without_aliasing_and_needs_no_score_for_them():
    masks = Masks({"conv": random_mask((4, 2, 3, 3), 0.5, 0), "fc": random_mask((5, 6), 0.5, 1)})
    out = refill(masks, {"conv": torch.arange(4.0)}, 0.0, unstructured=["fc"])
    assert torch.equal(out["fc"], masks["fc"]) and out["fc"].data_ptr() != masks["fc"].data_ptr()
    rows = out["conv"].flatten(1).sum(1)
    assert bool(((rows == 0) | (rows == 18)).all())
    with pytest.raises(ValueError, match=r"unstructured layers that are not in the masks: \['head'\]"):
        refill(masks, {"conv": torch.arange(4.0)}, 0.0, unstructured=["fc", "head"])
