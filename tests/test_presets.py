"""Every ``experiment=`` preset runs: one tiny round of it, end to end, through ``rsst.run``.

The presets are globbed from ``conf/experiment``, so a new one is covered as soon as it exists.
Each keeps its method, criterion, schedule, optimiser and architecture; only the size of the run
shrinks (two rounds of one epoch on a few images, a narrow width where the arch has one). A data
set this machine lacks is written in its real on-disk format by ``fake_data`` and ``dataset.root``
points at it; Fashion-MNIST runs on the real files when Debian's package is installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_data import write_cifar, write_fashion_mnist, write_imagenet_folders, write_tiny_imagenet
from helpers import CONF, compose_config, only_run_dir, read_rounds

from rsst import run
from rsst.config.checks import validate_config
from rsst.data.fashion_mnist import SYSTEM_ROOT

IMP = "rsst.pruning.strategies.IMP"
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# The run's size, whatever the preset says: round 0 (dense) and one pruned round, one epoch each.
TINY = {
    "device": "cpu",
    "progress": "false",
    "prune.rounds": "2",
    "train.epochs": "1",
    "train.batch_size": "8",
    "train.eval_batch_size": "64",
    "train.compile": "off",
    "dataset.train_subset": "16",
    "dataset.eval_subset": "8",
}

Overrides = dict[str, str]


def sizes(train: int, val: int, test: int) -> Overrides:
    return {"dataset.train_size": str(train), "dataset.val_size": str(val), "dataset.test_size": str(test)}


def fake_cifar100(root: Path) -> Overrides:
    write_cifar(root, "cifar100", per_file=20, test=10)  # 100 train images, 10 test
    return {"dataset.root": str(root), **sizes(90, 10, 10)}


def fake_cifar10(root: Path) -> Overrides:
    write_cifar(root, "cifar10", per_file=20, test=10)  # 5 x 20 train images, 10 test
    return {"dataset.root": str(root), **sizes(90, 10, 10)}


def fashion_mnist(root: Path) -> Overrides:
    if SYSTEM_ROOT.is_dir():  # the real files: the data module's default root finds them
        return {}
    write_fashion_mnist(root, train=30, test=10)
    return {"dataset.root": str(root), **sizes(25, 5, 10)}


def fake_tiny_imagenet(root: Path) -> Overrides:
    write_tiny_imagenet(root, classes=3, per_class=12, val=5)
    return {"dataset.root": str(root), "dataset.num_classes": "3", **sizes(30, 6, 5)}


def fake_imagenet(root: Path) -> Overrides:
    write_imagenet_folders(root, classes=3, train_per_class=6, val_per_class=2)  # 18 train images, 6 val
    # ResNet-50 is 25M weights: 4 images of 16 px (its CIFAR stem), batches of 2, keep its round under seconds.
    return {
        "dataset.root": str(root),
        **sizes(15, 3, 6),
        "dataset.image_size": "16",
        "dataset.resize_size": "18",
        "dataset.num_workers": "0",
        "dataset.train_subset": "4",
        "dataset.eval_subset": "3",
        "train.batch_size": "2",
    }


# dataset _target_ -> a function writing the data under a folder and returning the overrides that read it
# (they replace TINY's where both set a key). The generated data sets (digits, synthetic) need none.
DATA: dict[str, Callable[[Path], Overrides]] = {
    "rsst.data.cifar.Cifar100": fake_cifar100,
    "rsst.data.cifar.Cifar10": fake_cifar10,
    "rsst.data.fashion_mnist.FashionMNIST": fashion_mnist,
    "rsst.data.tiny_imagenet.TinyImageNet": fake_tiny_imagenet,
    "rsst.data.imagenet.ImageNet": fake_imagenet,
    "rsst.data.digits.Digits": lambda root: {},
    "rsst.data.synthetic.Synthetic": lambda root: {},
}


def test_the_presets_are_found():
    expected = {"refill_cifar100_resnet20", "rsst_cifar100_resnet20", "refill_imagenet_resnet50"}
    assert expected | {"lth_fashion_mnist_lenet", "lmc_cifar10_resnet20"} <= set(PRESETS)


def test_the_linear_mode_preset_is_openlths_resnet20_recipe_and_its_gpu_sweep_composes():
    """docs/results.md's GPU command: ``-m experiment=lmc_cifar10_resnet20 prune.rewind_step=0,2000
    prune.stability=true dataset.root=CIFAR``, one job per rewind step."""
    for step in (0, 2000):
        cfg = compose_config(
            ["experiment=lmc_cifar10_resnet20", f"prune.rewind_step={step}", "prune.stability=true", "dataset.root=C"]
        )
        validate_config(cfg, check_device=False)
        targets = (cfg.dataset._target_, cfg.arch._target_, cfg.struct._target_)
        assert targets == ("rsst.data.cifar.Cifar10", "rsst.models.cifar_resnet.resnet20", IMP)
        assert (cfg.train.epochs, cfg.train.batch_size, cfg.lr_schedule.warmup_epochs) == (160, 128, 0)
        assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.1, 0.9, 1e-4)
        assert (list(cfg.lr_schedule.milestones), cfg.lr_schedule.gamma) == ([80, 120], 0.1)
        assert (cfg.prune.rate, cfg.prune.include_stem, cfg.prune.include_fc) == (0.2, True, True)
        assert (cfg.prune.rewind, cfg.prune.rewind_step, cfg.prune.stability) == ("step", step, True)
        assert step < cfg.train.epochs * math.ceil(cfg.dataset.train_size / cfg.train.batch_size)  # inside round 0


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.train
def test_each_preset_runs_a_dense_and_a_pruned_round_with_every_control(preset, tmp_path):
    cfg = compose_config([f"experiment={preset}"])
    target = cfg.dataset._target_
    assert target in DATA, f"experiment={preset}: no fake writer for dataset {target}; add one to tests/fake_data.py"
    overrides = {**TINY, "paths.root": str(tmp_path / "runs"), **DATA[target](tmp_path / "data")}
    if "width" in cfg.arch:
        overrides["arch.width"] = "4"
    if cfg.prune.rewind == "epoch" and cfg.prune.rewind_epoch > 1:  # rewind within the one epoch of round 0
        overrides["prune.rewind_epoch"] = "1"
    if cfg.prune.rewind == "step" and cfg.prune.rewind_step > 1:  # within round 0's two steps
        overrides["prune.rewind_step"] = "1"
    cfg = compose_config([f"experiment={preset}", *(f"{k}={v}" for k, v in overrides.items())])
    summary = run(cfg)

    rows = read_rounds(only_run_dir(tmp_path / "runs"))
    assert Path(summary["run_dir"]) == only_run_dir(tmp_path / "runs")
    tickets = [row for row in rows if "branch" not in row]
    assert [row["round"] for row in tickets] == [0, 1]
    assert tickets[0]["remain_weight"] == pytest.approx(100.0)
    assert 0 < tickets[1]["remain_weight"] < 100.0  # round 1 pruned something
    for row in tickets:
        assert math.isfinite(row["test_acc"]) and 0.0 <= row["test_acc"] <= 100.0, row
    controls = {row["branch"]: row for row in rows if "branch" in row}
    assert sorted(controls) == sorted(cfg.prune.controls)  # one row per control, for the one pruned round
    for branch, row in controls.items():
        assert row["round"] == 1, (branch, row)
        assert math.isfinite(row["test_acc"]) and 0.0 <= row["test_acc"] <= 100.0, (branch, row)
