"""Refill: an unstructured conv mask made a channel mask, keeping whole output filters (docs/algorithms.md, section 2).

Per prunable layer with mask ``M`` of shape ``[C_out, ...]`` and density
``d = M.sum() / M.numel()``, keep exactly

    n = clamp(floor(d*C_out + (C_out - d*C_out) * fillback_rate), 1, C_out)

output channels: the ``n`` with the highest criterion score, ties going to the
lower channel index. ``n`` is computed in exact rational arithmetic from the
integer counts (``d*C_out = alive / (numel / C_out)``), so that, e.g., a layer
with exactly three filters' worth of weights alive keeps 3 channels, never 2
because a float product came out as 2.9999999.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from fractions import Fraction

import torch
from torch import Tensor

from rsst.pruning.masks import Masks


def check_fillback_rate(fillback_rate: float) -> Fraction:
    """``fillback_rate`` as the exact decimal it was written as (``0.3`` is 3/10, not the nearest double)."""
    if isinstance(fillback_rate, bool) or not isinstance(fillback_rate, (int, float)) or not 0 <= fillback_rate <= 1:
        raise ValueError(f"fillback_rate={fillback_rate!r} is invalid: expected a number in [0, 1]")
    return Fraction(repr(float(fillback_rate)))


def channels_to_keep(alive: int, numel: int, c_out: int, fillback_rate: float = 0.0) -> int:
    """``n = clamp(floor(d*C_out + (C_out - d*C_out)*fillback_rate), 1, C_out)`` with ``d = alive/numel``, exactly."""
    if c_out < 1 or numel < c_out or numel % c_out or not 0 <= alive <= numel:
        raise ValueError(f"inconsistent layer: alive={alive}, numel={numel}, C_out={c_out}")
    rate = check_fillback_rate(fillback_rate)
    kept = Fraction(alive * c_out, numel)  # d * C_out
    n = math.floor(kept + (c_out - kept) * rate)
    return min(max(n, 1), c_out)


def top_channels(scores: Tensor, n: int) -> Tensor:
    """Indices of the ``n`` highest ``scores``; equal scores go to the lower index (a stable descending sort)."""
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"channel scores must be finite, got {scores.tolist()}")
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    return order[:n]


def refill(
    masks: Mapping[str, Tensor],
    scores: Mapping[str, Tensor],
    fillback_rate: float = 0.0,
    unstructured: Collection[str] = (),
) -> Masks:
    """The channel mask ``R`` of ``masks``: per layer, rows all ones (the top-``n`` channels) or all zeros.

    Layers named in ``unstructured`` (the ``Linear`` layers, whose rows are a classifier's
    classes or an MLP's units) are not refilled: their mask is a copy of ``masks``' and
    they need no score. Returns fresh tensors; ``masks`` and ``scores`` are only read.
    """
    check_fillback_rate(fillback_rate)
    unknown = sorted(set(unstructured) - set(masks))
    if unknown:
        raise ValueError(f"unstructured layers that are not in the masks: {unknown}")
    out = Masks()
    for name, m in masks.items():
        if name in unstructured:
            out[name] = m.detach().clone()
            continue
        c_out = m.shape[0]
        s = scores[name]
        if s.shape != (c_out,):
            raise ValueError(f"scores of {name!r} have shape {tuple(s.shape)}, expected ({c_out},)")
        n = channels_to_keep(int(m.count_nonzero()), m.numel(), c_out, fillback_rate)
        keep = torch.zeros(c_out, dtype=torch.float32)
        keep[top_channels(s, n)] = 1.0
        rows = keep.to(m.device).view(c_out, *([1] * (m.dim() - 1))).expand(m.shape)
        out[name] = torch.empty_like(m, dtype=torch.float32).copy_(rows)  # in the memory format of the mask given
    return out
