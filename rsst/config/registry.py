"""The project's own ``_target_``s, by config group: the only ones a run builds, or rebuilds from a file.

Instantiating a ``_target_`` imports and calls whatever it names. A group's options are the files
``conf/<group>/*.yaml`` in the folder Hydra composes from (:func:`rsst.config.location.conf_dir`:
the checkout's ``conf/``, or the installed ``rsst/conf``), read as plain YAML, so a new option is
allowed by adding its file. Two places check every ``_target_`` against them before anything is
called:

- a run's config (:func:`rsst.config.checks.validate_config` and :func:`rsst.config.checks.build`),
  so a ``_target_`` given on the command line (``logger._target_=tempfile.mkstemp``) is one line
  before any object is built or any folder exists;
- a node rebuilt from a file someone may have handed over (``rsst.export``: a run folder's
  ``config.yaml``, an exported network's description), through :func:`checked_node`, which also
  refuses an interpolation before resolving anything.

A ``struct`` option takes a ``criteria`` and a ``schedule`` option as arguments (``criteria:
${criteria}``): a ``_target_`` nested there must be one of that group's. Any other nested
``_target_`` is refused: Hydra would instantiate it as an argument.
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
from rsst.errors import ConfigError, RsstError
from rsst.folder.safeload import MAX_DEPTH, interpolation_in, nesting_depth

CONF_DIR = conf_dir()

# The groups whose options a group's option takes as arguments (and so may nest a ``_target_`` of).
NESTED_GROUPS: dict[str, tuple[str, ...]] = {"struct": ("criteria", "schedule")}


def registered_targets(group: str) -> frozenset[str]:
    """The ``_target_`` of every option ``conf/<group>/*.yaml`` ships (in :data:`CONF_DIR`)."""
    return _targets(CONF_DIR, group)


@functools.cache
def _targets(conf: Path, group: str) -> frozenset[str]:
    files = sorted((conf / group).glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"{conf / group}: no options; the project's conf folder is missing or incomplete")
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


def foreign_target(plain: Any, group: str) -> tuple[str, Any, str] | None:
    """``(dotted key, value, the group it should be of)`` of the first ``_target_`` in ``plain`` (a group's node
    as plain data, at most :data:`~rsst.folder.safeload.MAX_DEPTH` deep) that is not a registered one; None if
    every one is."""
    for key, value in _leaves(plain, group):
        if key != "_target_" and not key.endswith("._target_"):
            continue
        owner = key.removesuffix("._target_")
        parent, _, leaf = owner.rpartition(".")
        if owner == group:
            kind = group
        elif parent == group and leaf in NESTED_GROUPS.get(group, ()):
            kind = leaf
        else:
            return key, value, ""
        if not isinstance(value, str) or value not in registered_targets(kind):
            return key, value, kind
    return None


def expected_targets(kind: str) -> str:
    """What a ``_target_`` of group ``kind`` may be, in words (the end of an error line)."""
    if not kind:
        return "no _target_ there: only a group's own node (and a struct's criteria and schedule) builds an object"
    return (
        f"the _target_ of an option in conf/{kind} ({', '.join(sorted(registered_targets(kind)))}); "
        f"choose the option ({kind}=<name>), or add a file there for a new one"
    )


def check_targets(node: Any, group: str) -> None:
    """:class:`~rsst.errors.ConfigError` naming the key if ``node`` (a group's node in a run's config) would build
    a ``_target_`` that is not one of the project's options."""
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    found = foreign_target(plain, group)
    if found is not None:
        key, value, kind = found
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected_targets(kind)}")


def checked_node(node: Any, group: str, source: str | Path) -> dict[str, Any]:
    """``node`` resolved to plain data, provided it builds one registered ``_target_`` of ``group`` and nothing else.

    Raises :class:`RefusedConfig` naming ``source`` for: a node nested more than
    :data:`~rsst.folder.safeload.MAX_DEPTH` levels, any ``${}`` interpolation (refused before anything
    is resolved), a top-level ``_target_`` outside :func:`registered_targets`, and any nested
    ``_target_`` (Hydra would instantiate it as an argument).
    """
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False)
    if nesting_depth(node) > MAX_DEPTH:
        raise RefusedConfig(f"{source}: {group} is nested more than {MAX_DEPTH} levels deep; expected a flat option")
    found = interpolation_in(node, group)
    if found is not None:
        raise RefusedConfig(
            f"{source}: refuses {found[0]}={found[1]!r}: an interpolation is never resolved from a file"
        )
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
    for key, value in _leaves(plain, group):
        if key.endswith("._target_") and (key != f"{group}._target_" or value not in registered_targets(group)):
            raise RefusedConfig(
                f"{source}: refuses to build {key}={value!r}: only the project's own {group} targets (the "
                f"_target_ of an option in conf/{group}) are built from a file"
            )
    return plain
