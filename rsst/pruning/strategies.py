"""Pruning strategies: the ``struct`` config group. Each turns last round's ticket into this round's plan.

A strategy only decides masks; the round loop in ``rsst.run`` owns training,
rewinding and files. A new method costs one small class with a ``plan`` method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import Tensor, nn

from rsst.pruning.masks import Masks, global_magnitude_prune


@dataclass
class RoundPlan:
    """The masks of one round: trained with ``train``, ending with ``final``; ``penalised`` gets the RSST penalty."""

    train: Masks
    final: Masks
    penalised: Masks | None = None


@dataclass
class PruneContext:
    """What a strategy may look at when planning round ``round``."""

    round: int
    model: nn.Module  # holds the TRAINED weights of the previous round
    weights: dict[str, Tensor]  # the prunable weights of ``model``, by name
    masks: Masks  # the previous round's final masks
    rate: float  # fraction of the still-alive weights to remove
    batches: Callable[[], Iterator[tuple[Tensor, Tensor]]]  # a fresh iterator of training batches


class Strategy:
    """Base class: ``plan`` returns fresh masks and never writes into ``ctx.masks``."""

    name = "strategy"

    def plan(self, ctx: PruneContext) -> RoundPlan:
        raise NotImplementedError


class IMP(Strategy):
    """Iterative magnitude pruning (Frankle & Carbin 2019): global |w| pruning, train with ``M_r``."""

    name = "imp"

    def plan(self, ctx: PruneContext) -> RoundPlan:
        pruned = global_magnitude_prune(ctx.weights, ctx.masks, ctx.rate)
        return RoundPlan(train=pruned, final=pruned)
