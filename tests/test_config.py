"""Every config option composes and instantiates; bad values fail before training, naming key and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CONF, compose_config, launch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rsst.config.checks import ConfigError, build, validate_config

PRESETS = ("hydra", "experiment", "hparams_search")  # groups of presets over the other groups
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in PRESETS)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALL_OPTIONS = [(g, o) for g in GROUPS for o in options(g)]


def test_the_core_groups_exist():
    assert {"dataset", "arch", "struct", "optimizer", "logger"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_every_option_composes_and_instantiates(group, option, tmp_path):
    extra = (
        [f"dataset.root={tmp_path / 'absent'}"] if group == "dataset" and option not in ("digits", "synthetic") else []
    )
    cfg = compose_config([f"{group}={option}", *extra])
    validate_config(cfg)
    node = cfg[group]
    if group == "dataset":
        try:
            data = build(node, group)
        except ConfigError as exc:  # a real data set whose files are not here: the error says where it looked
            assert str(tmp_path / "absent") in str(exc)
            return
        x, y = next(data.batches("train", 4, "cpu", seed=0))
        assert x.shape == (4, data.in_channels, data.image_size, data.image_size) and y.shape == (4,)
    elif group == "arch":
        model = instantiate(node)(num_classes=7, in_channels=3, image_size=32)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    elif group == "optimizer":
        opt = instantiate(node)([torch.nn.Parameter(torch.zeros(2))])
        assert isinstance(opt, torch.optim.Optimizer)
    else:
        assert instantiate(node) is not None


def test_every_experiment_preset_composes():
    """Each paper preset composes to the defaults with its groups swapped and its own values on top, names a
    method, validates, and changes the default run; a missing or empty ``conf/experiment`` fails."""

    def leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
        keys = []
        for key, value in node.items_ex(resolve=False):
            dotted = f"{prefix}{key}"
            keys += leaf_keys(value, f"{dotted}.") if isinstance(value, DictConfig) else [dotted]
        return keys

    folder = CONF / "experiment"
    assert folder.is_dir(), f"{folder} is missing: the paper presets live there"
    presets = options("experiment")
    assert presets, f"{folder} holds no preset"
    default = OmegaConf.to_container(compose_config())
    for preset in presets:
        body = OmegaConf.load(folder / f"{preset}.yaml")
        groups = {}
        for entry in body.pop("defaults", []):
            ((key, option),) = entry.items()
            assert key.startswith("override /"), f"{preset}: defaults entry {key!r} is not an override of a group"
            groups[key.removeprefix("override /")] = option
        assert "struct" in groups, f"{preset} names no pruning method (override /struct)"
        cfg = compose_config([f"experiment={preset}"])
        validate_config(cfg)
        # what the preset says, built by hand: the groups it picks, then its own keys at the top level
        expected = OmegaConf.merge(compose_config([f"{g}={o}" for g, o in groups.items()]), body)
        assert OmegaConf.to_container(cfg) == OmegaConf.to_container(expected), preset
        assert cfg.struct._target_ == compose_config([f"struct={groups['struct']}"]).struct._target_
        for key in leaf_keys(body):
            assert OmegaConf.select(cfg, key) == OmegaConf.select(body, key), f"{preset}: {key}"
        assert OmegaConf.to_container(cfg) != default, f"{preset} changes nothing in the default run"


BAD_VALUES = [
    (["prune.rate=1.5"], "prune.rate=1.5", "(0, 1)"),
    (["prune.rate=0"], "prune.rate=0", "(0, 1)"),
    (["train.epochs=-1"], "train.epochs=-1", "an integer >= 1"),
    (["prune.rewind=sideways"], "prune.rewind='sideways'", "one of init, epoch, pretrained"),
    (
        ["prune.rewind=epoch", "prune.rewind_epoch=40", "train.epochs=3"],
        "prune.rewind_epoch=40",
        "at most train.epochs=3",
    ),
    (["prune.rounds=0"], "prune.rounds=0", "an integer >= 1"),
    (["device=gpu0"], "device='gpu0'", "one of auto, cpu"),
    (["lr_schedule.milestones=[9,3]"], "lr_schedule.milestones=[9, 3]", "ascending"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1", "> 0"),
    (["optimizer.lr=inf"], "optimizer.lr=inf", "a finite number > 0"),
    (["optimizer.weight_decay=nan"], "optimizer.weight_decay=nan", "a finite number >= 0"),
    (["optimizer=adam", "optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5]", "two numbers in [0, 1)"),
    (["+train.typo=3"], "train.typo=3", "train has amp, batch_size"),
]


@pytest.mark.parametrize(("overrides", "named", "expected"), BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_a_wrong_value_names_the_key_the_value_and_what_is_allowed(overrides, named, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(overrides))
    assert named in str(err.value) and expected in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prune.rate=1.5", "prune.rate=1.5 is invalid: expected a number in (0, 1)"),
        ("prune.rewind=sideways", "prune.rewind='sideways' is invalid: expected one of init, epoch, pretrained"),
    ],
)
def test_launch_exits_non_zero_before_training_on_a_bad_value(override, message, tmp_path):
    proc = launch(override, f"paths.root={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stdout + proc.stderr
    assert not any(Path(tmp_path).iterdir()), "nothing may be written before the config is valid"


@pytest.mark.slow
def test_an_unknown_group_option_lists_the_available_ones(tmp_path, hydra_full_error):
    proc = launch("dataset=imagenet22k", f"paths.root={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.startswith("dataset='imagenet22k' is invalid: expected one of cifar10, cifar100, digits")
    assert "synthetic" in proc.stderr and proc.stderr.count("\n") == 1
