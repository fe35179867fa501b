"""ADMM pruning (rsst.pruning.admm): the projection, the penalty, the hard prune, and a resumed ADMM round."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import FAST, compose_config
from torch import nn

from rsst.loop.run import RoundLoop
from rsst.pruning.admm import ADMM, ADMMPenalty, project
from rsst.pruning.masks import Masks
from rsst.pruning.strategies import PruneContext


def brute_force_top_k(values: dict[str, torch.Tensor], masks: Masks, keep: int) -> dict[str, torch.Tensor]:
    """Pi_S by hand: the ``keep`` largest |value| among the alive entries, everything else zero."""
    flat = torch.cat([(values[n].abs() * masks[n]).flatten() - (1 - masks[n].flatten()) for n in masks])
    chosen = torch.zeros_like(flat)
    chosen[torch.topk(flat, keep).indices] = 1.0
    out, offset = {}, 0
    for n in masks:
        size = masks[n].numel()
        out[n] = values[n] * chosen[offset : offset + size].view_as(values[n])
        offset += size
    return out


def test_z_is_exactly_the_top_k_projection_of_w_plus_u():
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(6, 4, generator=g), "b": torch.randn(3, 5, generator=g)}
    masks = Masks({"a": (torch.rand(6, 4, generator=g) > 0.2).float(), "b": torch.ones(3, 5)})
    z = project(weights, masks, 13)
    expected = brute_force_top_k(weights, masks, 13)
    assert all(torch.equal(z[n], expected[n]) for n in masks)
    assert sum(int(t.count_nonzero()) for t in z.values()) == 13

    penalty = ADMMPenalty(weights, masks, 13, rho=0.1, update_every=1, epochs=2)
    assert all(torch.equal(zn, expected[n]) for zn, n in zip(penalty.z, masks, strict=True))  # Z_0 = Pi(W)
    u_before = [torch.randn(w.shape, generator=g) for w in weights.values()]
    penalty.u = [u.clone() for u in u_before]
    penalty.update()
    w_plus_u = {n: weights[n] + u for n, u in zip(masks, u_before, strict=True)}
    expected = brute_force_top_k(w_plus_u, masks, 13)
    for i, n in enumerate(masks):
        assert torch.equal(penalty.z[i], expected[n])
        torch.testing.assert_close(penalty.u[i], u_before[i] + weights[n] - expected[n])


def test_the_penalty_adds_rho_times_w_minus_z_plus_u_to_the_gradient():
    w = nn.Parameter(torch.tensor([3.0, -0.1, 2.0, 0.2]))
    w.grad = torch.tensor([1.0, 1.0, 1.0, 1.0])
    penalty = ADMMPenalty({"w": w}, Masks({"w": torch.ones(4)}), 2, rho=0.5, update_every=1, epochs=1)
    penalty.u = [torch.tensor([0.0, 1.0, 0.0, -1.0])]
    penalty.target = penalty._target()
    penalty()
    z, u = torch.tensor([3.0, 0.0, 2.0, 0.0]), penalty.u[0]
    torch.testing.assert_close(w.grad, 1.0 + 0.5 * (w.detach() - z + u))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_w_minus_z_falls_over_the_admm_phase_and_the_hard_prune_keeps_k():
    torch.manual_seed(0)
    model = Tiny()
    weights = {"conv.weight": model.conv.weight, "fc.weight": model.fc.weight}
    masks = Masks.ones_like(weights)
    keep = round(0.2 * masks.numel())
    epochs, steps = 8, 5
    penalty = ADMMPenalty(weights, masks, keep, rho=1.0, update_every=1, epochs=epochs)
    start = penalty.residual()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(16, 2, 4, 4), torch.randint(0, 3, (16,))) for _ in range(steps)]
    for epoch in range(epochs):
        penalty.start_epoch(epoch)
        for x, y in data:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            penalty()
            opt.step()
    end = penalty.residual()
    assert end < 0.5 * start, (start, end)
    final = penalty.final_support()
    assert final.alive() == keep and final.equal(penalty.final_support())  # pure: same mask twice
    pruned = {n: w.detach() * final[n] for n, w in weights.items()}
    w_plus_u = {n: w.detach() + u for (n, w), u in zip(weights.items(), penalty.u, strict=True)}
    expected = brute_force_top_k(w_plus_u, masks, keep)  # the update due after the last epoch
    assert all(torch.equal(final[n], (expected[n] != 0).float()) for n in masks)
    assert sum(int(t.count_nonzero()) for t in pruned.values()) <= keep


def test_an_admm_plan_trains_the_ticket_and_targets_the_round_density():
    weights = {"a": torch.randn(10, 10)}
    ticket = Masks({"a": (torch.arange(100).view(10, 10) < 80).float()})
    ctx = PruneContext(2, nn.Identity(), weights, ticket, 0.2, lambda: iter([]), density=0.64)
    plan = ADMM().plan(ctx)
    assert plan.train.equal(ticket) and plan.target == 64 and plan.train is not ticket
    assert ADMM().penalty(plan, weights, 3, 2).keep == 64
    ctx.density = 0.8  # nothing to prune: a plain retrain, no penalty
    retrain = ADMM().plan(ctx)
    assert retrain.target is None and ADMM().penalty(retrain, weights, 3, 2) is None
    assert ADMM().final_masks(retrain, None).equal(ticket)


# -- in the round loop ----------------------------------------------------------------------------


def new_loop(tmp_path: Path, *overrides: str) -> RoundLoop:
    cfg = compose_config([*FAST, "train.batch_size=128", f"paths.root={tmp_path}", *overrides])
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return RoundLoop(cfg, run_dir)


@pytest.fixture(scope="module")
def admm_round0(tmp_path_factory) -> dict:
    loop = new_loop(tmp_path_factory.mktemp("admm0"), "struct=admm", "train.epochs=1")
    loop.fresh_start()
    loop.begin_round()
    loop.run_epoch()
    loop.end_round()
    return copy.deepcopy(loop.checkpoint())


def test_a_resumed_admm_round_continues_with_the_same_z_u_and_ends_with_the_same_mask(admm_round0, tmp_path):
    args = ("struct=admm", "struct.rho=0.05", "train.epochs=3")
    straight = new_loop(tmp_path / "straight", *args)
    straight.restore(copy.deepcopy(admm_round0))
    straight.begin_round()
    assert straight.state.plan.target == round(0.8 * straight.state.plan.train.numel())
    for _ in range(3):
        straight.run_epoch()

    first = new_loop(tmp_path / "killed", *args)
    first.restore(copy.deepcopy(admm_round0))
    first.begin_round()
    first.run_epoch()
    first.run_epoch()  # Z and U were updated once, before this epoch
    state = copy.deepcopy(first.checkpoint())
    assert state["penalty"] is not None and any(bool(u.any()) for u in state["penalty"]["u"])
    resumed = new_loop(tmp_path / "resumed", *args)
    resumed.restore(state)
    resumed.run_epoch()

    for a, b in zip(straight.penalty.z + straight.penalty.u, resumed.penalty.z + resumed.penalty.u, strict=True):
        assert torch.equal(a, b)
    assert all(torch.equal(resumed.weights[n], straight.weights[n]) for n in straight.names)
    rows = [[r["admm_residual"] for r in lp.state.epoch_rows if r["round"] == 1] for lp in (straight, resumed)]
    assert rows[0] == rows[1]
    record_s, record_r = straight.end_round(), resumed.end_round()
    assert straight.state.ticket.equal(resumed.state.ticket)
    assert straight.state.ticket.alive() == round(0.8 * straight.state.ticket.numel())
    assert (
        record_s["remain_weight"] == record_r["remain_weight"] == pytest.approx(100 * straight.state.ticket.density())
    )
