"""One writer per run folder: an exclusive POSIX lock on ``<run_dir>/.lock`` held for the whole run.

``fcntl.lockf`` takes a POSIX record lock, which the kernel drops when its process dies (so a
``kill -9`` leaves no stale lock) and which NFS (through its lock manager, or natively in v4),
Lustre (mounted with ``-o flock``) and GPFS honour across the nodes of a cluster. The file's
text names the holder (host, pid, start time) so a second process can say who has the folder.
It is opened without following a symbolic link (``O_NOFOLLOW``) and only as a regular file, so a
``.lock`` linked to a file outside the folder is refused, never truncated.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from rsst.errors import RsstError
from rsst.folder.atomic import RunIOError, io_error, open_no_follow
from rsst.folder.layout import RunFiles


class RunLockedError(RsstError, RuntimeError):
    """Another live process holds the run folder."""


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir`` exclusively, or raises :class:`RunLockedError` at once."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = RunFiles(self.run_dir).lock
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT, "lock the run folder through", 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                msg = f"{self.run_dir} is in use by another run ({holder}); wait for it, or stop it"
                raise RunLockedError(msg) from None
            raise io_error("lock", self.path, exc) from exc
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise io_error("write", self.path, exc) from exc
        self.fd = fd

    def check_free(self) -> None:
        """Raise :class:`RunLockedError` if a live process holds the folder; create, write and keep nothing.

        The run asks this before it judges a folder, so that a folder in use says so first.
        """
        try:
            fd = open_no_follow(self.path, os.O_RDWR, "lock the run folder through")
        except RunIOError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # no lock file (or no folder): nobody holds it
                return
            raise
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                msg = f"{self.run_dir} is in use by another run ({holder}); wait for it, or stop it"
                raise RunLockedError(msg) from None
            raise io_error("lock", self.path, exc) from exc
        finally:
            os.close(fd)  # the probe's lock goes with it

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with contextlib.suppress(OSError):  # the holder's name only; the lock goes with the descriptor
                os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
