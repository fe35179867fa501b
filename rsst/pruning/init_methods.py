"""Pruning baselines that score weights once and keep the top ones: SNIP, GraSP, SynFlow, OMP, random.

Every method here turns per-weight scores into a mask with :func:`keep_top_k`: the
``k`` highest scores among the weights still alive in the previous ticket, over all
layers at once (``random`` with ``mode=layerwise`` does it per layer). ``k`` is the
round's target (``rsst.pruning.strategies.target_keep``), so a round hits its density
exactly and masks only shrink from round to round. The "at initialisation" methods
(SNIP, GraSP, SynFlow) score a deep copy of the network loaded with the rewind point
``theta_rewind`` and the previous ticket applied; the live model is never touched.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsst.pruning.masks import Masks, unflatten
from rsst.pruning.strategies import PruneContext, RoundPlan, Strategy, target_keep

Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]
RANDOM_MODES = ("layerwise", "global")


def keep_top_k(scores: Mapping[str, Tensor], masks: Masks, keep: int) -> Masks:
    """Keep the ``keep`` alive weights of ``masks`` with the highest ``scores``, over all layers; fresh masks.

    Ties go to the earlier layer, then the lower flat index (a stable sort). With
    ``keep`` at or above the alive count the masks come back unchanged (as copies).
    """
    if keep < 0:
        raise ValueError(f"cannot keep {keep} weights")
    names = list(masks)
    with torch.no_grad():
        flat_masks = torch.cat([masks[n].reshape(-1) for n in names])
        flat_scores = torch.cat([scores[n].detach().reshape(-1).to(flat_masks.device, torch.float64) for n in names])
        alive = flat_masks.nonzero().squeeze(1)
        if keep >= alive.numel():
            return masks.clone()
        alive_scores = flat_scores[alive]
        if not bool(torch.isfinite(alive_scores).all()):
            raise ValueError("pruning scores hold NaN or infinite values")
        order = torch.sort(alive_scores, descending=True, stable=True).indices
        new_flat = torch.zeros_like(flat_masks)
        new_flat[alive[order[:keep]]] = 1.0
    return unflatten(new_flat, masks)


def model_at_rewind(ctx: PruneContext) -> nn.Module:
    """A deep copy of the model loaded with ``theta_rewind`` and the previous ticket applied (for scoring)."""
    if ctx.theta_rewind is None:
        raise ValueError("pruning at initialisation needs the rewind point theta_rewind in the prune context")
    model = copy.deepcopy(ctx.model)
    model.load_state_dict(ctx.theta_rewind)
    with torch.no_grad():
        for n, m in ctx.masks.items():
            model.get_parameter(n).mul_(m)
    return model


def snip_scores(model: nn.Module, names: Iterable[str], batches: Batches, num_batches: int) -> dict[str, Tensor]:
    """SNIP (Lee et al. 2019, eq. 6 without the normalisation): ``|g * w|``, ``g`` summed over the batches.

    ``g`` is the gradient of each batch's mean cross-entropy, in train mode (batch statistics).
    """
    params = {n: model.get_parameter(n) for n in names}
    grads = _summed_gradients(model, list(params.values()), _take(batches, num_batches))
    return {n: (g * p.detach()).abs() for (n, p), g in zip(params.items(), grads, strict=True)}


def hessian_gradient_product(
    model: nn.Module, names: Iterable[str], batches: Batches, num_batches: int, temperature: float = 1.0
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(g, Hg)`` of the loss summed over the batches, w.r.t. the weights ``names`` (double backward).

    The loss of a batch is the mean cross-entropy of ``logits / temperature``; ``g`` is
    the gradient of the total, ``Hg`` the product of its Hessian with the fixed ``g``,
    computed as ``d(g_b . stop_grad(g)) / dw`` summed over batches (Pearlmutter's trick).
    """
    params = {n: model.get_parameter(n) for n in names}
    plist = list(params.values())
    data = _take(batches, num_batches)
    g = _summed_gradients(model, plist, data, temperature)
    hg = [torch.zeros_like(p) for p in plist]
    for x, y in data:
        loss = F.cross_entropy(model(x) / temperature, y)
        grads = torch.autograd.grad(loss, plist, create_graph=True)
        dot = sum((gb * gt).sum() for gb, gt in zip(grads, g, strict=True))
        torch._foreach_add_(hg, torch.autograd.grad(dot, plist))
    return dict(zip(params, g, strict=True)), dict(zip(params, hg, strict=True))


def grasp_scores(
    model: nn.Module, names: Iterable[str], batches: Batches, num_batches: int, temperature: float
) -> dict[str, Tensor]:
    """GraSP (Wang et al. 2020, eq. 8): ``S = -w * (H g)``; the paper removes the weights with the LARGEST ``S``."""
    names = list(names)
    _, hg = hessian_gradient_product(model, names, batches, num_batches, temperature)
    return {n: -model.get_parameter(n).detach() * hg[n] for n in names}


