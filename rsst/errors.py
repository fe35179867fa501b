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


# What an error line shows of one value: a word (a run of characters without a space) longer than LONG_WORD is
# cut to its first HEAD and last TAIL characters around an ellipsis, and a line longer than LONG_LINE keeps its
# start and its end (where "expected ..." is). A value is echoed from the command line or from a received file,
# and either can be 100,000 characters long.
LONG_WORD, HEAD, TAIL = 300, 200, 60
LONG_LINE = 2000

# Ctrl-C: the exit status a shell reports (128 + SIGINT), and the line of a command stopped while it was still
# importing or composing, before a run's own handler (which names the round and epoch) was in place.
INTERRUPTED = 130
INTERRUPTED_STARTING = "interrupted while starting, before any training; the same command starts (or resumes) the run"


def printable(text: object) -> str:
    """``text`` with every character that is not printable (a newline, an escape, ...) written as its escape.

    Names and values that come from a user or a file are shown through it, so an escape sequence in a
    value cannot drive the terminal and a newline cannot inject a line into a log. A printable text is
    returned unchanged.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cut(word: str) -> str:
    if len(word) <= LONG_WORD:
        return word
    return f"{word[:HEAD]}...[{len(word) - HEAD - TAIL} characters]...{word[-TAIL:]}"


def shown(text: str) -> str:
    """``text`` as one printable line of bounded length: lines joined by spaces, non-printable characters
    escaped, a word over :data:`LONG_WORD` characters and a line over :data:`LONG_LINE` cut around an ellipsis."""
    line = printable(" ".join(part.strip() for part in str(text).splitlines() if part.strip()))
    line = " ".join(_cut(word) for word in line.split(" "))
    if len(line) > LONG_LINE:
        keep = LONG_LINE // 2
        line = f"{line[:keep]}...[{len(line) - 2 * keep} characters]...{line[-keep:]}"
    return line


def one_line(exc: BaseException) -> str:
    """The error's message on one printable line of bounded length (:func:`shown`)."""
    return shown(str(exc))
