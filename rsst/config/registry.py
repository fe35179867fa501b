"""The project's own ``_target_``s, by config group: the only ones ever built from a file a run folder holds.

A run folder's ``config.yaml`` (and an exported network's description) may come from someone
else, and instantiating a ``_target_`` imports and calls whatever it names. Commands that
rebuild a run from its folder (``rsst.export``) check every ``_target_`` in the node they build
against the targets the shipped options name: ``conf/<group>/*.yaml`` in the folder Hydra composes
from (:func:`rsst.config.location.conf_dir`: the checkout's ``conf/``, or the installed ``rsst/conf``),
read as plain YAML, so a new option is allowed by adding it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rsst.config.location import conf_dir
from rsst.errors import RsstError

CONF_DIR = conf_dir()


@functools.cache
def registered_targets(group: str) -> frozenset[str]:
    """The ``_target_`` of every option ``conf/<group>/*.yaml`` ships."""
    files = sorted((CONF_DIR / group).glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"{CONF_DIR / group}: no options; the project's conf folder is missing or incomplete")
    targets = set()
    for f in files:
        node = yaml.safe_load(f.read_text())
        if isinstance(node, dict) and isinstance(node.get("_target_"), str):
            targets.add(node["_target_"])
    return frozenset(targets)


class RefusedConfig(RsstError, ValueError):
    """A config node from a file that is not built: a ``_target_`` that is not the project's own, or unresolvable."""


def _leaves(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf at or below ``node``."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _leaves(v, f"{key}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{key}[{i}]")
    else:
        yield key, node


def checked_node(node: Any, group: str, source: str | Path) -> dict[str, Any]:
    """``node`` resolved to plain data, provided it builds one registered ``_target_`` of ``group`` and nothing else.

    Raises :class:`RefusedConfig` naming ``source`` for: a top-level ``_target_`` outside
    :func:`registered_targets`, any nested ``_target_`` (Hydra would instantiate it as an argument),
    and an interpolation that does not resolve or that resolving leaves behind (Hydra would resolve
    it again, after this check).
    """
    try:
        resolved = OmegaConf.to_container(OmegaConf.create({group: node}), resolve=True)
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())
        raise RefusedConfig(f"{source}: {group} does not resolve to plain values ({detail})") from None
    plain = resolved[group]
    if not isinstance(plain, dict):
        raise RefusedConfig(f"{source}: {group} is a {type(plain).__name__}; expected one of the project's options")
    if "_target_" not in plain:
        raise RefusedConfig(f"{source}: {group} has no _target_; expected one of the project's {group} options")
    allowed = registered_targets(group)
    for key, value in _leaves(plain, group):
        if key.endswith("._target_") and (key != f"{group}._target_" or value not in allowed):
            raise RefusedConfig(
                f"{source}: refuses to build {key}={value!r}: only the project's own {group} targets (the "
                f"_target_ of an option in conf/{group}) are built from a file"
            )
        if isinstance(value, str) and "${" in value:
            raise RefusedConfig(f"{source}: refuses {key}={value!r}: an interpolation remains after resolving")
    return plain
