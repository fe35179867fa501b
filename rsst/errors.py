"""The platform's user-facing errors: one base class, :class:`RsstError`.

Every error a user can cause or fix (a bad config value, a missing or refused file, a folder in
use, a full disk) derives from it, beside the built-in type it has always been (``ValueError``,
``RuntimeError``, ``OSError``), so both ``except RsstError`` and the older ``except ValueError``
catch it. The entry points (``launch.py`` / ``rsst-train``, ``rsst.report``, ``rsst.export``)
catch ``RsstError`` alone and print its message on one line to stderr, exit status 2; anything
else is a bug and keeps its traceback.

Imports nothing but the standard library, so any layer (models included) may raise these.
"""

from __future__ import annotations


class RsstError(Exception):
    """A user's mistake or a refused file; the message names the key or file, the value and what was expected.

    ``launch.py`` and the commands print the message on one line to stderr and exit 2.
    """


class ConfigError(RsstError, ValueError):
    """A config value that cannot run; the message names the key, the value and what is allowed."""


def one_line(exc: BaseException) -> str:
    """The error's message on one line (a multi-line message has its lines joined by spaces)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
