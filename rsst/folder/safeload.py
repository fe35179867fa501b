"""Reading a torch file someone may have handed over: tensors and plain containers only, never code.

Every ``.pt`` the project reads (pretrained weights, a round's weights and masks, an exported
network) goes through :func:`load_tensors`, i.e. ``torch.load(weights_only=True)``, and any
failure becomes one line that names the file and why.
"""

from __future__ import annotations

import pickle
import re
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


def load_tensors(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; :class:`UnloadableFile` for anything it refuses.

    A missing file raises ``FileNotFoundError`` unchanged, so callers can say how to rebuild it.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
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
