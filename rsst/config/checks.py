"""Checks of the run's top-level config values, before any data is loaded or any training starts.

Each error names the key, the value and what was expected. Group options validate
their own arguments in their constructors; ``build`` reports those with the group name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rsst.errors import ConfigError as ConfigError  # defined there (models raise it too); re-exported here
from rsst.runtime.execution import COMPILE_MODES
from rsst.runtime.precision import AMP_CHOICES, off_if_false

REWIND_MODES = ("init", "epoch", "pretrained")
CONTROLS = ("reinit", "shuffle_layerwise")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


Check = tuple[str, Callable[[Any], bool], str]

CHECKS: list[Check] = [
    ("seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    (
        "device",
        lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
        "one of auto, cpu, cuda, cuda:N, mps",
    ),
    ("progress", lambda v: isinstance(v, bool), "true or false"),
    ("prune.rounds", lambda v: _is_int(v) and v >= 1, "an integer >= 1 (round 0 is the dense network)"),
    ("prune.rate", lambda v: _is_num(v) and 0 < v < 1, "a number in (0, 1): the fraction of alive weights removed"),
    (
        "prune.density",
        lambda v: v is None or (_is_num(v) and 0 < v <= 1),
        "null or a number in (0, 1]: the fraction of prunable weights kept",
    ),
    (
        "prune.rate_fc",
        lambda v: v is None or (_is_num(v) and 0 < v < 1),
        "null or a number in (0, 1): the rate of each fully connected layer",
    ),
    (
        "prune.rate_output",
        lambda v: v is None or (_is_num(v) and 0 < v < 1),
        "null or a number in (0, 1): the rate of the classifier",
    ),
    (
        "prune.controls",
        lambda v: isinstance(v, list) and all(c in CONTROLS for c in v) and len(set(v)) == len(v),
        f"a list of distinct controls from {', '.join(CONTROLS)}, e.g. [reinit,shuffle_layerwise]",
    ),
    ("prune.rewind", lambda v: v in REWIND_MODES, f"one of {', '.join(REWIND_MODES)}"),
    ("prune.rewind_epoch", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("prune.include_stem", lambda v: isinstance(v, bool), "true or false"),
    ("prune.include_fc", lambda v: isinstance(v, bool), "true or false"),
    ("train.epochs", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("train.batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("train.eval_batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("train.amp", lambda v: off_if_false(v) in AMP_CHOICES, f"one of {', '.join(AMP_CHOICES)}"),
    ("train.channels_last", lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    ("train.compile", lambda v: off_if_false(v) in COMPILE_MODES, f"one of {', '.join(COMPILE_MODES)}"),
    ("lr_schedule.warmup_epochs", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    (
        "lr_schedule.milestones",
        lambda v: isinstance(v, list) and all(_is_int(m) and m > 0 for m in v) and v == sorted(v),
        "an ascending list of positive epoch numbers, e.g. [91,136]",
    ),
    ("lr_schedule.gamma", lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("optimizer.lr", lambda v: _is_num(v) and v > 0, "a number > 0"),
]

# Keys of a group that exist only in some of its options: checked when present.
OPTIONAL_CHECKS: list[Check] = [
    ("optimizer.momentum", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("optimizer.weight_decay", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("optimizer.dampening", lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("optimizer.nesterov", lambda v: isinstance(v, bool), "true or false"),
    (
        "optimizer.betas",
        lambda v: isinstance(v, list) and len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1), e.g. [0.9,0.999]",
    ),
    ("optimizer.eps", lambda v: _is_num(v) and v > 0, "a number > 0"),
    ("arch.width", lambda v: _is_int(v) and v >= 1, "an integer >= 1 (channels of the first stage)"),
    ("arch.depth", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("arch.growth_rate", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("dataset.train_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("dataset.val_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1 (the best epoch is chosen on it)"),
    ("dataset.test_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("dataset.train_subset", lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    ("dataset.eval_subset", lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    ("dataset.num_workers", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
]


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is None and OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
        raise ConfigError(f"{key} is missing from the config")
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _present(cfg: DictConfig, key: str) -> bool:
    return OmegaConf.select(cfg, key, default="__absent__", throw_on_missing=False) != "__absent__"


def validate_config(cfg: DictConfig, check_device: bool = True) -> None:
    """Raise :class:`ConfigError` for the first invalid value, before anything is built or written.

    ``check_device=False`` skips the check that ``device`` exists here (a sweep's launching host).
    """
    for key, ok, expected in CHECKS:
        value = _select(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")
    for key, ok, expected in OPTIONAL_CHECKS:
        if _present(cfg, key):
            value = _select(cfg, key)
            if not ok(value):
                raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")
    opt = cfg.optimizer
    if opt.get("nesterov") and (not opt.get("momentum") or opt.get("dampening", 0)):
        raise ConfigError(
            f"optimizer.nesterov=true is invalid with optimizer.momentum={opt.get('momentum')!r} and "
            f"dampening={opt.get('dampening', 0)!r}: Nesterov needs momentum > 0 and dampening 0"
        )
    if check_device:
        device_exists(cfg.device)
    prune, epochs = cfg.prune, cfg.train.epochs
    for key in ("rate_fc", "rate_output"):
        if prune.get(key) is not None and not prune.include_fc:
            raise ConfigError(
                f"prune.{key}={prune.get(key)} is invalid with prune.include_fc=false: "
                "it sets the rate of Linear layers, which are pruned only with prune.include_fc=true"
            )
    if prune.rewind == "epoch" and prune.rewind_epoch > epochs:
        raise ConfigError(f"prune.rewind_epoch={prune.rewind_epoch} is invalid: expected at most train.epochs={epochs}")
    if prune.rewind == "pretrained":
        path = prune.get("pretrained")
        if not path:
            raise ConfigError("prune.pretrained is unset: prune.rewind=pretrained needs a checkpoint file path")
        if not Path(path).is_file():
            raise ConfigError(f"prune.pretrained={path!r}: no such file (needed by prune.rewind=pretrained)")


def available_devices() -> list[str]:
    """The devices this machine has, as ``device=`` would name them."""
    import torch  # noqa: PLC0415

    found = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()) if torch.cuda.is_available())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def device_exists(name: str) -> None:
    """``device=cuda``/``cuda:N``/``mps`` must exist here; the error lists the devices that do."""
    if name in ("auto", "cpu"):
        return
    have = available_devices()
    wanted = "cuda:0" if name == "cuda" else name
    if wanted not in have:
        raise ConfigError(f"device={name!r} is not available on this machine: it has {', '.join(have)}")


def build(node: DictConfig, group: str) -> Any:
    """``hydra.utils.instantiate`` with the group named in any error an option's constructor raises."""
    try:
        return instantiate(node)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"{group}: {cause}") from exc
