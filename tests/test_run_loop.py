"""The round loop of docs/algorithms.md, section 1: rewinding, theta_0, mask storage, round records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_loop

from rsst.config.checks import ConfigError
from rsst.folder.checkpoint import clone_state
from rsst.loop.run import RoundLoop, run


def train_round(loop: RoundLoop, epochs: int, after_epoch=None) -> None:
    loop.begin_round()
    for _ in range(epochs):
        loop.run_epoch()
        if after_epoch is not None:
            after_epoch(loop)
    loop.end_round()


def storages(tensors) -> list[int]:
    return [t.untyped_storage().data_ptr() for t in tensors]


@pytest.mark.train
def test_theta_0_is_bit_identical_after_several_rounds(fast_cfg):
    loop = make_loop(fast_cfg("struct=imp"))
    before = {k: v.clone() for k, v in loop.state.theta_0.items()}
    for _ in range(3):
        train_round(loop, 2)
    assert all(torch.equal(before[k], loop.state.theta_0[k]) for k in before)
    # and the trained model has really moved away from it
    assert not torch.equal(loop.model.state_dict()["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])


@pytest.mark.train
def test_masks_share_no_storage_with_each_other_theta_0_or_weights(fast_cfg):
    loop = make_loop(fast_cfg("struct=imp"))
    train_round(loop, 1)
    loop.begin_round()
    plan = loop.state.plan
    mask_ptrs = storages([*plan.train.values(), *plan.final.values(), *loop.state.ticket.values()])
    other = storages([*loop.state.theta_0.values(), *loop.model.state_dict().values()])
    assert len(set(mask_ptrs)) == len(mask_ptrs)
    assert not set(mask_ptrs) & set(other)
    assert not set(storages(loop.state.theta_0.values())) & set(storages(loop.model.state_dict().values()))


@pytest.mark.train
def test_rewind_init_restores_theta_0_under_the_new_mask(fast_cfg):
    loop = make_loop(fast_cfg("struct=imp", "prune.rewind=init"))
    train_round(loop, 2)
    loop.begin_round()
    state = loop.model.state_dict()
    for k, v in loop.state.theta_0.items():
        expected = v * loop.state.plan.train[k] if k in loop.state.plan.train else v
        assert torch.equal(state[k], expected), k
    assert loop.state.plan.train.density() == pytest.approx(0.8, abs=1e-3)


@pytest.mark.train
def test_rewind_epoch_restores_the_epoch_k_weights_including_bn_statistics(fast_cfg):
    cfg = fast_cfg("struct=imp", "prune.rewind=epoch", "prune.rewind_epoch=2", "train.epochs=3")
    loop = make_loop(cfg)
    snapshots = {}
    train_round(loop, 3, after_epoch=lambda lp: snapshots.setdefault(lp.state.epoch, clone_state(lp.model)))
    epoch2 = snapshots[2]
    assert not torch.equal(epoch2["bn1.running_mean"], snapshots[3]["bn1.running_mean"])
    loop.begin_round()
    state = loop.model.state_dict()
    for k, v in epoch2.items():
        expected = v * loop.state.plan.train[k] if k in loop.state.plan.train else v
        assert torch.equal(state[k], expected), k
    assert int(state["bn1.num_batches_tracked"]) == 2 * loop.data.num_batches("train", cfg.train.batch_size)


def test_pretrained_rewind_loads_the_file_and_reinitialises_stem_and_classifier(fast_cfg, tmp_path):
    donor = make_loop(fast_cfg("struct=imp", "seed=7", f"paths.run_dir={tmp_path / 'donor'}"))
    donor_state = clone_state(donor.model)
    torch.save({"state_dict": donor_state}, tmp_path / "pre.pt")
    loop = make_loop(fast_cfg("struct=imp", "prune.rewind=pretrained", f"prune.pretrained={tmp_path / 'pre.pt'}"))
    fresh = make_loop(fast_cfg("struct=imp", f"paths.run_dir={tmp_path / 'fresh'}"))  # same seed, no file
    for k, v in loop.state.theta_0.items():
        source = fresh.state.theta_0 if k.startswith(("conv1.", "fc.")) else donor_state
        assert torch.equal(v, source[k]), k
    assert not torch.equal(loop.state.theta_0["layer1.0.conv1.weight"], fresh.state.theta_0["layer1.0.conv1.weight"])
    assert torch.equal(loop.model.state_dict()["layer2.0.conv2.weight"], donor_state["layer2.0.conv2.weight"])


def test_missing_pretrained_file_is_named_before_training(fast_cfg, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match=f"prune.pretrained='{missing}'.*no such file"):
        run(fast_cfg("prune.rewind=pretrained", f"prune.pretrained={missing}"))
    assert not any(tmp_path.iterdir())


@pytest.mark.train
def test_round_records_follow_the_imp_schedule(fast_cfg, tmp_path):
    summary = run(fast_cfg("struct=imp", "prune.rounds=3"))
    rows = summary["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["remain_weight"] for r in rows] == pytest.approx([100.0, 80.0, 64.0], abs=0.01)
    for r in rows:
        assert r["epochs"] == 2 and 0 <= r["best_epoch"] < 2
        assert r["test_acc"] >= 0 and r["best_val_acc"] > 10  # better than chance on 10 classes
    run_dir = Path(summary["run_dir"])
    for name in ("config.yaml", "checkpoint.pt", "metrics.csv", "rounds.json", "run.log"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "masks").iterdir()) == ["round_0.pt", "round_1.pt", "round_2.pt"]
    assert len((run_dir / "metrics.csv").read_text().strip().splitlines()) == 1 + 3 * 2
