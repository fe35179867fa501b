"""Reading a torch file someone may have handed over: tensors and plain containers only, never code.

Every ``.pt`` the project reads (pretrained weights, a round's weights and masks, an exported
network) goes through :func:`load_tensors`, i.e. ``torch.load(weights_only=True)``, and any
failure becomes one line that names the file and why. Every YAML file goes through :func:`load_yaml`.

What a received file holds costs what its size says only once it is checked: a tensor's declared
shape may be far larger than what is stored (a stride-0 view), and a config's strings may be
``${}`` interpolations that double each other when resolved. :func:`dense_storage` and
:func:`interpolation_in` say so without touching the values; :func:`nesting_depth` bounds the
recursion that building a tree from the data would need. torch is imported only to load a tensor
file, so the config layer can use the checks without it.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsst.errors import RsstError

if TYPE_CHECKING:
    import torch


class UnloadableFile(RsstError, ValueError):
    """A torch file that is empty, truncated, not a torch file, or that would run code; the message names it."""


def _first_sentence(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = line.split(". ")[0].rstrip(".")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_archive(path: Path, max_bytes: int | None = None) -> None:
    """Refuse a torch zip archive whose entries would inflate, before anything is read from it.

    ``torch.save`` stores every entry uncompressed, so what a load builds is bounded by the file's size
    on disk. A compressed entry (a 1 MB file can declare a 1 GiB tensor) is refused, as is an archive
    whose entries add up to more than ``max_bytes`` when the caller knows the most it can hold.
    A file that is not a zip archive (torch's legacy format, or garbage) is left to ``torch.load``.
    """
    if not zipfile.is_zipfile(path):
        return
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise UnloadableFile(
                    f"{path}: its entry {info.filename!r} is compressed ({info.compress_size} bytes declaring "
                    f"{info.file_size}), which torch.save never writes; refused before inflating it"
                )
            total += info.file_size
    if max_bytes is not None and total > max_bytes:
        raise UnloadableFile(f"{path}: holds {total} bytes, more than the {max_bytes} this file can need; refused")


def load_tensors(path: str | Path, *, max_bytes: int | None = None, mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; :class:`UnloadableFile` for anything it refuses.

    The archive is looked at first (:func:`check_archive`), so a file that would inflate is refused before it
    is read. A missing file raises ``FileNotFoundError`` unchanged, so callers can say how to rebuild it.
    """
    import torch  # noqa: PLC0415  (only where a tensor file is read)

    path = Path(path)
    try:
        check_archive(path, max_bytes)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (FileNotFoundError, UnloadableFile):
        raise
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL (\S+)", str(exc))
        if named:
            reason = (
                f"it names {named.group(1)}, code or a pickled object rather than tensors, "
                "and such a file is never loaded"
            )
        else:
            reason = f"not a file torch.save wrote, or truncated ({type(exc).__name__}: {_first_sentence(str(exc))})"
    except Exception as exc:  # a truncated or garbled file fails in many ways; all mean "unreadable"
        empty = path.is_file() and path.stat().st_size == 0
        reason = (
            "the file is empty"
            if empty
            else f"not a file torch.save wrote, or truncated ({type(exc).__name__}: {_first_sentence(str(exc))})"
        )
    raise UnloadableFile(f"{path}: {reason}")


def dense_storage(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s storage holds each of its elements once, as ``torch.save`` of a real tensor stores it.

    A view with a zero or overlapping stride (``torch.zeros(1).expand(10**12)``) declares far more
    elements than it stores; any arithmetic on it (``.float()``, ``.bool()``, a comparison) would
    allocate all of them. Read from the tensor's metadata only.
    """
    return tensor.untyped_storage().nbytes() >= tensor.numel() * tensor.element_size()


# A config.yaml the platform writes (``OmegaConf.to_yaml`` of a plain container) is a few KB, holds no
# anchors or aliases and is 4 levels deep. A received one may: nested aliases expand ninefold per level when
# the tree is built, and OmegaConf builds a tree recursively (150 levels exceed Python's recursion limit).
MAX_YAML_BYTES = 1 << 20
MAX_DEPTH = 32


class UnreadableYaml(RsstError, ValueError):
    """A YAML file that is too large, too deeply nested, not YAML, or uses anchors or aliases; the message names it."""


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        yield from ((str(k), v) for k, v in node.items())
    elif isinstance(node, (list, tuple)):
        yield from ((f"[{i}]", v) for i, v in enumerate(node))


def nesting_depth(data: Any, limit: int = MAX_DEPTH) -> int:
    """How many levels of dicts and lists ``data`` nests (a flat dict: 1), counted without recursion and only up
    to ``limit + 1``."""
    containers = (dict, list, tuple)
    level = [data] if isinstance(data, containers) else []
    deepest = 0
    while level and deepest <= limit:
        deepest += 1
        level = [child for node in level for _, child in _children(node) if isinstance(child, containers)]
    return deepest


def interpolation_in(data: Any, prefix: str = "") -> tuple[str, str] | None:
    """``(dotted key, text)`` of the first key or string value in ``data`` that holds ``${``, or None.

    OmegaConf reads such a string as an interpolation and resolves it when the config is used;
    a config the platform writes is resolved already, so it holds none. Walked without recursion.
    """
    todo: list[tuple[str, Any]] = [(prefix, data)]
    while todo:
        key, node = todo.pop()
        if isinstance(node, str) and "${" in node:
            return key, node
        for name, child in _children(node):
            where = f"{key}{name}" if name.startswith("[") else f"{key}.{name}" if key else name
            if "${" in name:
                return where, name
            todo.append((where, child))
    return None


def _no_alias_loader() -> type:
    import yaml  # noqa: PLC0415  (PyYAML comes with omegaconf)

    class NoAliasLoader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that refuses an alias or an anchor where it first meets one, before expanding."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                kind = "an alias" if isinstance(event, yaml.AliasEvent) else "an anchor"
                raise yaml.YAMLError(
                    f"it uses {kind} (&/*, line {event.start_mark.line + 1}), which the platform never writes"
                )
            return super().compose_node(parent, index)

    return NoAliasLoader


def load_yaml(path: str | Path) -> Any:
    """The YAML in ``path``, with safe types only, no anchors or aliases and at most :data:`MAX_DEPTH` levels
    deep; :class:`UnreadableYaml` otherwise.

    A missing file raises ``FileNotFoundError`` unchanged.
    """
    import yaml  # noqa: PLC0415

    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(MAX_YAML_BYTES + 1)
    if len(raw) > MAX_YAML_BYTES:
        raise UnreadableYaml(f"{path}: larger than {MAX_YAML_BYTES} bytes, which no config the platform writes is")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_no_alias_loader())  # noqa: S506  (a SafeLoader subclass)
    except UnicodeDecodeError as exc:
        raise UnreadableYaml(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise UnreadableYaml(f"{path}: {_first_sentence(str(exc))}") from None
    except RecursionError:
        raise UnreadableYaml(f"{path}: nested too deeply to be a config") from None
    except ValueError as exc:  # a value the safe types refuse to build, e.g. an integer of over 4300 digits
        raise UnreadableYaml(f"{path}: {_first_sentence(str(exc))}") from None
    if nesting_depth(data) > MAX_DEPTH:
        raise UnreadableYaml(
            f"{path}: nested more than {MAX_DEPTH} levels deep, which no config the platform writes is"
        )
    return data
