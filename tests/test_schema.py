"""The typed schema (rsst/config/schema.py): types refused while Hydra composes, one line for each, the schema as
the single source of the top-level defaults, every option typed, and the sweep pre-check without Hydra's private
classes."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from helpers import CONF, compose_config, launch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rsst.config import schema
from rsst.config.checks import ConfigError, compose_error, validate_config
from rsst.config.sweeps import job_overrides

GROUPS = ("dataset", "arch", "struct", "criteria", "schedule", "optimizer", "logger")

COMPOSE_ERRORS = [
    ("train.epochs=abc", "train.epochs='abc' is invalid: expected an integer >= 1"),
    ("progress=maybe", "progress='maybe' is invalid: expected true or false"),
    ("optimizer.momentum=abc", "optimizer.momentum='abc' is invalid: expected a number in [0, 1)"),
    ("dataset.val_size=x", "dataset.val_size='x' is invalid: expected an integer >= 1"),
    ("paths.root=[1,2]", "paths.root=[1, 2] is invalid: expected null or a string"),
    ("struct=foo", "struct='foo' is invalid: expected one of admm, grasp, imp, omp, random, refill, rsst, snip"),
    ("experiment=nope", "experiment='nope' is invalid: expected one of "
     + ", ".join(sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
     + " (the options in conf/experiment)"),
    ("foo=1", "foo is not a key of the config: the top level has arch, collective_timeout_s, criteria, dataset"),
    ("train.epoch=3", "train.epoch is not a key of the config: train has amp, batch_size"),
]  # fmt: skip


@pytest.mark.parametrize(("override", "line"), COMPOSE_ERRORS, ids=[c[0] for c in COMPOSE_ERRORS])
def test_a_wrong_type_key_or_option_is_refused_while_composing_with_one_line(override, line):
    with pytest.raises((HydraException, OmegaConfBaseException)) as err:
        compose_config([override])
    message = compose_error(err.value)
    assert message is not None and message.startswith(line), message
    assert "\n" not in message


@pytest.mark.slow
def test_launch_prints_a_compose_error_as_one_line_on_stderr_with_exit_2(tmp_path, hydra_full_error):
    proc = launch("train.epochs=abc", f"paths.root={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == "train.epochs='abc' is invalid: expected an integer >= 1"
    assert proc.stdout == ""
    assert not any(tmp_path.iterdir())


def test_the_schema_is_the_only_source_of_the_top_level_defaults():
    top = yaml.safe_load((CONF / "config.yaml").read_text())
    assert set(top) == {"defaults", "hydra"}, f"conf/config.yaml repeats the schema's keys: {sorted(top)}"
    assert top["defaults"][0] == schema.SCHEMA_NAME  # the schema first, so every later entry merges onto it
    cfg = compose_config()
    for section in (schema.Prune, schema.Train, schema.LrSchedule, schema.Paths):
        name = {schema.LrSchedule: "lr_schedule"}.get(section, section.__name__.lower())
        assert OmegaConf.to_container(cfg[name]) == dataclasses.asdict(section()), name
    assert (cfg.seed, cfg.device, cfg.progress) == (0, "auto", True)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_is_typed_by_a_schema_that_has_exactly_its_keys(group):
    for option in options(group):
        node = compose_config([f"{group}={option}"])[group]
        kind = OmegaConf.get_type(node)
        assert dataclasses.is_dataclass(kind), f"{group}/{option} names no schema"
        fields = {f.name for f in dataclasses.fields(kind)}
        plain = yaml.safe_load((CONF / group / f"{option}.yaml").read_text())
        assert set(plain) - {"defaults"} == fields, f"{group}/{option}: keys {sorted(plain)} against {sorted(fields)}"
        assert OmegaConf.missing_keys(node) == set(), f"{group}/{option} leaves schema fields unset"


def test_a_number_keeps_its_written_type_so_existing_run_folders_keep_their_names():
    cfg = compose_config(["optimizer.lr=1", "optimizer.weight_decay=0", "lr_schedule.gamma=1"])
    assert [type(v) for v in (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.lr_schedule.gamma)] == [int] * 3
    cfg = compose_config(["optimizer.lr=0.5"])
    assert type(cfg.optimizer.lr) is float


def test_a_bare_off_still_means_off_and_a_choice_is_a_plain_string():
    cfg = compose_config(["train.amp=false", "train.compile=false", "prune.rewind=epoch"])
    validate_config(cfg)
    assert cfg.train.amp is False and type(cfg.prune.rewind) is str  # no Enum reaches a checkpoint


def test_a_sweep_jobs_config_with_hydras_node_is_checked_like_a_runs():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["prune.rate=0.5"], return_hydra_config=True)
    assert "hydra" in cfg
    validate_config(cfg)  # the hydra node is Hydra's, not an unknown key
    cfg.prune.rate = 1.5
    with pytest.raises(ConfigError, match=r"prune.rate=1.5 is invalid"):
        validate_config(cfg)


def sweep_config(overrides: list[str]) -> DictConfig:
    return OmegaConf.create({"hydra": {"overrides": {"task": overrides}}})


def test_a_grid_sweep_is_expanded_in_the_launchers_order_from_the_public_parser():
    jobs = job_overrides(sweep_config(["struct=imp,rsst", "seed=1,2,3", "train.epochs=2"]))
    assert len(jobs) == 6
    assert jobs[0] == ["struct=imp", "seed=1", "train.epochs=2"]
    assert jobs[1] == ["struct=imp", "seed=2", "train.epochs=2"]
    assert jobs[5] == ["struct=rsst", "seed=3", "train.epochs=2"]
    assert job_overrides(sweep_config(["optimizer.lr=interval(0.01,0.1)"])) is None  # a sampler's range


@pytest.mark.slow
def test_a_sweep_with_a_job_that_does_not_compose_runs_nothing(tmp_path, hydra_full_error):
    proc = launch("-m", "train.epochs=1,abc", f"hydra.sweep.dir={tmp_path / 'sweep'}", "progress=false")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "1 of 2 jobs have an invalid config; nothing was run" in proc.stderr
    assert "#1 train.epochs=abc" in proc.stderr
    assert "train.epochs='abc' is invalid: expected an integer >= 1" in proc.stderr
    assert not list((tmp_path / "sweep").glob("*/checkpoint.pt"))
