"""Lottery-ticket controls in the loop: train each pending control of the last finished round beside its ticket.

The masks themselves are :mod:`rsst.pruning.controls`; here a control is started (its mask and its
initial weights) and recorded, and after the last branch (a control or the stability copy of
:mod:`rsst.loop.stability`) the ticket's weights are put back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from rsst.folder.tickets import save_masks
from rsst.loop.record import control_record
from rsst.pruning.controls import control_seed, shuffle_layerwise
from rsst.pruning.masks import apply_masks_
from rsst.pruning.strategies import RoundPlan

if TYPE_CHECKING:
    from rsst.loop.rounds import RoundLoop


def begin(loop: RoundLoop) -> None:
    """Start the next pending control of the last finished round: its mask, its initial weights."""
    state = loop.state
    assert state.ticket is not None and state.theta_rewind is not None and state.pending
    name, r = state.pending[0], state.round - 1
    gen = torch.Generator().manual_seed(control_seed(loop.cfg.seed, r, name))
    if name == "reinit":  # the ticket's mask from a fresh random initialisation (BN included)
        mask = state.ticket.clone()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            loop.model.load_state_dict(loop.new_model().state_dict())
    else:  # shuffle_layerwise: a random mask with the ticket's per-layer counts, from the rewind point
        mask = shuffle_layerwise(state.ticket, gen).to(loop.device)
        loop.model.load_state_dict(state.theta_rewind)
    mask = mask.like(loop.weights)  # in the weights' layout, as a round's masks
    state.branch, state.plan = name, RoundPlan(train=mask, final=mask)
    apply_masks_(loop.weights.values(), [mask[n] for n in loop.names])
    state.epoch, state.round_seconds = loop.first_epoch(), 0.0  # the ticket's steps: from the rewind step on
    loop.new_optimizer()
    loop.penalty = None


def end(loop: RoundLoop) -> dict[str, Any]:
    """Record the control's row beside its ticket's; after the last control, restore the ticket's weights."""
    state = loop.state
    assert state.plan is not None and state.branch is not None
    r, name, mask = state.round - 1, state.branch, state.plan.train
    rows = [row for row in state.epoch_rows if row["round"] == r and row.get("branch") == name]
    record = control_record(r, name, rows, mask.density(), mask.channel_sparsity(), state.round_seconds)
    loop.write(lambda: save_masks(mask, loop.files.masks(r, name)))
    state.round_rows.append(record)
    close(loop)
    return record


def close(loop: RoundLoop) -> None:
    """The current branch (a control, or the stability copy) is done: after the last pending one, the ticket's
    weights are put back, so the next round prunes from them."""
    state = loop.state
    state.pending.pop(0)
    state.branch, state.epoch, state.plan = None, 0, None
    loop.optimizer = loop.scheduler = loop.penalty = None
    if not state.pending:
        assert state.trunk_weights is not None
        loop.model.load_state_dict(state.trunk_weights)
        state.trunk_weights = None
