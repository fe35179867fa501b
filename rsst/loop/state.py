"""The state of a run that its checkpoint holds: one typed object, saved and restored by one table.

:class:`RunState` is everything the round loop knows that is not rebuilt from the config: where
the run is, the masks of every finished round, the rewind points, the rows recorded so far. Its
fields are written to the checkpoint under their own names through :data:`CODECS` (the fields
that need a conversion) and read back through the same entry, so what is saved and what is
restored cannot drift apart. The live objects (model, optimizer, scheduler, scaler, penalty and
the random generators) are added beside it by :meth:`rsst.loop.rounds.RoundLoop.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from rsst.pruning.masks import Masks
from rsst.pruning.strategies import RoundPlan


@dataclass
class RunState:
    round: int = 0  # the round being trained (a control trains on round ``round - 1``'s ticket)
    epoch: int = 0  # epochs finished in the current round or control
    plan: RoundPlan | None = None  # the current round's masks; None between rounds
    ticket: Masks | None = None  # the final masks of the last finished round
    tickets: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # every finished round's final masks
    branch: str | None = None  # the control being trained, if any
    pending: list[str] = field(default_factory=list)  # controls still to train for the last finished round
    trunk_weights: dict[str, Tensor] | None = None  # the ticket's weights while its controls train
    theta_0: dict[str, Tensor] = field(default_factory=dict)  # the initial (or pretrained) weights
    theta_rewind: dict[str, Tensor] | None = None  # what every pruned round rewinds to
    # prune.stability: round 0's optimizer state at the rewind point (its copy continues round 0's training there)
    rewind_optimizer: dict[str, Any] | None = None
    trunk_plan: RoundPlan | None = None  # the last finished round's masks, while its stability copy waits or trains
    epoch_rows: list[dict[str, Any]] = field(default_factory=list)
    round_rows: list[dict[str, Any]] = field(default_factory=list)
    round_seconds: float = 0.0
    tracker_id: str | None = None
    file_sums: dict[str, str] = field(default_factory=dict)  # sha256 of each round file as written, by its name

    @property
    def current_round(self) -> int:
        """The round whose masks are being trained: a control trains on the last finished round's ticket."""
        return self.round - 1 if self.branch is not None else self.round

    def encode(self) -> dict[str, Any]:
        """The fields as the checkpoint stores them."""
        return {f.name: CODECS.get(f.name, PLAIN)[0](getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def decode(cls, blob: dict[str, Any], device: torch.device) -> RunState:
        """The state a checkpoint holds; a field an older checkpoint lacks takes its default."""
        values = {}
        for f in fields(cls):
            if f.name in blob:
                values[f.name] = CODECS.get(f.name, PLAIN)[1](blob[f.name], device)
        return cls(**values)


def _plan_out(plan: RoundPlan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {
        "train": dict(plan.train),
        "final": dict(plan.final),
        "penalised": None if plan.penalised is None else dict(plan.penalised),
        "target": plan.target,
    }


def _plan_in(blob: dict[str, Any] | None, device: torch.device) -> RoundPlan | None:
    if blob is None:
        return None
    return RoundPlan(
        train=Masks(blob["train"]).to(device),
        final=Masks(blob["final"]).to(device),
        penalised=None if blob["penalised"] is None else Masks(blob["penalised"]).to(device),
        target=blob.get("target"),
    )


Codec = tuple[Callable[[Any], Any], Callable[[Any, torch.device], Any]]
PLAIN: Codec = (lambda value: value, lambda value, _device: value)
CODECS: dict[str, Codec] = {
    "plan": (_plan_out, _plan_in),
    "trunk_plan": (_plan_out, _plan_in),
    "ticket": (
        lambda masks: None if masks is None else dict(masks),
        lambda blob, device: None if blob is None else Masks(blob).to(device),
    ),
    "tickets": (lambda tickets: tickets, lambda blob, _device: {int(r): m for r, m in blob.items()}),
    "pending": (lambda pending: pending, lambda blob, _device: list(blob)),
}
