"""The round record as pure functions (rsst.loop.record) and the checkpoint state's one table (rsst.loop.state)."""

from __future__ import annotations

import pytest
import torch

from rsst.loop.record import best_row, control_record, round_record, ticket_numbers, ticket_row
from rsst.loop.state import RunState
from rsst.pruning.masks import Masks
from rsst.pruning.strategies import RoundPlan


def row(epoch, val, test, tval=None, ttest=None, mark=None):
    out = {"epoch": epoch, "val_acc": val, "test_acc": test}
    if tval is not None:
        out.update(ticket_val_acc=tval, ticket_test_acc=ttest, ticket_mask=mark)
    return out


# (rows, mark, expected headline epoch or None)
HEADLINE = [
    ([row(0, 50, 51), row(1, 60, 59), row(2, 60, 70)], None, 1),  # a tie: the first best epoch
    ([row(0, 70, 1), row(1, 60, 99)], None, 0),  # by validation, never by test
    ([row(0, 90, 90, 40, 41, "a"), row(1, 50, 50, 45, 46, "a")], "a", 1),  # the ticket's own validation
    ([row(0, 90, 90, 80, 81, "a"), row(1, 50, 50, 45, 46, "b")], "b", 1),  # only evaluations of the final mask
    ([row(0, 90, 90, 80, 81, "a")], "b", None),  # the mask moved after the last evaluation
    ([], None, None),
]


@pytest.mark.parametrize(("rows", "mark", "epoch"), HEADLINE)
def test_the_headline_epoch_is_the_tickets_first_best_validation_epoch(rows, mark, epoch):
    best = ticket_row(rows, mark)
    assert (None if best is None else best["epoch"]) == epoch


# (best, separate, final_test, final_val, expected numbers)
NUMBERS = [
    (row(1, 60, 59), False, 10.0, None, {"best_val_acc": 60, "best_epoch": 1, "test_acc": 59}),
    (row(1, 60, 59, 40, 41, "a"), True, 10.0, None, {"best_val_acc": 40, "best_epoch": 1, "test_acc": 41}),
    (None, True, 33.0, 32.0, {"best_val_acc": 32.0, "best_epoch": 4, "test_acc": 33.0}),
]


@pytest.mark.parametrize(("best", "separate", "final_test", "final_val", "expected"), NUMBERS)
def test_the_tickets_numbers_come_from_the_ticket_not_the_trained_network(
    best, separate, final_test, final_val, expected
):
    assert ticket_numbers(best, separate, final_test, {"epoch": 4}, final_val) == expected


def test_a_ticket_never_evaluated_needs_its_final_validation():
    with pytest.raises(ValueError, match="final_val"):
        ticket_numbers(None, True, 1.0, {"epoch": 0}, None)


def test_the_round_record_keeps_the_trained_networks_numbers_beside_the_tickets():
    rows = [row(0, 50, 51, 40, 41, "m"), row(1, 60, 62, 45, 44, "m")]
    ticket = ticket_numbers(ticket_row(rows, "m"), True, 43.0, rows[-1], None)
    record = round_record(2, rows, ticket, 0.64, 0.25, 43.0, 12.34567, {"penalised_norm_end": 0.5})
    assert record["remain_weight"] == pytest.approx(64.0) and record["channel_sparsity"] == pytest.approx(25.0)
    assert (record["best_epoch"], record["test_acc"]) == (1, 44)
    assert (record["trained_best_epoch"], record["trained_test_acc"]) == (1, 62)
    assert record["final_test_acc"] == 43.0 and record["penalised_norm_end"] == 0.5
    assert (record["epochs"], record["seconds"]) == (2, 12.346)
    assert best_row(rows)["epoch"] == 1


def test_a_control_record_names_its_branch_and_its_last_epoch():
    rows = [row(0, 70, 71), row(1, 65, 60)]
    record = control_record(3, "reinit", rows, 0.3, 0.1, 1.0)
    assert (record["branch"], record["best_epoch"], record["test_acc"], record["final_test_acc"]) == (
        "reinit",
        0,
        71,
        60,
    )


def test_the_state_round_trips_through_its_table_field_by_field():
    masks = Masks({"w": torch.tensor([[1.0, 0.0]])})
    state = RunState(
        round=2, epoch=1, plan=RoundPlan(train=masks, final=masks.clone(), penalised=None, target=0.5),
        ticket=masks.clone(), tickets={1: {"w": torch.tensor([[True, False]])}}, branch="reinit", pending=["reinit"],
        trunk_weights={"w": torch.ones(1, 2)}, theta_0={"w": torch.zeros(1, 2)}, theta_rewind={"w": torch.zeros(1, 2)},
        epoch_rows=[{"round": 0}], round_rows=[{"round": 0}], round_seconds=3.5, tracker_id="abc",
    )  # fmt: skip
    blob = state.encode()
    assert set(blob) == {f for f in RunState.__dataclass_fields__}
    assert isinstance(blob["plan"], dict) and isinstance(blob["ticket"], dict)  # plain tensors in the file
    back = RunState.decode({**blob, "tickets": {"1": blob["tickets"][1]}}, torch.device("cpu"))
    assert back.plan.train.equal(state.plan.train) and back.plan.target == 0.5 and back.ticket.equal(state.ticket)
    assert list(back.tickets) == [1] and back.pending == ["reinit"] and back.current_round == 1
    for name in ("round", "epoch", "branch", "epoch_rows", "round_rows", "round_seconds", "tracker_id"):
        assert getattr(back, name) == getattr(state, name), name
    old = RunState.decode({"round": 1, "epoch": 0, "plan": None, "ticket": None}, torch.device("cpu"))
    assert (old.branch, old.pending, old.tickets, old.trunk_weights) == (None, [], {}, None)  # an older checkpoint
