"""ADMM pruning (Zhang et al. 2018, "A Systematic DNN Weight Pruning Framework using ADMM").

The problem ``min loss(W) s.t. W in S`` (``S``: at most ``k`` non-zero weights) is
split with an auxiliary ``Z in S`` and a scaled dual ``U``:

    W <- train on  loss(W) + rho/2 ||W - Z + U||^2      (gradient: grad += rho * (W - Z + U))
    Z <- Pi_S(W + U)                                    (keep the k largest |W + U|, over all layers)
    U <- U + W - Z

``Z`` and ``U`` are updated every ``update_every`` epochs; at the end of the ADMM
phase the weights are hard-pruned to the support of ``Z`` and retrained. In the
round loop an ADMM round trains under the penalty and ends with ``supp(Z)``;
the next round retrains that mask (see docs/algorithms.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rsst.pruning.init_methods import keep_top_k
from rsst.pruning.masks import Masks
from rsst.pruning.regularizer import gradients_of
from rsst.pruning.strategies import PruneContext, RoundPlan, Strategy, target_keep


def project(values: Mapping[str, Tensor], masks: Masks, keep: int) -> dict[str, Tensor]:
    """``Pi_S``: ``values`` with all but the ``keep`` largest ``|value|`` (among ``masks``' alive entries) zeroed."""
    support = keep_top_k({n: v.abs() for n, v in values.items()}, masks, keep)
    return {n: values[n] * support[n].to(values[n].dtype) for n in masks}


class ADMMPenalty:
    """The ADMM gradient term ``rho * (W - Z + U)`` on the prunable weights, with ``Z`` and ``U`` on the device.

    ``Z`` projects onto the ``keep`` largest weights among those alive in ``masks``
    (the round's training mask); it starts as ``Pi_S(W)`` and ``U`` as zero.
    ``start_epoch(e)`` updates ``Z`` and ``U`` before epoch ``e`` when ``e`` is a
    multiple of ``update_every`` after the round's first epoch (``first_epoch``: 0, or
    the epoch a round rewound to a step of round 0 starts in): a run resumed at an epoch boundary from
    :meth:`state_dict` repeats the same updates. The update due after the last of
    ``epochs`` epochs is the one :meth:`final_support` reads.
    """

    def __init__(
        self,
        weights: Mapping[str, Tensor],
        masks: Masks,
        keep: int,
        rho: float,
        update_every: int,
        epochs: int,
        first_epoch: int = 0,
    ) -> None:
        self.names = list(masks)
        self.weights = [weights[n] for n in self.names]
        self.masks = masks
        self.keep = keep
        self.rho = rho
        self.update_every = update_every
        self.epochs = epochs
        self.first_epoch = first_epoch
        with torch.no_grad():
            z = project(self.current(), masks, keep)
        self.z = [z[n] for n in self.names]
        self.u = [torch.zeros_like(w) for w in self.weights]
        self.target = self._target()

    def current(self) -> dict[str, Tensor]:
        return {n: w.detach() for n, w in zip(self.names, self.weights, strict=True)}

    def _target(self) -> list[Tensor]:
        """``Z - U``, cached: the step's term is then ``rho * (W - (Z - U))``."""
        return torch._foreach_sub(self.z, self.u)

    @torch.no_grad()
    def update(self) -> None:
        """``Z <- Pi_S(W + U)``, ``U <- U + W - Z``."""
        w = self.current()
        z = project({n: w[n] + u for n, u in zip(self.names, self.u, strict=True)}, self.masks, self.keep)
        self.z = [z[n] for n in self.names]
        torch._foreach_add_(self.u, torch._foreach_sub([w[n] for n in self.names], self.z))
        self.target = self._target()

    def start_epoch(self, epoch: int) -> None:
        if epoch > self.first_epoch and epoch % self.update_every == 0:
            self.update()

    def __call__(self) -> None:
        grads = gradients_of(self.weights)
        with torch.no_grad():
            terms = torch._foreach_sub(self.weights, self.target)
            torch._foreach_mul_(terms, self.rho)
            torch._foreach_add_(grads, terms)

    def residual(self) -> float:
        """``||W - Z||_2`` over all layers: how far the weights are from the sparse set."""
        with torch.no_grad():
            diffs = torch._foreach_sub([w.detach() for w in self.weights], self.z)
            return float(torch.stack(torch._foreach_norm(diffs)).double().square().sum().sqrt())

    def metrics(self) -> dict[str, float]:
        return {"admm_residual": self.residual()}

    def final_support(self) -> Masks:
        """The hard-prune mask after the last epoch: ``supp(Z)`` with the update due then (computed, not applied).

        Exactly ``keep`` weights. Changes nothing, so calling it twice gives the same mask.
        """
        if self.epochs % self.update_every == 0:
            w = self.current()
            values = {n: w[n] + u for n, u in zip(self.names, self.u, strict=True)}
        else:
            values = dict(zip(self.names, self.z, strict=True))
        return keep_top_k({n: v.abs() for n, v in values.items()}, self.masks, self.keep)

    def state_dict(self) -> dict[str, Any]:
        return {"z": [t.detach().clone() for t in self.z], "u": [t.detach().clone() for t in self.u]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for dst, src in zip(self.z + self.u, list(state["z"]) + list(state["u"]), strict=True):
            dst.copy_(src)
        self.target = self._target()


class ADMM(Strategy):
    """ADMM pruning: train the previous ticket under ``rho/2 ||W - Z + U||^2``; end the round with ``supp(Z)``."""

    name = "admm"

    def __init__(self, rho: float = 1e-3, update_every: int = 1) -> None:
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
            raise ValueError(f"rho={rho!r} is invalid: expected a number > 0")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every={update_every!r} is invalid: expected an integer >= 1 (epochs)")
        self.rho = float(rho)
        self.update_every = update_every

    def plan(self, ctx: PruneContext) -> RoundPlan:
        keep = target_keep(ctx)
        ticket = ctx.masks.clone()
        if keep >= ticket.alive():  # nothing left to prune: a plain retrain of the ticket
            return RoundPlan(train=ticket, final=ticket.clone())
        return RoundPlan(train=ticket, final=ticket.clone(), target=keep)

    def penalty(
        self,
        plan: RoundPlan,
        weights: Mapping[str, Tensor],
        steps_per_epoch: int,
        epochs: int,
        norms: Mapping[str, Tensor] | None = None,
        start_step: int = 0,
    ) -> ADMMPenalty | None:
        if plan.target is None:
            return None
        first = start_step // steps_per_epoch  # a rewound round's first epoch: the round starts inside it
        return ADMMPenalty(weights, plan.train, plan.target, self.rho, self.update_every, epochs, first)

    def final_masks(self, plan: RoundPlan, penalty: Any) -> Masks:
        """Hard prune: the support of ``Z``, after the update due at the round's end (if one is due)."""
        if plan.target is None or penalty is None:
            return plan.final
        return penalty.final_support()
