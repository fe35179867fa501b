"""Extracting a data set's archives without writing outside the folder they go to.

A tar or zip archive may name members ``../x``, ``/etc/x``, or links pointing anywhere, and an
archive whose md5 matches the published one is still only as safe as its publisher. Every archive
the platform extracts goes through :func:`member_filter`: tarfile's ``data`` filter (no absolute
paths, nothing outside the destination, no device files or odd permissions), and no links at all
(no data set needs one). A refused member ends the extraction with :class:`UnsafeArchiveError`,
naming the archive and the member; files already written stay inside the destination.

torchvision's download and ImageNet helpers extract with ``tarfile.extractall`` and no filter, so
they run inside :func:`filtered_tar_extraction`, which makes :func:`member_filter` tarfile's
default for that time. Zip archives are checked member by member by :func:`check_zip` before
:func:`extract` unpacks them.
"""

from __future__ import annotations

import contextlib
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from rsst.data.files import CorruptDatasetError

_default = threading.Lock()


class UnsafeArchiveError(CorruptDatasetError):
    """An archive member that would land outside the destination, or a link."""


def member_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's ``data`` filter, and no symbolic or hard links: :class:`UnsafeArchiveError` for anything else."""
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"refuses the archive member {member.name!r}: a link (to {member.linkname!r})")
    if member.name.startswith(("/", "\\")):  # tarfile's filter would strip the slash; a data set never has one
        raise UnsafeArchiveError(f"refuses the archive member {member.name!r}: an absolute path")
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"refuses the archive member {member.name!r}: {exc}") from None


@contextlib.contextmanager
def filtered_tar_extraction() -> Iterator[None]:
    """Within the block, every ``TarFile.extractall`` without a filter of its own uses :func:`member_filter`."""
    with _default:
        previous = tarfile.TarFile.extraction_filter
        tarfile.TarFile.extraction_filter = staticmethod(member_filter)
        try:
            yield
        finally:
            tarfile.TarFile.extraction_filter = previous


def check_zip(path: Path) -> None:
    """:class:`UnsafeArchiveError` unless every member of zip ``path`` is a relative path inside it and no link."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
                raise UnsafeArchiveError(f"{path}: refuses the archive member {name!r}: a path outside the folder")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeArchiveError(f"{path}: refuses the archive member {name!r}: a link")


def extract(path: str | Path, dest: str | Path) -> None:
    """Unpack tar (any compression) or zip ``path`` into ``dest`` with the checks above."""
    path, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(path):
        check_zip(path)
        with zipfile.ZipFile(path) as archive:
            archive.extractall(dest)
        return
    try:
        with tarfile.open(path) as archive:
            archive.extractall(dest, filter=member_filter)
    except UnsafeArchiveError as exc:
        raise UnsafeArchiveError(f"{path}: {exc}") from None
    except tarfile.TarError as exc:
        raise CorruptDatasetError(f"{path}: not a readable tar or zip archive ({exc})") from exc
