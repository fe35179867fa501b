"""Agreement between the processes of one run: a step that fails on one rank stops every rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rsst.errors import RsstError
from rsst.parallel import dist
from rsst.parallel.dist import DistEnv


class PeerFailed(RsstError, RuntimeError):
    """Another process of a multi-process run failed (its own error is in its output); this one stops too."""


def together(env: DistEnv, action: Callable[[], Any]) -> Any:
    """``action()`` on every rank; if it raises on any rank, every rank stops (the failing one with its error).

    Used before the collectives that would otherwise wait forever for a rank that failed.
    """
    failure: BaseException | None = None
    try:
        result = action()
    except Exception as exc:  # re-raised below, after the ranks agree
        failure, result = exc, None
    if env.is_distributed and dist.any_rank(failure is not None) and failure is None:
        raise PeerFailed(f"rank {env.rank}: another process of this run failed; its error is in its output")
    if failure is not None:
        raise failure
    return result
