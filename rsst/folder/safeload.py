"""Reading a torch file someone may have handed over: tensors and plain containers only, never code.

Every ``.pt`` the project reads (pretrained weights, a round's weights and masks, an exported
network) goes through :func:`load_tensors`, i.e. ``torch.load(weights_only=True)``, and any
failure becomes one line that names the file and why.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from rsst.errors import RsstError


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


# A config.yaml the platform writes (``OmegaConf.to_yaml`` of a plain container) is a few KB and holds no
# anchors or aliases. A received one may: nested aliases expand ninefold per level when the tree is built.
MAX_YAML_BYTES = 1 << 20


class UnreadableYaml(RsstError, ValueError):
    """A YAML file that is too large, not YAML, or uses anchors or aliases; the message names it."""


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
    """The YAML in ``path``, with safe types only and no anchors or aliases; :class:`UnreadableYaml` otherwise.

    A missing file raises ``FileNotFoundError`` unchanged.
    """
    import yaml  # noqa: PLC0415

    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(MAX_YAML_BYTES + 1)
    if len(raw) > MAX_YAML_BYTES:
        raise UnreadableYaml(f"{path}: larger than {MAX_YAML_BYTES} bytes, which no config the platform writes is")
    try:
        return yaml.load(raw.decode("utf-8"), Loader=_no_alias_loader())  # noqa: S506  (a SafeLoader subclass)
    except UnicodeDecodeError as exc:
        raise UnreadableYaml(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise UnreadableYaml(f"{path}: {_first_sentence(str(exc))}") from None
    except RecursionError:
        raise UnreadableYaml(f"{path}: nested too deeply to be a config") from None
