"""The range and cross-key rules of a run's config, applied once, before any data is loaded or any training starts.

Types are the schema's (:mod:`rsst.config.schema`), enforced while Hydra composes. Ranges and choices
are the schema's too: each field's rule, which :func:`validate_config` walks here, top level and every
group node whose schema Hydra recorded. Then the rules that tie keys together. Each error names the
key, the value and what was expected. Group options that need more than a field rule validate their
own arguments in their constructors; ``build`` reports those with the group name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rsst.config import schema
from rsst.config.registry import check_targets
from rsst.errors import ConfigError as ConfigError  # defined there (models raise it too); re-exported here

GROUPS = ("dataset", "arch", "struct", "criteria", "schedule", "optimizer", "logger")
# The rewind modes that read prune.pretrained; with any other, a prune.pretrained file would be ignored.
READS_PRETRAINED = ("pretrained",)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def field_rules(node: DictConfig, prefix: str) -> Iterator[tuple[str, Any, dataclasses.Field]]:
    """``(dotted key, value, field)`` of every field with a rule in ``node``'s schema, and in its typed children.

    A group node interpolated into another (``struct.criteria: ${criteria}``) is checked where it is defined.
    """
    kind = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(kind):
        return
    for f in dataclasses.fields(kind):
        if f.name not in node or OmegaConf.is_interpolation(node, f.name):
            continue
        value = node[f.name]
        key = f"{prefix}{f.name}"
        if isinstance(value, DictConfig):
            yield from field_rules(value, f"{key}.")
        elif f.metadata.get("ok") is not None:
            yield key, _plain(value), f


def unknown_keys(node: DictConfig, prefix: str) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of the keys a typed node has beyond its schema (added with ``+key=value``)."""
    kind = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(kind):
        return []
    names = {f.name for f in dataclasses.fields(kind)}
    out = []
    for name in node:
        key = f"{prefix}{name}"
        if name == "hydra" and not prefix:  # Hydra's own node, in a sweep job's config before the job starts
            continue
        if name not in names:
            out.append((key, _plain(node._get_node(name)._value())))
        elif not OmegaConf.is_interpolation(node, name) and isinstance(node[name], DictConfig):
            out.extend(unknown_keys(node[name], f"{key}."))
    return out


def where_keys(cfg: DictConfig, key: str) -> str:
    """``<parent> has a, b, c``: the keys the schema gives the node that ``key`` was added to."""
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent) if parent else cfg
    kind = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    known = sorted(f.name for f in dataclasses.fields(kind)) if dataclasses.is_dataclass(kind) else []
    return f"{parent or 'the top level'} has {', '.join(known)}"


def expected_for(kind: Any, name: str) -> str | None:
    """What field ``name`` of schema ``kind`` expects, in words (for a type error Hydra raised while composing)."""
    if not dataclasses.is_dataclass(kind):
        return None
    for f in dataclasses.fields(kind):
        if f.name == name:
            return f.metadata.get("expected") or None
    return None


