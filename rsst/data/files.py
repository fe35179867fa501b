"""Finding a data set on disk, downloading it when asked, and the errors that say what is missing or broken."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from rsst.errors import RsstError

log = logging.getLogger(__name__)


class DatasetError(RsstError, ValueError):
    """Data that cannot be used; the message names the file or folder and what was expected."""


class DatasetNotFoundError(DatasetError):
    """The data set's files are not where the config says; the message says where and how to get them."""


class CorruptDatasetError(DatasetError):
    """A file of the data set is truncated, unreadable or holds the wrong shapes or counts."""


def locate(
    name: str,
    candidates: Sequence[Path],
    complete: Callable[[Path], bool],
    expected_files: str,
    download: bool,
    downloader: Callable[[], None],
    url: str,
    download_root: Path,
) -> Path:
    """The first of ``candidates`` for which ``complete`` holds, downloading first when nothing is found.

    Raises :class:`DatasetNotFoundError` naming the expected path, the expected files, and how to
    get them (``dataset.download=true`` or the URL), with the downloader's error when it failed.
    """
    found = next((c for c in candidates if complete(c)), None)
    if found is not None:
        return found
    failure = None
    if download:
        log.info("downloading %s into %s", name, download_root)
        try:
            download_root.mkdir(parents=True, exist_ok=True)
            downloader()
        except Exception as exc:  # any failure of a third-party downloader is reported, with its cause
            failure = exc
        found = next((c for c in candidates if complete(c)), None)
        if found is not None:
            return found
    where = " or ".join(str(c) for c in candidates)
    message = f"{name} not found: expected {where} to hold {expected_files}. "
    if not download:
        message += f"Set dataset.download=true to fetch it, or download {url} and extract it into {download_root}."
    elif failure is not None:
        message += (
            f"dataset.download=true failed ({type(failure).__name__}: {failure}); "
            f"download {url} by hand and extract it into {download_root}."
        )
    else:
        message += f"dataset.download=true finished but the files are still missing; check {download_root}."
    raise DatasetNotFoundError(message) from failure


def check_count(found: int, expected: int, what: str, where: Path | str, keys: str) -> None:
    """Raise :class:`CorruptDatasetError` when ``found`` items differ from what the config expects."""
    if found != expected:
        raise CorruptDatasetError(
            f"{where}: {what} holds {found} images, expected {keys} = {expected}; "
            "the files are incomplete, or the expected split sizes in the config do not match them"
        )
