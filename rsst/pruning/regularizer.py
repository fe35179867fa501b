"""The RSST penalty and its lambda schedules: the ``schedule`` config group (docs/algorithms.md, section 4).

Between ``loss.backward()`` and ``optimizer.step()`` the penalty adds
``lambda(t) * w`` to the gradient of every weight in ``P_r = M_r & ~R_r`` (with
``block_loss_grad`` it replaces their gradient instead). With ``penalty_scope=channels`` the
BatchNorm scale (gamma) of every channel the round will drop is one more penalised tensor, with
the same ``lambda(t)`` in the same kernels. ``lambda`` and the step
counter ``t`` live on the device as 0-dim tensors updated in place, so a step
costs a few fused ``torch._foreach_*`` kernels and no host synchronisation.

``t`` is a pure function of (epoch, step): :meth:`RSSTPenalty.start_epoch` sets
it from the epoch number, so a run resumed at an epoch boundary continues the
exact lambda sequence of an uninterrupted one. A round rewound to step ``k`` of
round 0 (``prune.rewind=step``) trains the steps from ``k`` on: its ``round``
period is those steps, and its first, partial epoch starts ``k mod steps`` into
an ``epoch`` period.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

PERIODS = ("round", "epoch")
PENALTY_SCOPES = ("weights", "channels")
STEPPED_KINDS = ("x", "x2", "x3", "exp")
E_MINUS_1 = math.e - 1.0


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class LambdaSchedule:
    """``lambda(t)`` for step ``t`` of a ramp period of ``T`` steps (``period``: a round or an epoch).

    ``g = reg_granularity_prune`` scales every schedule. ``__call__`` takes ``t`` as a
    device tensor and returns a float32 device tensor, without leaving the device.
    """

    name = "schedule"

    def __init__(self, reg_granularity_prune: float, period: str = "round") -> None:
        if not _is_num(reg_granularity_prune) or not reg_granularity_prune >= 0 or math.isinf(reg_granularity_prune):
            raise ValueError(
                f"schedule.reg_granularity_prune={reg_granularity_prune!r} is invalid: expected a finite number >= 0"
            )
        if period not in PERIODS:
            raise ValueError(f"schedule.period={period!r} is invalid: expected one of {', '.join(PERIODS)}")
        self.reg_granularity_prune = float(reg_granularity_prune)
        self.period = period

    def __call__(self, t: Tensor, T: int) -> Tensor:
        raise NotImplementedError


class SteppedSchedule(LambdaSchedule):
    """``x``, ``x2``, ``x3``, ``exp``: ``f(min(u*g, ceiling))``, ``u = floor(t / update_every)``.

    ``f`` is the identity, the square, the cube or ``exp``: lambda rises by one notch
    every ``update_every`` steps until the argument ``u*g`` reaches ``ceiling``, where
    the updates stop (the original stopped updating once ``g * i >= 1``). So ``x``,
    ``x2`` and ``x3`` rise from 0 to ``ceiling^k`` and ``exp`` from 1 to ``exp(ceiling)``.
    """

    FUNCTIONS = {"x": lambda z: z, "x2": torch.square, "x3": lambda z: z**3, "exp": torch.exp}

    def __init__(
        self,
        kind: str = "x",
        reg_granularity_prune: float = 1e-4,
        update_every: int = 5,
        ceiling: float = 1.0,
        period: str = "round",
    ) -> None:
        super().__init__(reg_granularity_prune, period)
        if kind not in STEPPED_KINDS:
            raise ValueError(f"schedule.kind={kind!r} is invalid: expected one of {', '.join(STEPPED_KINDS)}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"schedule.update_every={update_every!r} is invalid: expected an integer >= 1 (steps)")
        if not _is_num(ceiling) or not ceiling > 0 or math.isinf(ceiling):
            raise ValueError(f"schedule.ceiling={ceiling!r} is invalid: expected a finite number > 0")
        self.name = kind
        self.kind = kind
        self.update_every = update_every
        self.ceiling = float(ceiling)

    def __call__(self, t: Tensor, T: int) -> Tensor:
        u = torch.div(t, self.update_every, rounding_mode="floor").to(torch.float32)
        return self.FUNCTIONS[self.kind]((u * self.reg_granularity_prune).clamp(max=self.ceiling))


class ExpCustomSchedule(LambdaSchedule):
    """``exp_custom``: ``g/(e-1) * (exp(t/T) - 1)``, from 0 at ``t = 0`` to ``g`` at ``t = T``.

    The period defaults to an epoch, as in the original (``i`` is the batch within the epoch and
    ``T`` the batches of an epoch, so lambda climbs within every epoch and starts again at the next).
    """

    name = "exp_custom"

    def __init__(self, reg_granularity_prune: float = 1.0, period: str = "epoch") -> None:
        super().__init__(reg_granularity_prune, period)

    def exponent(self, x: Tensor) -> Tensor:
        return x

    def __call__(self, t: Tensor, T: int) -> Tensor:
        x = t.to(torch.float32) / T
        return torch.expm1(self.exponent(x)) * (self.reg_granularity_prune / E_MINUS_1)


class ExpCustomExponentsSchedule(ExpCustomSchedule):
    """``exp_custom_exponents``: ``g/(e-1) * (exp((t/T)^n) - 1)``, ``n = exponents``: flat early, steep late."""

    name = "exp_custom_exponents"

    def __init__(self, reg_granularity_prune: float = 1.0, exponents: float = 4, period: str = "epoch") -> None:
        super().__init__(reg_granularity_prune, period)
        if not _is_num(exponents) or not exponents > 0 or math.isinf(exponents):
            raise ValueError(f"schedule.exponents={exponents!r} is invalid: expected a finite number > 0")
        self.exponents = exponents

    def exponent(self, x: Tensor) -> Tensor:
        return x.pow(self.exponents)


def like(weight: Tensor, mask: Tensor) -> Tensor:
    """``mask`` in ``weight``'s dtype, device and memory format (channels-last weights get channels-last masks)."""
    return torch.empty_like(weight).copy_(mask)


