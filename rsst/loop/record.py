"""A round's record from its epoch rows: pure functions, so the headline epoch has one definition.

A round's headline is its ticket's test accuracy at the ticket's first best-validation epoch. For
IMP and Refill the ticket is the network as trained. RSST and ADMM train a denser mask than the
ticket they end with, so every epoch also evaluates the ticket (``ticket_val_acc``,
``ticket_test_acc``, and ``ticket_mask``, a fingerprint of the mask evaluated); the headline is
chosen among the evaluations of exactly the final mask. ``trained_*`` are the network as trained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

Row = Mapping[str, Any]


def fingerprint(masks: Mapping[str, Tensor]) -> str:
    """A short digest of a mask set: equal masks, equal digests."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].detach().bool().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def best_row(rows: Sequence[Row], key: str = "val_acc") -> Row | None:
    """The first row with the highest ``key`` (the earliest epoch wins a tie); None for no rows."""
    return max(rows, key=lambda row: row[key], default=None)


def ticket_row(rows: Sequence[Row], mark: str | None) -> Row | None:
    """The ticket's headline epoch: the first best ``val_acc`` when the ticket is the network as trained
    (``mark`` None), else the first best ``ticket_val_acc`` among the rows that evaluated the mask ``mark``
    (None when no row did: the mask moved after the last evaluation)."""
    if mark is None:
        return best_row(rows)
    return best_row([row for row in rows if row.get("ticket_mask") == mark], "ticket_val_acc")


def ticket_numbers(best: Row | None, separate: bool, final_test: float, last: Row, final_val: float | None) -> dict:
    """``best_val_acc``, ``best_epoch`` and ``test_acc`` of the ticket.

    ``best`` is :func:`ticket_row`'s answer; when it is None the ticket is the network at the end
    (``final_val``/``final_test``, measured after the switch to the final mask, at ``last``'s epoch).
    """
    if best is None:
        if final_val is None:
            raise ValueError("the ticket was never evaluated: final_val is needed")
        return {"best_val_acc": final_val, "best_epoch": last["epoch"], "test_acc": final_test}
    prefix = "ticket_" if separate else ""
    return {
        "best_val_acc": best[f"{prefix}val_acc"],
        "best_epoch": best["epoch"],
        "test_acc": best[f"{prefix}test_acc"],
    }


def round_record(
    round_: int,
    rows: Sequence[Row],
    ticket: Mapping[str, Any],
    density: float,
    channel_sparsity: float,
    final_test: float,
    seconds: float,
    penalised: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The row ``rounds.json`` holds for a finished round (densities as fractions in [0, 1])."""
    trained = best_row(rows)
    assert trained is not None, "a round has at least one epoch"
    return {
        "round": round_,
        "remain_weight": 100.0 * density,
        "channel_sparsity": 100.0 * channel_sparsity,
        **ticket,
        "trained_best_val_acc": trained["val_acc"],
        "trained_best_epoch": trained["epoch"],
        "trained_test_acc": trained["test_acc"],
        "final_test_acc": final_test,
        **(penalised or {}),
        "epochs": len(rows),
        "seconds": round(seconds, 3),
    }


def control_record(
    round_: int, name: str, rows: Sequence[Row], density: float, channel_sparsity: float, seconds: float
) -> dict[str, Any]:
    """The row of a lottery-ticket control, recorded beside its ticket's (``branch`` names it)."""
    best = best_row(rows)
    assert best is not None, "a control has at least one epoch"
    return {
        "round": round_,
        "branch": name,
        "remain_weight": 100.0 * density,
        "channel_sparsity": 100.0 * channel_sparsity,
        "best_val_acc": best["val_acc"],
        "best_epoch": best["epoch"],
        "test_acc": best["test_acc"],
        "final_test_acc": rows[-1]["test_acc"],
        "epochs": len(rows),
        "seconds": round(seconds, 3),
    }
