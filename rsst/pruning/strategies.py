"""Pruning strategies: the ``struct`` config group. Each turns last round's ticket into this round's plan.

A strategy only decides masks; the round loop in ``rsst.run`` owns training,
rewinding and files. A new method costs one small class with a ``plan`` method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from rsst.pruning.criteria import Criterion
from rsst.pruning.masks import Masks, magnitude_prune
from rsst.pruning.refill import check_fillback_rate, refill
from rsst.pruning.regularizer import PENALTY_SCOPES, LambdaSchedule, RSSTPenalty, dropped_channels


@dataclass
class RoundPlan:
    """The masks of one round: trained with ``train``, ending with ``final``; ``penalised`` gets the RSST penalty."""

    train: Masks
    final: Masks
    penalised: Masks | None = None
    target: int | None = None  # weights the final mask keeps, when the strategy decides it at the round's end

    def like(self, weights: Mapping[str, Tensor]) -> RoundPlan:
        """The plan with every mask in its weight's device and memory format (:meth:`Masks.like`)."""
        penalised = None if self.penalised is None else self.penalised.like(weights)
        return RoundPlan(self.train.like(weights), self.final.like(weights), penalised, self.target)


@dataclass
class PruneContext:
    """What a strategy may look at when planning round ``round``."""

    round: int
    model: nn.Module  # holds the TRAINED weights of the previous round
    weights: dict[str, Tensor]  # the prunable weights of ``model``, by name
    masks: Masks  # the previous round's final masks
    rate: float  # fraction of the still-alive weights to remove
    batches: Callable[[], Iterator[tuple[Tensor, Tensor]]]  # a fresh iterator of training batches
    density: float | None = None  # target fraction of prunable weights kept after this round (baselines)
    seed: int = 0  # the run's seed (random masks draw from it and the round)
    theta_rewind: Mapping[str, Tensor] | None = None  # the whole state_dict the round rewinds to ("at init")
    dense: Callable[[], Mapping[str, Tensor]] | None = None  # the trained dense network's state_dict (round 0)
    rate_fc: float | None = None  # Linear weights: each layer on its own at this rate (None: see ``layer_rates``)
    rate_output: float | None = None  # the classifier: on its own at this rate (None: ``rate_fc``)


