"""``prune.rewind=step`` (docs/algorithms.md, section 1d): every pruned round starts from the weights after
``prune.rewind_step`` optimizer steps of round 0 and trains the rest of round 0's schedule."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
import torch
from helpers import make_loop

from rsst.config.checks import ConfigError, validate_config
from rsst.loop.epochs import epoch_seed
from rsst.loop.hot_loop import train_epoch
from rsst.loop.rounds import RoundLoop
from rsst.loop.run import run

STEPS = 23  # optimizer steps an epoch: 1,437 training digits in batches of 64
K = 30  # a rewind step inside round 0's second epoch (its batch 7)


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.mark.train
def test_rewind_step_0_is_rewind_init_to_the_last_digit(fast_cfg):
    """RSST, so that the penalty's clock from the start step is covered too; another folder, the same numbers."""
    init = run(fast_cfg("prune.rounds=2", "prune.rewind=init"))
    step = run(fast_cfg("prune.rounds=2", "prune.rewind=step", "prune.rewind_step=0"))
    assert init["run_dir"] != step["run_dir"]
    assert comparable(init["rounds"]) == comparable(step["rounds"])
    assert step["rounds"][1]["penalised_norm_end"] < step["rounds"][1]["penalised_norm_start"]  # the penalty acted
    a, b = Path(init["run_dir"]), Path(step["run_dir"])
    assert (a / "metrics.csv").read_text().count("\n") == (b / "metrics.csv").read_text().count("\n") == 5
    for kind in ("weights", "masks"):
        for r in (0, 1):
            x, y = tensors(a / kind / f"round_{r}.pt"), tensors(b / kind / f"round_{r}.pt")
            assert x.keys() == y.keys() and all(torch.equal(x[n], y[n]) for n in x), (kind, r)


@pytest.mark.train
def test_the_rewind_point_is_round_0_after_k_steps_and_a_pruned_round_trains_the_rest(fast_cfg, tmp_path):
    # lr 0.1, cut 10x from epoch 1 on: step K lies after the cut
    args = ("struct=imp", "lr_schedule.milestones=[1]")
    loop = make_loop(fast_cfg(*args, "prune.rewind=step", f"prune.rewind_step={K}"))
    assert loop.state.theta_rewind is None  # taken during round 0, not before
    loop.begin_round()
    loop.run_epoch()
    assert loop.state.theta_rewind is None  # step K is in the second epoch
    loop.run_epoch()
    loop.end_round()
    rewind = loop.state.theta_rewind
    assert loop.state.rewind_optimizer is None  # kept only for prune.stability's copy of round 0

    # the same dense round, trained by hand for K steps from theta_0 in round 0's data order
    ref = make_loop(fast_cfg(*args, f"paths.run_dir={tmp_path / 'ref'}"))
    ref.begin_round()
    weights = list(ref.weights.values())
    masks = [ref.state.plan.train[n] for n in ref.names]
    for epoch, steps in ((0, STEPS), (1, K - STEPS)):
        batches = islice(ref.epochs.train_batches(epoch_seed(ref.cfg.seed, 0, epoch)), steps)
        train_epoch(ref.model, batches, ref.optimizer, ref.scheduler, weights, masks, execution=ref.execution)
    after_k = ref.model.state_dict()
    assert rewind.keys() == after_k.keys()
    assert all(torch.equal(rewind[n], after_k[n]) for n in rewind)  # BatchNorm buffers included
    assert int(rewind["bn1.num_batches_tracked"]) == K
    assert not torch.equal(rewind["conv1.weight"], loop.state.theta_0["conv1.weight"])
    assert not torch.equal(rewind["conv1.weight"], loop.model.state_dict()["conv1.weight"])  # not the trained end

    # round 1 starts there: the rewind weights under its mask, a fresh optimizer, the lr and data position of step K
    loop.begin_round()
    state, plan = loop.model.state_dict(), loop.state.plan
    assert all(torch.equal(state[n], v * plan.train[n] if n in plan.train else v) for n, v in rewind.items())
    assert loop.state.epoch == K // STEPS == 1
    assert loop.optimizer.state_dict()["state"] == {}  # no momentum carried over
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1)
    loop.run_epoch()
    assert loop.state.epoch == 2 and loop.state.epoch_rows[-1]["epoch"] == 1
    # the round trained the 2 * 23 - K steps left of round 0's schedule: BatchNorm counted them from the rewind point
    assert int(loop.model.state_dict()["bn1.num_batches_tracked"]) == 2 * STEPS
    assert loop.end_round()["epochs"] == 1


def test_a_rewind_step_beyond_round_0_is_one_line_before_anything_is_written(fast_cfg, tmp_path):
    with pytest.raises(ConfigError) as err:
        run(fast_cfg("prune.rewind=step", f"prune.rewind_step={2 * STEPS}"))
    assert str(err.value) == (
        "prune.rewind_step=46 is invalid: expected an integer below 46, the optimizer steps of round 0 "
        "(train.epochs=2 x 23 batches of train.batch_size=64 over 1437 training images)"
    )
    assert list(tmp_path.iterdir()) == []
    RoundLoop(fast_cfg("prune.rewind=step", f"prune.rewind_step={2 * STEPS - 1}"), tmp_path / "last")  # the last step


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["prune.rewind_step=500"],
            "prune.rewind_step=500 is invalid with prune.rewind=init: it is read only with prune.rewind=step",
        ),
        (["prune.rewind=step", "prune.rewind_step=-1"], "prune.rewind_step=-1 is invalid: expected an integer >= 0"),
        (["prune.rewind=stepp"], "prune.rewind='stepp' is invalid: expected one of init, epoch, pretrained, step"),
        (
            ["prune.stability_points=21"],
            "prune.stability_points=21 is invalid with prune.stability=false: "
            "it is read only with prune.stability=true",
        ),
        (
            ["prune.stability=true", "prune.stability_points=1"],
            "prune.stability_points=1 is invalid: expected an integer >= 2 (points on the path, both ends included)",
        ),
        (
            ["prune.stability=true", "struct=admm"],
            "prune.stability=true is invalid with struct=admm: ADMM decides its mask from its own training, and the "
            "analysis trains one mask twice",
        ),
    ],
)
def test_bad_rewind_and_stability_keys_are_one_line_naming_key_and_value(fast_cfg, overrides, line):
    with pytest.raises(ConfigError) as err:
        validate_config(fast_cfg(*overrides))
    assert str(err.value) == line
