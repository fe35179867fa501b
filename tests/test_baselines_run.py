"""The baselines in the round loop and through launch.py: targets per round, one-shot density, config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import FAST, launch, read_rounds

from rsst.config.checks import ConfigError
from rsst.folder.tickets import load_masks
from rsst.loop.run import run
from rsst.pruning.init_methods import keep_top_k
from rsst.pruning.masks import Masks
from rsst.pruning.strategies import imp_equivalent_density

BASELINES = ["snip", "grasp", "synflow", "omp", "random", "admm"]
QUICK = ["train.epochs=1", "train.batch_size=128"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prune.density=1.5", r"prune.density=1.5 is invalid: expected null or a number in \(0, 1\]"),
        ("prune.density=0", r"prune.density=0 is invalid: expected null or a number in \(0, 1\]"),
        (
            "struct=random struct.mode=diagonal",
            r"struct: mode='diagonal' is invalid: expected one of layerwise, global",
        ),
        ("struct=synflow struct.iterations=0", r"^struct.iterations=0 is invalid: expected an integer >= 1"),
        ("struct=snip struct.batches=0", r"^struct.batches=0 is invalid: expected an integer >= 1"),
        ("struct=admm struct.update_every=0", r"^struct.update_every=0 is invalid: expected an integer >= 1"),
        ("struct=admm struct.rho=0", r"^struct.rho=0 is invalid: expected a finite number > 0"),
    ],
)
def test_a_wrong_value_fails_before_training_naming_key_value_and_allowed(fast_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run(fast_cfg(*override.split()))
    assert not list(tmp_path.glob("*/checkpoint.pt"))


@pytest.mark.train
def test_omp_prunes_the_round_0_dense_network_in_every_round(fast_cfg):
    summary = run(fast_cfg("struct=omp", "prune.rounds=3", *QUICK))
    run_dir = Path(summary["run_dir"])
    dense = torch.load(run_dir / "weights" / "round_0.pt", weights_only=True)
    ticket = Masks(load_masks(run_dir / "masks" / "round_2.pt"))
    scores = {n: dense[n].abs() for n in ticket}
    total = ticket.numel()
    keep = round(imp_equivalent_density(total, 0.2, 2) * total)
    assert ticket.alive() == keep == total - round(0.2 * total) - round(0.2 * (total - round(0.2 * total)))
    assert ticket.equal(keep_top_k(scores, Masks.ones_like(scores), keep))  # from round 0, not round 1
    assert "conv1.weight" not in ticket  # the stem


@pytest.mark.train
def test_with_prune_density_round_1_prunes_once_and_later_rounds_retrain_the_ticket(fast_cfg):
    summary = run(fast_cfg("struct=random", "struct.mode=global", "prune.density=0.1", "prune.rounds=3", *QUICK))
    assert [r["remain_weight"] for r in summary["rounds"]] == pytest.approx([100.0, 10.0, 10.0], abs=0.01)
    masks = Path(summary["run_dir"]) / "masks"
    assert Masks(load_masks(masks / "round_1.pt")).equal(Masks(load_masks(masks / "round_2.pt")))


@pytest.mark.slow
def test_launch_sweeps_every_baseline_and_each_writes_its_rounds(tmp_path):
    proc = launch(
        "-m",
        *FAST,
        *QUICK,
        "prune.rounds=3",
        f"struct={','.join(BASELINES)}",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {p.name.split("_")[0]: read_rounds(p) for p in tmp_path.iterdir() if (p / "rounds.json").exists()}
    assert set(runs) == {"snip", "grasp", "synflow", "omp", "random", "admm"}
    for name, rows in runs.items():
        assert [r["round"] for r in rows] == [0, 1, 2], name
        assert [r["remain_weight"] for r in rows] == pytest.approx([100.0, 80.0, 64.0], abs=0.01), name
    assert all("admm_residual" not in r for r in runs["admm"])  # an epoch metric, not a round one