def linear_weights(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The names among ``names`` whose module is an ``nn.Linear`` (prunable with ``prune.include_fc=true``)."""
    return [n for n in names if isinstance(model.get_submodule(n.rpartition(".")[0]), nn.Linear)]


def layer_rates(ctx: PruneContext) -> dict[str, float]:
    """The per-layer rates of the fully connected layers: ``{}`` (one global ranking) unless a rate is set for them.

    With ``rate_fc`` or ``rate_output`` set, each prunable ``Linear`` layer is pruned on
    its own: the classifier (``model.classifier_name``) at ``rate_output``, the others at
    ``rate_fc`` (an unset ``rate_output`` falls back to ``rate_fc``, an unset ``rate_fc`` to
    ``rate``). The convs stay one global ranking at ``rate`` (:func:`~rsst.pruning.masks.magnitude_prune`).
    """
    if ctx.rate_fc is None and ctx.rate_output is None:
        return {}
    hidden = ctx.rate if ctx.rate_fc is None else ctx.rate_fc
    output = hidden if ctx.rate_output is None else ctx.rate_output
    classifier = f"{getattr(ctx.model, 'classifier_name', 'fc')}.weight"
    return {n: output if n == classifier else hidden for n in linear_weights(ctx.model, ctx.weights)}


def magnitude_mask(ctx: PruneContext) -> Masks:
    """``M_r``: the previous ticket magnitude-pruned, convs globally at ``rate``, Linear layers per ``layer_rates``."""
    return magnitude_prune(ctx.weights, ctx.masks, ctx.rate, layer_rates(ctx))


class Penalty(Protocol):
    """A round's gradient penalty: called between ``backward`` and ``step``; optional ``state_dict``."""

    def start_epoch(self, epoch: int) -> None: ...

    def __call__(self) -> None: ...

    def metrics(self) -> dict[str, float]: ...


def imp_equivalent_density(total: int, rate: float, round_: int) -> float:
    """The density IMP reaches after ``round_`` rounds: ``round(rate * alive)`` removed per round, as IMP rounds."""
    alive = total
    for _ in range(round_):
        alive -= round(rate * alive)
    return alive / total if total else 1.0


def target_keep(ctx: PruneContext) -> int:
    """Number of prunable weights this round keeps: ``round(ctx.density * total)``, or one IMP step from the ticket."""
    if ctx.density is None:
        alive = ctx.masks.alive()
        return alive - round(ctx.rate * alive)
    return round(ctx.density * ctx.masks.numel())


class Strategy:
    """Base class: ``plan`` returns fresh masks and never writes into ``ctx.masks``."""

    name = "strategy"

    def plan(self, ctx: PruneContext) -> RoundPlan:
        raise NotImplementedError

    def penalty(
        self,
        plan: RoundPlan,
        weights: Mapping[str, Tensor],
        steps_per_epoch: int,
        epochs: int,
        norms: Mapping[str, Tensor] | None = None,
        start_step: int = 0,
    ) -> Penalty | None:
        """The gradient penalty of a round planned as ``plan``, called between backward and step; none by default.

        ``norms`` maps a conv weight's name to the scale (gamma) of the BatchNorm that normalises its
        output, for the convs that have one (:func:`rsst.models.norms.following_norms`). ``start_step``: the
        round trains the steps of round 0's schedule from this one on (``prune.rewind=step``), 0 otherwise.
        """
        return None

    def final_masks(self, plan: RoundPlan, penalty: Any) -> Masks:
        """The masks the round ends with, decided after its last epoch; ``plan.final`` unless overridden.

        Must not change ``penalty`` or the weights: a run killed before its end-of-round
        checkpoint calls it again on the restored state.
        """
        return plan.final


class IMP(Strategy):
    """Iterative magnitude pruning (Frankle & Carbin 2019): global |w| pruning, train with ``M_r``."""

    name = "imp"

    def plan(self, ctx: PruneContext) -> RoundPlan:
        pruned = magnitude_mask(ctx)
        return RoundPlan(train=pruned, final=pruned.clone())


class Refill(Strategy):
    """Refill (Chen et al. 2022, "Coarsening the Granularity"): train with the channel mask ``R_r``.

    ``R_r = refill(M_r, criteria, fillback_rate)``: per conv layer, the top-``n``
    output channels of the magnitude-pruned mask ``M_r`` kept whole (``rsst.pruning.refill``).
    The criterion scores the trained network with ``M_r`` applied. ``Linear`` layers
    (pruned with ``prune.include_fc=true``) keep their ``M_r`` mask unstructured: a
    classifier row is a class, and refill must never delete one.
    """

    name = "refill"

    def __init__(self, criteria: Criterion, fillback_rate: float = 0.0) -> None:
        check_fillback_rate(fillback_rate)
        if not isinstance(criteria, Criterion):
            raise ValueError(f"criteria={criteria!r} is invalid: expected a criterion (remain, magnitude, l1, l2, ...)")
        self.criteria = criteria
        self.fillback_rate = fillback_rate

    def masks(self, ctx: PruneContext) -> tuple[Masks, Masks]:
        """``(M_r, R_r)``: the magnitude mask and its refill (whole channels for convs, ``M_r`` for Linear), fresh."""
        pruned = magnitude_mask(ctx)
        scores = self.criteria.scores(ctx.model, pruned, ctx.batches)
        return pruned, refill(pruned, scores, self.fillback_rate, unstructured=linear_weights(ctx.model, pruned))

    def plan(self, ctx: PruneContext) -> RoundPlan:
        _, refilled = self.masks(ctx)
        return RoundPlan(train=refilled, final=refilled.clone())


class RSST(Refill):
    """RSST: train with ``M_r | R_r`` while ``lambda(t) * w`` drives ``P_r = M_r & ~R_r`` to zero; end with ``R_r``.

    ``penalty_scope``: ``weights`` (the original) penalises ``P_r`` only; ``channels`` also penalises,
    with the same ``lambda(t)``, the BatchNorm scale of every output channel the round drops (its
    ``R_r`` row empty while ``M_r`` holds weights in it), so the whole channel fades, not only its
    conv weights, which BatchNorm would rescale (docs/algorithms.md, section 4).
    """

    name = "rsst"

    def __init__(
        self,
        criteria: Criterion,
        schedule: LambdaSchedule,
        fillback_rate: float = 0.0,
        block_loss_grad: bool = False,
        penalty_scope: str = "weights",
    ) -> None:
        super().__init__(criteria, fillback_rate)
        if not isinstance(schedule, LambdaSchedule):
            raise ValueError(f"schedule={schedule!r} is invalid: expected a lambda schedule (x, exp_custom, ...)")
        if not isinstance(block_loss_grad, bool):
            raise ValueError(f"block_loss_grad={block_loss_grad!r} is invalid: expected true or false")
        if penalty_scope not in PENALTY_SCOPES:
            raise ValueError(
                f"struct.penalty_scope={penalty_scope!r} is invalid: expected one of {', '.join(PENALTY_SCOPES)}"
            )
        self.schedule = schedule
        self.block_loss_grad = block_loss_grad
        self.penalty_scope = penalty_scope

    def plan(self, ctx: PruneContext) -> RoundPlan:
        pruned, refilled = self.masks(ctx)
        return RoundPlan(train=pruned.union(refilled), final=refilled, penalised=pruned.minus(refilled))

    def penalised_tensors(
        self, plan: RoundPlan, weights: Mapping[str, Tensor], norms: Mapping[str, Tensor] | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The tensors the penalty acts on and their masks: ``P_r``'s weights, then (``channels``) the gammas."""
        assert plan.penalised is not None
        names = list(plan.penalised)
        tensors = [weights[n] for n in names]
        masks = [plan.penalised[n] for n in names]
        if self.penalty_scope == "channels" and norms:
            for n in names:
                gamma = norms.get(n)
                if gamma is not None and plan.penalised[n].dim() == 4:
                    tensors.append(gamma)
                    masks.append(dropped_channels(plan.penalised[n], plan.final[n]).to(gamma.device))
        return tensors, masks

    def penalty(
        self,
        plan: RoundPlan,
        weights: Mapping[str, Tensor],
        steps_per_epoch: int,
        epochs: int,
        norms: Mapping[str, Tensor] | None = None,
        start_step: int = 0,
    ) -> Penalty | None:
        if plan.penalised is None:
            return None
        tensors, masks = self.penalised_tensors(plan, weights, norms)
        return RSSTPenalty(tensors, masks, self.schedule, steps_per_epoch, epochs, self.block_loss_grad, start_step)
