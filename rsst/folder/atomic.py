"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

Every write failure is raised as :class:`RunIOError`, one line naming the file and what the
operating system said (read-only, no space left, over the file-size limit), never a bare
``OSError`` or a serializer's internal error.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from rsst.errors import RsstError

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)

MEANINGS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied (the folder is not writable)",
    errno.EPERM: "operation not permitted (the folder is not writable)",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than the file-size limit (ulimit -f)",
    errno.EIO: "an input/output error of the device",
}


class RunIOError(RsstError, OSError):
    """A file the run must write or read could not be; the message names it and the reason."""


def describe(exc: OSError) -> str:
    """What an OSError means for a user, in words (``errno`` name included)."""
    meaning = MEANINGS.get(exc.errno or 0, exc.strerror or str(exc))
    name = errno.errorcode.get(exc.errno or 0)
    return f"{meaning} [{name}]" if name else meaning


def io_error(action: str, path: str | Path, exc: OSError) -> RunIOError:
    err = RunIOError(exc.errno, f"cannot {action} {path}: {describe(exc)}")
    return err


def _atomic_write(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # what open() would give, not mkstemp's private 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise io_error("write", path, exc) from exc
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to memory, then an atomic write: a full disk is an error naming ``path``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write(path, buf.getvalue())


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def leftover_temporaries(folder: str | Path) -> list[Path]:
    """Temporary files an atomic write killed mid-way left in ``folder`` (not below it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file())
