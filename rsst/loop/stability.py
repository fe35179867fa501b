"""Linear-mode stability (Frankle et al., ICML 2020): does a round's training end in one linearly connected region?

With ``prune.stability=true``, after round ``r``'s ticket is trained a second copy of the round trains from the
same rewind point, with the same masks (and RSST's penalty), the same optimizer and lr schedule, under another
data order (:func:`copy_seed`). The error of the network on the straight line between the two trained copies is
then measured at ``prune.stability_points`` points, both ends included, on validation and on test
(docs/algorithms.md, "Linear-mode stability"). Before each point is evaluated, its BatchNorm running statistics
are recomputed on one fixed set of training batches: the mean of two networks' running statistics is not the
statistics of their mean network, whose activations have their own mean and variance.

The copy is a branch of the round like a lottery-ticket control (:mod:`rsst.loop.controls`): it is checkpointed
after every epoch, and the path is a pure function of the two copies and the fixed batches, so a run killed
during the copy, or during the path, resumes to the same figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from rsst.folder.checkpoint import clone_state
from rsst.loop import controls
from rsst.pruning.masks import apply_masks_
from rsst.runtime.execution import Execution
from rsst.seeds import derive_seed

if TYPE_CHECKING:
    from rsst.loop.rounds import RoundLoop

STABILITY = "stability"  # the copy's branch name in metrics.csv and in kill points
BN_BATCHES = 10  # training batches the BatchNorm statistics of every point on the path are recomputed from


def copy_seed(seed: int, round_: int, epoch: int) -> int:
    """The data order of the stability copy's epoch: another order than the round's (:func:`epoch_seed`)."""
    return derive_seed("stability", seed, round_, epoch)


def norm_seed(seed: int, round_: int) -> int:
    """The order of the fixed training batches the path's BatchNorm statistics are recomputed from."""
    return derive_seed("stability_bn", seed, round_)


def alphas(points: int) -> list[float]:
    """``points`` evenly spaced weights of the second copy on the path, from 0 (the first) to 1 (the second)."""
    if points < 2:
        raise ValueError(f"points={points}: expected at least 2 (both ends of the path)")
    return [i / (points - 1) for i in range(points)]


def interpolate(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) * a + alpha * b`` for every float tensor of two state_dicts (``torch.lerp``: exactly ``a`` at 0,
    ``b`` at 1, and ``a`` all along when ``a == b``); integer buffers (BatchNorm's batch count) are ``a``'s."""
    return {k: torch.lerp(v, b[k], alpha) if v.is_floating_point() else v.clone() for k, v in a.items()}


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recompute_batch_norm(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], execution: Execution | None = None
) -> int:
    """Replace every BatchNorm layer's running statistics by their average over ``batches``; the batches seen.

    Each layer's statistics are reset and accumulated with ``momentum=None`` (a plain average of the per-batch
    mean and variance) by a forward pass in train mode without gradients; weights are not touched, and the
    layers' momentum and the model's mode are restored. A network without BatchNorm is left as it is.
    """
    norms = batch_norms(model)
    if not norms:
        return 0
    run = execution or Execution()
    momenta, training = [m.momentum for m in norms], model.training
    device = next(model.parameters()).device
    seen = 0
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        with torch.no_grad():
            for x, _ in batches:
                with run.autocast(device):
                    model(run.layout(x))
                seen += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(training)
    return seen


def barrier(errors: Sequence[float]) -> float:
    """The error barrier: the largest error on the path minus the mean of its two ends' errors (>= 0)."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def linear_path(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    points: int,
    evaluate: Callable[[str], float],
    norm_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    execution: Execution | None = None,
) -> dict[str, list[float]]:
    """The error (100 - accuracy, %) on validation and test of the networks on the line from ``a`` to ``b``.

    At each point the model is loaded with :func:`interpolate` and its BatchNorm statistics are recomputed
    from ``norm_batches()`` (the same batches at every point) before ``evaluate(split)``; the model is left at
    the last point (``b`` with recomputed statistics).
    """
    curve: dict[str, list[float]] = {"alpha": alphas(points), "val_error": [], "test_error": []}
    for alpha in curve["alpha"]:
        model.load_state_dict(interpolate(a, b, alpha))
        recompute_batch_norm(model, norm_batches(), execution)
        curve["val_error"].append(100.0 - evaluate("val"))
        curve["test_error"].append(100.0 - evaluate("test"))
    return curve


def stability_record(curve: Mapping[str, list[float]], copy: Mapping[str, float]) -> dict[str, Any]:
    """What the round's ``rounds.json`` row gains: the barrier on both splits, the curve, the copy's own accuracy."""
    return {
        "stability_barrier": {"val": barrier(curve["val_error"]), "test": barrier(curve["test_error"])},
        "stability_curve": {k: list(v) for k, v in curve.items()},
        "stability_copy": dict(copy),
    }


# -- the copy as a branch of the round loop --------------------------------------------------------------------


def begin(loop: RoundLoop) -> None:
    """Start the stability copy of the last finished round: its rewind point, its masks, a fresh optimizer.

    Round 0's copy continues round 0's own training from the rewind point (the optimizer state kept there);
    a pruned round's copy starts as the round did.
    """
    state = loop.state
    assert state.pending and state.pending[0] == STABILITY
    assert state.trunk_plan is not None and state.theta_rewind is not None
    plan = state.trunk_plan
    state.branch, state.plan = STABILITY, plan
    loop.model.load_state_dict(state.theta_rewind)
    apply_masks_(loop.weights.values(), [plan.train[n] for n in loop.names])
    state.epoch, state.round_seconds = loop.first_epoch(), 0.0
    loop.new_optimizer()
    if state.current_round == 0 and state.rewind_optimizer is not None:
        assert loop.optimizer is not None
        loop.optimizer.load_state_dict(state.rewind_optimizer)
    loop.new_penalty()


def end(loop: RoundLoop) -> dict[str, Any]:
    """The copy is trained: measure the path between the round's ticket and the copy, and record it in the round's
    row; returns the round, the branch and what was recorded."""
    state = loop.state
    assert state.plan is not None and state.branch == STABILITY and state.trunk_weights is not None
    r, final = state.current_round, state.plan.final
    apply_masks_(loop.weights.values(), [final[n] for n in loop.names])  # the copy's ticket (RSST: R_r)
    own = {"val_acc": loop.epochs.evaluate("val"), "test_acc": loop.epochs.evaluate("test")}
    copy = clone_state(loop.model)
    seed = loop.cfg.seed

    def norm_batches() -> Iterable[tuple[Tensor, Tensor]]:
        return islice(loop.epochs.train_batches(norm_seed(seed, r), sharded=False), BN_BATCHES)

    curve = linear_path(
        loop.model,
        state.trunk_weights,
        copy,
        int(loop.cfg.prune.stability_points),
        loop.epochs.evaluate,
        norm_batches,
        loop.execution,
    )
    record = stability_record(curve, own)
    row = next(row for row in state.round_rows if row["round"] == r and "branch" not in row)
    row.update(record)
    state.trunk_plan = None
    controls.close(loop)
    return {"round": r, "branch": STABILITY, **record}
