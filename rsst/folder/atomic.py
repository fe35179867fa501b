"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

The temporary file is ``.<name>.rsst-tmp-<pid>-<16 hex digits>`` (:func:`rsst.folder.layout.temp_name`),
created exclusively and never through a link; the rename replaces the target's directory entry, so a
symbolic link standing at the target's name is replaced, and the file it points to is left as it was.

Every write failure is raised as :class:`RunIOError`, one line naming the file and what the
operating system said (read-only, no space left, over the file-size limit), never a bare
``OSError`` or a serializer's internal error.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rsst.errors import RsstError
from rsst.folder.layout import temp_name

MEANINGS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied (the folder is not writable)",
    errno.EPERM: "operation not permitted (the folder is not writable)",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than the file-size limit (ulimit -f)",
    errno.EIO: "an input/output error of the device",
    errno.ELOOP: "it is a symbolic link, and a run folder's files are never opened through one",
}
NOT_REGULAR = "it is not a regular file"


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


def open_no_follow(path: str | Path, flags: int, action: str, mode: int = 0o666) -> int:
    """``os.open(path, flags | O_NOFOLLOW)`` of a regular file; :class:`RunIOError` names a link or anything else.

    Opened without blocking (a FIFO put in a file's place cannot stall the run); ``action`` says what
    the error message calls the opening ("lock", "write").
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise io_error(action, path, exc) from exc
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError as exc:
        os.close(fd)
        raise io_error(action, path, exc) from exc
    if not regular:
        os.close(fd)
        raise RunIOError(errno.EINVAL, f"cannot {action} {path}: {NOT_REGULAR}")
    os.set_blocking(fd, True)
    return fd


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside ``path`` (created exclusively, never through a link)."""
    for _ in range(100):
        tmp = path.parent / temp_name(path.name)
        try:  # the mode open() gives (0o666 less the umask), not a private 0600
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """``write(f)`` into a temporary file beside ``path``, synced, then renamed over ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
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


class _KeepsWriteError:
    """The file ``torch.save`` writes to, keeping the ``OSError`` of a failed write: torch's zip writer
    reports that failure as its own ``RuntimeError``, without the reason."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` streamed into the temporary file (no second copy of the file in memory), then renamed
    over ``path``: a full disk is an error naming ``path`` and the reason."""
    import torch  # noqa: PLC0415  (torch only where a tensor file is written: the lock and the layout need none)

    def save(f: IO[bytes]) -> None:
        out = _KeepsWriteError(f)
        try:
            torch.save(obj, out)
        except Exception as exc:
            if out.error is None:
                raise
            raise out.error from exc

    _atomic_write(path, save)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# A temporary of an atomic write lives for as long as one write takes; one untouched for this long, whose writer
# is not a process of this machine, was left by a writer that was killed.
STALE_AFTER_S = 60.0


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or a number no process has: keep the file, never guess
    return True


def is_stale(path: Path, pid: int, min_age_s: float = STALE_AFTER_S) -> bool:
    """Whether the temporary ``path``, written by process ``pid``, was left by a killed writer: ``pid`` is gone
    from this machine and the file has not changed for ``min_age_s`` (a writer on another machine sharing the
    folder has no process here, but would not leave its temporary untouched that long)."""
    if pid == os.getpid() or _running(pid):
        return False
    try:
        return time.time() - path.lstat().st_mtime >= min_age_s
    except FileNotFoundError:
        return False
