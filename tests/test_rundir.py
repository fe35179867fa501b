"""A run's folder is a pure function of what it computes."""

from __future__ import annotations

import itertools

from helpers import compose_config

from rsst.folder.naming import config_hash, run_directory, run_name


def test_the_same_config_gives_the_same_run_directory():
    a = compose_config(["seed=3", "prune.rate=0.3"])
    b = compose_config(["prune.rate=0.3", "seed=3"])
    assert run_directory(a) == run_directory(b)


def test_different_configs_never_share_a_run_directory():
    variants = [
        [],
        ["seed=1"],
        ["prune.rate=0.3"],
        ["prune.rounds=4"],
        ["prune.rewind=epoch", "prune.rewind_epoch=1"],
        ["train.epochs=3"],
        ["optimizer.lr=0.05"],
        ["arch=resnet32"],
        ["dataset=synthetic"],
        ["lr_schedule.milestones=[5]"],
    ]
    dirs = [run_directory(compose_config(v)) for v in variants]
    assert len(set(dirs)) == len(dirs)
    for (i, a), (j, b) in itertools.combinations(enumerate(dirs), 2):
        assert a != b, (variants[i], variants[j])


def test_where_and_how_to_report_does_not_change_the_hash():
    base = config_hash(compose_config([]))
    for extra in (["paths.root=/elsewhere"], ["device=cpu"], ["progress=false"], ["collective_timeout_s=5"]):
        assert config_hash(compose_config(extra)) == base, extra


def test_run_name_is_readable_and_ends_with_the_hash():
    cfg = compose_config(["struct=imp", "seed=2"])
    assert run_name(cfg) == f"imp_digits_resnet20_s2_{config_hash(cfg)}"
    assert run_directory(compose_config(["paths.run_dir=/x/y"])).as_posix() == "/x/y"


def test_a_root_or_run_dir_the_file_system_cannot_name_is_one_line_naming_the_key(tmp_path):
    import pytest  # noqa: PLC0415

    from rsst.folder.naming import RunFolderError  # noqa: PLC0415

    cases = {
        f"paths.root={tmp_path / ('r' * 10_000)}": r"paths.root: .* has a name of 10000 bytes, more than the 255",
        f"paths.root={tmp_path / '/'.join(['d' * 200] * 25)}": r"paths.root: .* is a path of \d{4} bytes, more than",
        f"paths.run_dir={tmp_path / ('x' * 300)}": r"paths.run_dir: .* has a name of 300 bytes",
    }
    for override, says in cases.items():
        with pytest.raises(RunFolderError, match=says) as err:
            run_directory(compose_config([override]))
        assert "\n" not in str(err.value) and len(str(err.value)) < 300
    assert list(tmp_path.iterdir()) == []  # decided before anything is made
    ok = tmp_path / ("y" * 255)
    assert run_directory(compose_config([f"paths.run_dir={ok}"])) == ok


def test_a_new_key_at_its_neutral_value_keeps_existing_folders_and_any_other_value_moves_them():
    """``struct.penalty_scope=weights`` is what RSST did before the key existed: the config without the key (an
    existing run's) and with it hash alike; ``channels`` is another method and another folder."""
    from omegaconf import OmegaConf

    from rsst.folder.naming import HASH_NEUTRAL, hashed_config

    cfg = compose_config(["schedule.period=round"])
    assert cfg.struct.penalty_scope == HASH_NEUTRAL["struct.penalty_scope"] == "weights"
    before_the_key = OmegaConf.to_container(cfg, resolve=True)
    del before_the_key["struct"]["penalty_scope"]
    assert config_hash(OmegaConf.create(before_the_key)) == config_hash(cfg)
    assert "penalty_scope" not in hashed_config(cfg)["struct"]
    channels = compose_config(["schedule.period=round", "struct.penalty_scope=channels"])
    assert config_hash(channels) != config_hash(cfg)
    assert hashed_config(channels)["struct"]["penalty_scope"] == "channels"


def test_the_original_period_is_a_new_default_and_so_a_new_folder():
    """The exp_custom schedules' period is now an epoch (the original's): the same command names another folder
    than it did with the round-long period, which an existing run keeps with schedule.period=round."""
    assert compose_config([]).struct.schedule.period == "epoch"
    assert config_hash(compose_config([])) != config_hash(compose_config(["schedule.period=round"]))
    assert config_hash(compose_config([])) == config_hash(compose_config(["schedule.period=epoch"]))


def test_the_rewind_and_stability_keys_at_their_neutral_values_keep_existing_folders():
    """``prune.rewind_step``, ``prune.stability`` and ``prune.stability_points`` came after runs existed: at 0, false
    and 11 a config hashes as one without them; any other value is another run."""
    from omegaconf import OmegaConf

    from rsst.folder.naming import HASH_NEUTRAL, hashed_config

    cfg = compose_config([])
    before_the_keys = OmegaConf.to_container(cfg, resolve=True)
    for key in ("rewind_step", "stability", "stability_points"):
        assert cfg.prune[key] == HASH_NEUTRAL[f"prune.{key}"]
        del before_the_keys["prune"][key]
        assert key not in hashed_config(cfg)["prune"]
    assert config_hash(OmegaConf.create(before_the_keys)) == config_hash(cfg)
    others = [
        ["prune.rewind=step"],
        ["prune.rewind=step", "prune.rewind_step=5"],
        ["prune.stability=true"],
        ["prune.stability=true", "prune.stability_points=21"],
    ]
    hashes = {config_hash(cfg), *(config_hash(compose_config(o)) for o in others)}
    assert len(hashes) == 1 + len(others)
