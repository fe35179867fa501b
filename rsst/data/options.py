"""The options of a data module: one typed object per data set, its defaults only in ``conf/dataset``.

Each data module names its schema (``options = schema.Cifar``: the dataclass of
:mod:`rsst.config.schema` its ``conf/dataset`` file names too). Hydra hands the module every key of
that file (``conf/dataset/cifar10.yaml``); a caller in Python may give a few
(``Cifar10(root="data")``). :func:`data_options` fills in the rest from the file, so a default lives
in one place, and checks every value by the rule its schema gives (the same rules
:func:`rsst.config.checks.validate_config` applies when Hydra composes). It returns an instance of
the schema, so every data module reads its options the same way (``options.train_size``...).

:class:`Serving` is the part every in-memory data module hands to :class:`rsst.data.base.TensorDataModule`:
how batches are cut, augmented and which images are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rsst.config import schema
from rsst.config.location import conf_dir
from rsst.folder.safeload import load_yaml

LOADERS = schema.LOADERS


def plain(value: Any) -> Any:
    """A value as the schema's rules read it: lists (never tuples or OmegaConf nodes), mappings as dicts."""
    from omegaconf import OmegaConf  # noqa: PLC0415

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, tuple):
        return list(value)
    return value


def check_rules(kind: type, values: Mapping[str, Any]) -> None:
    """``ValueError`` for the first of ``values`` that breaks its field's rule in schema ``kind``.

    The message is the one :func:`rsst.config.checks.validate_config` gives for the same key:
    ``dataset.<key>=<value> is invalid: expected <what the rule accepts>``.
    """
    for f in dataclasses.fields(kind):
        expected = schema.broken(f, values[f.name]) if f.name in values else None
        if expected is not None:
            raise ValueError(f"dataset.{f.name}={values[f.name]!r} is invalid: expected {expected}")


def option_values(name: str) -> dict[str, Any]:
    """The values ``conf/dataset/<name>.yaml`` gives (its defaults list and ``_target_`` left out)."""
    path = conf_dir() / "dataset" / f"{name}.yaml"
    values = load_yaml(path)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected the keys of a dataset option, found {type(values).__name__}")
    return {k: v for k, v in values.items() if k not in ("defaults", "_target_")}


def data_options(module: type | object, given: Mapping[str, Any]) -> Any:
    """The options of a data module: an instance of its schema (``module.options``), ``given`` over its file's values.

    ``conf/dataset/<module.name>.yaml`` is read only for keys not given (Hydra gives them all). A key
    the schema does not have is a ``TypeError``, as for any constructor; a value its rule refuses is a
    ``ValueError`` naming the key, the value and what is expected.
    """
    cls = module if isinstance(module, type) else type(module)
    kind = cls.options
    names = {f.name for f in dataclasses.fields(kind)} - {"_target_"}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(
            f"{cls.__name__}() got an unexpected keyword argument {unknown[0]!r} "
            f"(its options: {', '.join(sorted(names))})"
        )
    values = {k: plain(v) for k, v in given.items()}
    if names - set(values):
        values = {**option_values(cls.name), **values}
    check_rules(kind, values)
    missing = sorted(names - set(values))
    if missing:
        raise TypeError(f"{cls.__name__}() is missing {', '.join(missing)} (not in conf/dataset/{cls.name}.yaml)")
    return kind(**{k: values[k] for k in names})


@dataclasses.dataclass(frozen=True)
class Serving:
    """How an in-memory data module serves its images (the keys :class:`rsst.config.schema.Data` and
    :class:`rsst.config.schema.FileData` share), checked by the same rules when built directly."""

    augment: bool = False
    crop_padding: int | None = None  # None: 1/8 of the image side
    loader: str = "auto"
    num_workers: int = 0
    pin_memory: bool = False
    train_subset: int | None = None
    eval_subset: int | None = None

    def __post_init__(self) -> None:
        check_rules(schema.Cifar, dataclasses.asdict(self))

    @classmethod
    def of(cls, options: Any) -> Serving:
        """The serving keys of a data module's options (those an option lacks keep their defaults)."""
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls) if hasattr(options, f.name)})
