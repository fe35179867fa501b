"""Masks: named 0/1 tensors over the prunable weights, and global magnitude pruning.

A mask never shares storage with a weight or with another mask: every function
here that returns masks returns fresh tensors, and none writes into its inputs.
A function that derives masks from masks keeps their memory format: a mask made
:meth:`Masks.like` a channels-last weight stays channels-last through pruning, refill,
union and difference, so ``torch._foreach_mul_`` multiplies weights and masks of one
layout on its fast path (one multi-tensor kernel on a GPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor


class Masks(dict[str, Tensor]):
    """A dict from parameter name to a 0/1 float tensor of that parameter's shape."""

    @classmethod
    def ones_like(cls, weights: Mapping[str, Tensor]) -> Masks:
        return cls({name: torch.ones_like(w, dtype=torch.float32) for name, w in weights.items()})

    def clone(self) -> Masks:
        return Masks({name: m.detach().clone() for name, m in self.items()})

    def to(self, device: torch.device | str) -> Masks:
        return Masks({name: m.to(device) for name, m in self.items()})

    def like(self, weights: Mapping[str, Tensor]) -> Masks:
        """Fresh float32 copies on each weight's device and in its memory format (channels-last for NHWC weights).

        The round loop calls it once when a round's masks are made or restored, never per step.
        """
        return Masks({n: torch.empty_like(weights[n], dtype=torch.float32).copy_(m) for n, m in self.items()})

    def alive(self) -> int:
        """Number of unpruned weights over all layers."""
        return int(sum(int(m.count_nonzero()) for m in self.values()))

    def numel(self) -> int:
        return sum(m.numel() for m in self.values())

    def density(self) -> float:
        """Fraction of prunable weights kept, in [0, 1]."""
        total = self.numel()
        return self.alive() / total if total else 1.0

    def layer_density(self) -> dict[str, float]:
        return {name: float(m.count_nonzero()) / m.numel() for name, m in self.items()}

    def channel_sparsity(self) -> float:
        """Fraction of output channels (dim 0 rows) with no surviving weight, over all layers."""
        rows = sum(m.shape[0] for m in self.values())
        dead = sum(int((m.flatten(1).sum(1) == 0).sum()) for m in self.values())
        return dead / rows if rows else 0.0

    def union(self, other: Masks) -> Masks:
        return Masks({n: torch.maximum(m, other[n]) for n, m in self.items()})

    def minus(self, other: Masks) -> Masks:
        """Weights alive here but not in ``other``: ``self & ~other``."""
        return Masks({n: m * (1 - other[n]) for n, m in self.items()})

    def equal(self, other: Masks) -> bool:
        return self.keys() == other.keys() and all(torch.equal(m, other[n]) for n, m in self.items())

    def validate(self, weights: Mapping[str, Tensor]) -> None:
        """Raise if the masks do not cover exactly ``weights`` with 0/1 tensors of the same shapes."""
        if set(self) != set(weights):
            missing, extra = sorted(set(weights) - set(self)), sorted(set(self) - set(weights))
            raise ValueError(f"masks do not match the prunable weights: missing {missing}, unexpected {extra}")
        for name, m in self.items():
            if m.shape != weights[name].shape:
                raise ValueError(f"mask {name!r} has shape {tuple(m.shape)}, weight has {tuple(weights[name].shape)}")
            if not bool(((m == 0) | (m == 1)).all()):
                raise ValueError(f"mask {name!r} holds values other than 0 and 1")


def apply_masks_(weights: Iterable[Tensor], masks: Iterable[Tensor]) -> None:
    """Zero the pruned weights in place with one fused multiply (no hooks, no host sync)."""
    weights, masks = list(weights), list(masks)
    if weights:
        with torch.no_grad():
            torch._foreach_mul_(weights, masks)


def global_magnitude_prune(weights: Mapping[str, Tensor], masks: Masks, rate: float) -> Masks:
    """Remove ``round(rate * alive)`` of the still-alive weights with the smallest |w|, over all layers.

    The same rule as ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``
    applied iteratively (the amount is a fraction of the weights still alive). Ties are
    broken deterministically: by layer order, then by flat index.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"prune rate must be in [0, 1], got {rate}")
    names = list(masks)
    if not names:
        return Masks()
    with torch.no_grad():
        flat_masks = torch.cat([masks[n].reshape(-1) for n in names])
        scores = torch.cat([weights[n].detach().abs().reshape(-1).float() for n in names])
        alive_idx = flat_masks.nonzero().squeeze(1)
        k = round(rate * alive_idx.numel())
        new_flat = flat_masks.clone()
        if k > 0:
            order = torch.sort(scores[alive_idx], stable=True).indices
            new_flat[alive_idx[order[:k]]] = 0.0
    return unflatten(new_flat, masks)


def magnitude_prune(
    weights: Mapping[str, Tensor], masks: Masks, rate: float, layer_rates: Mapping[str, float] | None = None
) -> Masks:
    """Magnitude pruning with per-layer exceptions: each layer in ``layer_rates`` on its own, the rest globally.

    Every layer named in ``layer_rates`` loses ``round(layer_rate * alive)`` of its own
    alive weights (layer-wise pruning, as the lottery-ticket paper pruned its fully
    connected layers); the other layers are pruned together by
    :func:`global_magnitude_prune` at ``rate``. With no ``layer_rates`` this is exactly
    :func:`global_magnitude_prune`. Returns fresh masks in ``masks``' order.
    """
    layer_rates = dict(layer_rates or {})
    unknown = sorted(set(layer_rates) - set(masks))
    if unknown:
        raise ValueError(f"layer rates for layers that are not prunable: {unknown}")
    pooled = Masks({n: m for n, m in masks.items() if n not in layer_rates})
    out = global_magnitude_prune(weights, pooled, rate)
    for name, layer_rate in layer_rates.items():
        out.update(global_magnitude_prune(weights, Masks({name: masks[name]}), layer_rate))
    return Masks({n: out[n] for n in masks})


def unflatten(flat: Tensor, like: Mapping[str, Tensor]) -> Masks:
    """Cut a flat 0/1 vector (layers concatenated in ``like``'s order, each in its logical order) into fresh masks
    shaped and laid out like ``like``."""
    out, offset = Masks(), 0
    for n, ref in like.items():
        out[n] = torch.empty_like(ref, dtype=flat.dtype).copy_(flat[offset : offset + ref.numel()].view(ref.shape))
        offset += ref.numel()
    return out