def validate_config(cfg: DictConfig, check_device: bool = True) -> None:
    """Raise :class:`ConfigError` for the first invalid value, before anything is built or written.

    ``check_device=False`` skips the check that ``device`` exists here (a sweep's launching host).
    """
    for group in GROUPS:
        if not isinstance(cfg.get(group), DictConfig):
            raise ConfigError(f"{group} is missing from the config: expected one of the options in conf/{group}")
    for group in GROUPS:  # before anything is built: an import path on the command line is never called
        check_targets(cfg[group], group)
    unknown = unknown_keys(cfg, "")
    if unknown:
        key, value = unknown[0]
        raise ConfigError(f"{key}={value!r} is invalid: {key} is not a key of the config ({where_keys(cfg, key)})")
    for key, value, f in field_rules(cfg, ""):
        expected = schema.broken(f, value)
        if expected is not None:
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
    if prune.rewind_step != 0 and prune.rewind != "step":
        raise ConfigError(
            f"prune.rewind_step={prune.rewind_step} is invalid with prune.rewind={prune.rewind}: "
            "it is read only with prune.rewind=step"
        )
    if prune.stability_points != 11 and not prune.stability:
        raise ConfigError(
            f"prune.stability_points={prune.stability_points} is invalid with prune.stability=false: "
            "it is read only with prune.stability=true"
        )
    if prune.stability and str(cfg.struct.get("_target_", "")).endswith(".ADMM"):
        raise ConfigError(
            "prune.stability=true is invalid with struct=admm: ADMM decides its mask from its own training, "
            "and the analysis trains one mask twice"
        )
    if prune.rewind in READS_PRETRAINED:
        path = prune.get("pretrained")
        if not path:
            raise ConfigError(f"prune.pretrained is unset: prune.rewind={prune.rewind} needs a checkpoint file path")
        if not Path(path).is_file():
            raise ConfigError(f"prune.pretrained={path!r}: no such file (needed by prune.rewind={prune.rewind})")
    elif prune.get("pretrained"):
        raise ConfigError(
            f"prune.pretrained={prune.pretrained!r} is invalid with prune.rewind={prune.rewind}: the file is read only "
            f"with prune.rewind={' or '.join(READS_PRETRAINED)}; set that, or leave prune.pretrained unset"
        )


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
    """``hydra.utils.instantiate`` of one of the project's options (:func:`rsst.config.registry.check_targets`:
    a ``_target_`` that is not one is never called), with the group named in any error its constructor raises."""
    check_targets(node, group)
    try:
        return instantiate(node)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"{group}: {cause}") from exc


def _type_words(kind: Any, name: str) -> str:
    """A schema field's type in words: ``an integer``, ``true or false``, ``a number``..."""
    import typing  # noqa: PLC0415

    try:
        hint = typing.get_type_hints(kind).get(name)
    except Exception:  # an unresolvable annotation: say nothing rather than guess
        return "a value of the field's type"
    nullable = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)] if nullable else [hint]
    base = args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
    words = {int: "an integer", bool: "true or false", str: "a string", float: "a number", schema.Num: "a number"}
    if typing.get_origin(base) in (list, typing.List):  # noqa: UP006
        text = "a list, e.g. [a,b]"
    else:
        text = words.get(base, "a value of the field's type")
    return f"null or {text}" if nullable else text


def compose_error(exc: BaseException) -> str | None:
    """One line for an error Hydra raised while composing (a wrong type, key or option), or None if it is not one.

    The line names the key, the value and what is allowed, like :func:`validate_config`'s.
    """
    from hydra.errors import MissingConfigException, OverrideParseException  # noqa: PLC0415
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError  # noqa: PLC0415

    if isinstance(exc, MissingConfigException):
        group, _, option = (exc.missing_cfg_file or "").rpartition("/")
        if exc.options and group:
            return (
                f"{group}={option!r} is invalid: expected one of {', '.join(exc.options)} (the options in conf/{group})"
            )
        return one_line_message(exc)
    if isinstance(exc, OverrideParseException):
        return f"the command line does not parse: {one_line_message(exc)}"
    chain, cause = [], exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in chain:
        key = getattr(cause, "full_key", None)
        if not key:
            continue
        kind, leaf = getattr(cause, "object_type", None), getattr(cause, "key", None)
        if isinstance(cause, ValidationError):
            expected = expected_for(kind, str(leaf)) or _type_words(kind, str(leaf))
            return f"{key}={cause.value!r} is invalid: expected {expected}"
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            known = sorted(f.name for f in dataclasses.fields(kind)) if dataclasses.is_dataclass(kind) else []
            parent = key.rpartition(".")[0]
            return f"{key} is not a key of the config: {parent or 'the top level'} has {', '.join(known)}"
    return None


def long_integer_error(exc: BaseException, argv: list[str]) -> str | None:
    """One line for the ``ValueError`` Python raises converting an integer of more digits than it allows
    (``seed=<5000 digits>``), naming the override that holds it; None for any other error."""
    import re  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if not isinstance(exc, ValueError) or "integer string conversion" not in str(exc):
        return None
    limit = sys.get_int_max_str_digits()
    for arg in argv:
        run = max((len(m) for m in re.findall(r"[0-9]+", arg)), default=0)
        if run > limit:
            key = arg.partition("=")[0]
            return f"{arg} is invalid: {key} holds a number of {run} digits, more than the {limit} an integer may have"
    return f"the command line does not parse: a number has more than {limit} digits"


def one_line_message(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith(("Config search path", "provider=")))
