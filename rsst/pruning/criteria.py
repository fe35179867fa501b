"""Per-output-channel scores for refill: the ``criteria`` config group (docs/algorithms.md, section 3).

Every criterion scores the network that refill is about to cut: the trained
weights of the previous round with the unstructured mask ``M_r`` applied. The
activation criteria (``l1``, ``l2``, ``saliency``) read each prunable layer's OWN
output, through a forward hook on the module that holds that weight, in eval
mode (BatchNorm uses and keeps its running statistics). The activation ``a`` is the
layer's output before any in-place op after it (``nn.ReLU(inplace=True)``) rewrites
it. A criterion leaves the model exactly as it found it: weights, buffers, ``.grad``
and train/eval modes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]


class Criterion:
    """Base class: ``scores`` returns ``{weight name: [C_out] score tensor}``; higher means keep."""

    name = "criterion"

    def scores(self, model: nn.Module, masks: Mapping[str, Tensor], batches: Batches) -> dict[str, Tensor]:
        """Score every output channel of every weight named in ``masks`` (the mask being refilled)."""
        raise NotImplementedError


class Remain(Criterion):
    """``remain``: the number of weights of the channel that survive in ``M``."""

    name = "remain"

    def scores(self, model: nn.Module, masks: Mapping[str, Tensor], batches: Batches) -> dict[str, Tensor]:
        return {n: m.detach().flatten(1).sum(1).float() for n, m in masks.items()}


class Magnitude(Criterion):
    """``magnitude``: the L1 norm of the channel's trained filter, masked by ``M``: ``sum |w * m|``."""

    name = "magnitude"

    def scores(self, model: nn.Module, masks: Mapping[str, Tensor], batches: Batches) -> dict[str, Tensor]:
        out = {}
        for n, m in masks.items():
            w = model.get_parameter(n).detach()
            out[n] = (w * m).abs().flatten(1).sum(1).float()
        return out


class ActivationCriterion(Criterion):
    """Scores from each layer's own output activation over the first ``batches`` training batches."""

    needs_grad = False

    def __init__(self, batches: int = 10) -> None:
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ValueError(f"criteria.batches={batches!r} is invalid: expected an integer >= 1")
        self.batches = batches

    def reduce(self, activation: Tensor, grad: Tensor | None) -> Tensor:
        """Per-channel score of one batch: ``activation`` is ``[B, C, ...]``; sum over all dims but 1."""
        raise NotImplementedError

    def scores(self, model: nn.Module, masks: Mapping[str, Tensor], batches: Batches) -> dict[str, Tensor]:
        totals = {n: torch.zeros(m.shape[0], device=m.device) for n, m in masks.items()}
        pending: list[tuple[str, Tensor]] = []  # (name, the layer's output a) waiting for dLoss/da

        def hook_for(name: str):
            def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
                if not self.needs_grad:  # reduce at once: a later in-place op on the output cannot change the score
                    totals[name] += self.reduce(output.detach(), None).to(totals[name].device)
                    return None
                # The network goes on with a copy, so an in-place op after the layer (``nn.ReLU(inplace=True)``)
                # rewrites the copy and ``output`` stays ``a``: the gradient is dLoss/da, not dLoss/d relu(a).
                pending.append((name, output))
                return output.clone()

            return hook

        handles = [_owner(model, n).register_forward_hook(hook_for(n)) for n in masks]
        try:
            with _masked_eval(model, masks):
                for x, y in itertools.islice(iter(batches()), self.batches):
                    pending.clear()
                    with torch.set_grad_enabled(self.needs_grad):
                        logits = model(x)
                        if not (self.needs_grad and pending):
                            continue
                        outputs = [out for _, out in pending]
                        grads = torch.autograd.grad(F.cross_entropy(logits, y), outputs, allow_unused=True)
                    for (name, value), grad in zip(pending, grads, strict=True):
                        totals[name] += self.reduce(value.detach(), grad).to(totals[name].device)
        finally:
            for h in handles:
                h.remove()
            pending.clear()
        return totals


class L1(ActivationCriterion):
    """``l1``: sum over batch and space of ``|a|`` for the channel's output activation ``a``."""

    name = "l1"

    def reduce(self, activation: Tensor, grad: Tensor | None) -> Tensor:
        return _per_channel_sum(activation.abs())


class L2(ActivationCriterion):
    """``l2``: sum over batch and space of ``a^2`` (the squared L2 norm of the channel's activation)."""

    name = "l2"

    def reduce(self, activation: Tensor, grad: Tensor | None) -> Tensor:
        return _per_channel_sum(activation.square())


class Saliency(ActivationCriterion):
    """``saliency``: sum over batch and space of ``|a * dLoss/da|`` (first-order Taylor saliency)."""

    name = "saliency"
    needs_grad = True

    def reduce(self, activation: Tensor, grad: Tensor | None) -> Tensor:
        if grad is None:  # the activation does not reach the loss: it cannot matter
            return torch.zeros(activation.shape[1], device=activation.device)
        return _per_channel_sum((activation * grad).abs())


def _per_channel_sum(t: Tensor) -> Tensor:
    dims = [d for d in range(t.dim()) if d != 1]
    return t.float().sum(dim=dims)


def _owner(model: nn.Module, weight_name: str) -> nn.Module:
    """The module whose ``weight`` parameter is ``weight_name`` (e.g. ``layer1.0.conv1.weight``)."""
    module_name, _, attr = weight_name.rpartition(".")
    if attr != "weight":
        raise ValueError(f"activation criteria score layers by their weight; {weight_name!r} is not a `.weight`")
    return model.get_submodule(module_name)


@contextmanager
def _masked_eval(model: nn.Module, masks: Mapping[str, Tensor]) -> Iterator[None]:
    """Run ``model`` in eval mode with ``masks`` multiplied into its weights; restore both afterwards."""
    modes = {m: m.training for m in model.modules()}
    params = {n: model.get_parameter(n) for n in masks}
    saved = {n: p.detach().clone() for n, p in params.items()}
    try:
        model.eval()
        with torch.no_grad():
            for n, p in params.items():
                p.mul_(masks[n])
        yield
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
        for m, training in modes.items():
            m.training = training