def synflow_masks(model: nn.Module, masks: Masks, keep: int, iterations: int, input_shape: torch.Size) -> Masks:
    """SynFlow (Tanaka et al. 2020, algorithm 1): iterative, data-free pruning that avoids layer collapse.

    ``model`` must be a copy the caller owns: every float tensor of its state is made
    non-negative (``|theta|``) and it runs in eval mode and float64 on an all-ones
    input of ``input_shape``. At iteration ``i`` of ``n`` the score is
    ``|dR/dw * w|`` with ``R = sum(model(1))``, and the alive count shrinks
    exponentially from its start ``a`` to ``a * (keep/a)^(i/n)``; the last
    iteration keeps exactly ``keep``.
    """
    model = model.double().eval()
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    names = list(masks)
    params = [model.get_parameter(n) for n in names]
    original = [p.detach().clone() for p in params]
    device = params[0].device
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    current, start = masks.clone(), masks.alive()
    if keep >= start:
        return current
    for i in range(1, iterations + 1):
        with torch.no_grad():
            for p, w, n in zip(params, original, names, strict=True):
                p.copy_(w * current[n])
        flow = model(ones).sum()
        grads = torch.autograd.grad(flow, params)
        scores = {n: (g * p.detach()).abs() for n, g, p in zip(names, grads, params, strict=True)}
        k = keep if i == iterations else max(keep, round(start * (keep / start) ** (i / iterations)))
        current = keep_top_k(scores, current, k)
    return current


def random_masks(masks: Masks, density: float, mode: str, generator: torch.Generator) -> Masks:
    """Random pruning to ``density``: ``global`` keeps ``round(density * total)`` weights anywhere,
    ``layerwise`` keeps ``round(density * numel)`` in every layer; kept weights are drawn among the alive ones."""
    if mode not in RANDOM_MODES:
        raise ValueError(f"mode={mode!r} is invalid: expected one of {', '.join(RANDOM_MODES)}")
    scores = {n: torch.rand(m.shape, generator=generator).to(m.device) for n, m in masks.items()}
    if mode == "global":
        return keep_top_k(scores, masks, round(density * masks.numel()))
    out = Masks()
    for n, m in masks.items():
        out.update(keep_top_k({n: scores[n]}, Masks({n: m}), round(density * m.numel())))
    return out


def _take(batches: Batches, num_batches: int) -> list[tuple[Tensor, Tensor]]:
    data = list(itertools.islice(iter(batches()), num_batches))
    if not data:
        raise ValueError("no training batches to score with")
    return data


def _summed_gradients(
    model: nn.Module, params: list[Tensor], data: list[tuple[Tensor, Tensor]], temperature: float = 1.0
) -> list[Tensor]:
    """Gradients of the mean cross-entropy of ``logits / temperature``, summed over ``data``, in train mode."""
    model.train()
    grads = [torch.zeros_like(p) for p in params]
    for x, y in data:
        loss = F.cross_entropy(model(x) / temperature, y)
        torch._foreach_add_(grads, torch.autograd.grad(loss, params))
    return grads


def _check_int(key: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key}={value!r} is invalid: expected an integer >= {low}")


def _plan(mask: Masks) -> RoundPlan:
    return RoundPlan(train=mask, final=mask.clone())


class SNIP(Strategy):
    """SNIP: keep the top ``|g * w|`` at the rewind point, ``g`` over ``batches`` training batches."""

    name = "snip"

    def __init__(self, batches: int = 1) -> None:
        _check_int("batches", batches, 1)
        self.batches = batches

    def plan(self, ctx: PruneContext) -> RoundPlan:
        scores = snip_scores(model_at_rewind(ctx), ctx.masks, ctx.batches, self.batches)
        return _plan(keep_top_k(scores, ctx.masks, target_keep(ctx)))


class GraSP(Strategy):
    """GraSP: keep the weights with the smallest ``S = -w * (H g)`` at the rewind point (remove the largest)."""

    name = "grasp"

    def __init__(self, batches: int = 1, temperature: float = 200.0) -> None:
        _check_int("batches", batches, 1)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature={temperature!r} is invalid: expected a number > 0")
        self.batches = batches
        self.temperature = float(temperature)

    def plan(self, ctx: PruneContext) -> RoundPlan:
        scores = grasp_scores(model_at_rewind(ctx), ctx.masks, ctx.batches, self.batches, self.temperature)
        return _plan(keep_top_k({n: -s for n, s in scores.items()}, ctx.masks, target_keep(ctx)))


class SynFlow(Strategy):
    """SynFlow: ``iterations`` rounds of synaptic-flow scoring at the rewind point, no data (only its shape)."""

    name = "synflow"

    def __init__(self, iterations: int = 100) -> None:
        _check_int("iterations", iterations, 1)
        self.iterations = iterations

    def plan(self, ctx: PruneContext) -> RoundPlan:
        x, _ = next(iter(ctx.batches()))
        mask = synflow_masks(model_at_rewind(ctx), ctx.masks, target_keep(ctx), self.iterations, x.shape[1:])
        return _plan(mask)


class OMP(Strategy):
    """One-shot magnitude pruning: keep the largest ``|w|`` of the TRAINED DENSE network (round 0)."""

    name = "omp"

    def plan(self, ctx: PruneContext) -> RoundPlan:
        if ctx.dense is None:
            raise ValueError("omp needs the trained dense network (ctx.dense)")
        dense = ctx.dense()
        scores = {n: dense[n].abs() for n in ctx.masks}
        return _plan(keep_top_k(scores, ctx.masks, target_keep(ctx)))


class Random(Strategy):
    """Random pruning, ``layerwise`` (the same density in every layer) or ``global``; seeded by run seed and round."""

    name = "random"

    def __init__(self, mode: str = "layerwise") -> None:
        if mode not in RANDOM_MODES:
            raise ValueError(f"mode={mode!r} is invalid: expected one of {', '.join(RANDOM_MODES)}")
        self.mode = mode

    def plan(self, ctx: PruneContext) -> RoundPlan:
        generator = torch.Generator().manual_seed((ctx.seed << 16) + ctx.round)
        density = ctx.density if ctx.density is not None else target_keep(ctx) / ctx.masks.numel()
        return _plan(random_masks(ctx.masks, density, self.mode, generator))