def dropped_channels(penalised: Tensor, final: Tensor) -> Tensor:
    """The output channels the round drops: ``final`` (``R_r``) holds none of their weights, ``penalised`` some."""
    return ~final.flatten(1).any(1) & penalised.flatten(1).any(1)


def gradients_of(weights: Sequence[Tensor]) -> list[Tensor]:
    """The ``.grad`` of each weight, created as zeros where backward left none (a penalty still applies)."""
    for w in weights:
        if w.grad is None:
            w.grad = torch.zeros_like(w)
    return [w.grad for w in weights]


class RSSTPenalty:
    """``grad += lambda(t) * w`` on the penalised weights ``P_r`` (``grad = lambda(t) * w`` with ``block_loss_grad``).

    Called once per optimiser step, between ``backward`` and ``step``. Step ``k``
    (1-based) of a period uses ``lambda(k)``, so the last step of a period uses
    ``lambda(T)``. Layers with no penalised weight are left out; weights outside
    ``P_r`` are never touched. ``weights`` may hold any tensors with a mask of their
    shape: ``penalty_scope=channels`` adds the BatchNorm scales of the dropped channels.
    """

    def __init__(
        self,
        weights: Sequence[Tensor],
        penalised: Sequence[Tensor],
        schedule: LambdaSchedule,
        steps_per_epoch: int,
        epochs: int,
        block_loss_grad: bool = False,
        start_step: int = 0,
    ) -> None:
        if len(weights) != len(penalised):
            raise ValueError(f"{len(weights)} weights but {len(penalised)} penalised masks")
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(f"need steps_per_epoch >= 1 and epochs >= 1, got {steps_per_epoch} and {epochs}")
        if not 0 <= start_step < steps_per_epoch * epochs:
            raise ValueError(f"start_step={start_step}: expected a step in [0, {steps_per_epoch * epochs})")
        pairs = [(w, p) for w, p in zip(weights, penalised, strict=True) if bool(p.any())]
        self.weights = [w for w, _ in pairs]
        self.masks = [like(w, p) for w, p in pairs]  # made once per round, in the weight's own layout
        self.keep = [1 - p for p in self.masks] if block_loss_grad else []
        self.schedule = schedule
        self.block_loss_grad = block_loss_grad
        self.steps_per_epoch = steps_per_epoch
        self.start_step = start_step  # the round trains from this step of round 0's schedule on
        self.period_steps = steps_per_epoch * epochs - start_step if schedule.period == "round" else steps_per_epoch
        device = weights[0].device if len(weights) else torch.device("cpu")
        self.t = torch.zeros((), dtype=torch.int64, device=device)
        self.lam = torch.zeros((), dtype=torch.float32, device=device)

    def start_epoch(self, epoch: int) -> None:
        """Set ``t`` to the steps already taken in the period when epoch ``epoch`` (0-based) begins.

        ``round``: the steps the round has trained; ``epoch``: the batches of the epoch before the round's
        start step (none but in a rewound round's first epoch).
        """
        first = epoch * self.steps_per_epoch
        taken = first - self.start_step if self.schedule.period == "round" else self.start_step - first
        self.t.fill_(max(taken, 0))

    def __call__(self) -> None:
        self.t += 1
        self.lam.copy_(self.schedule(self.t, self.period_steps))
        if not self.weights:
            return
        grads = gradients_of(self.weights)
        with torch.no_grad():
            terms = torch._foreach_mul(self.weights, self.masks)
            torch._foreach_mul_(terms, self.lam)
            if self.block_loss_grad:
                torch._foreach_mul_(grads, self.keep)
            torch._foreach_add_(grads, terms)

    def metrics(self) -> dict[str, float]:
        """Per-epoch values for the run's records (reads the device once)."""
        return {"reg_lambda": float(self.lam)}


def penalised_norm(weights: Mapping[str, Tensor], penalised: Mapping[str, Tensor]) -> float:
    """The L2 norm of the penalised weights ``w * P`` over all layers."""
    total = torch.zeros((), dtype=torch.float64)
    for name, p in penalised.items():
        w = weights[name].detach()
        total += (w * p.to(w.device)).double().square().sum().cpu()
    return float(total.sqrt())
