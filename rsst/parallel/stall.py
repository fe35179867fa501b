"""A collective that waits past ``collective_timeout_s``: which ranks stalled, and the one line that says so.

:func:`rsst.parallel.dist.process_group` turns a backend's timeout into :class:`CollectiveTimeout`
with :func:`timeout_line`; :func:`stalled_ranks` asks the rendezvous store who is still there.
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

from rsst.errors import RsstError


class CollectiveTimeout(RsstError, RuntimeError):
    """A collective waited ``collective_timeout_s`` for a rank that never came; the message names it."""


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a backend's timeout (gloo: "Timed out waiting ...ms for recv operation")."""
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def stalled_ranks(rank: int, world_size: int, timeout_s: float) -> list[int] | None:
    """The ranks that do not answer after a timeout, asked through the rendezvous store; None if it cannot tell.

    Every rank that is still running times out in the same collective within moments of the
    others, and each sets ``rsst/alive/<rank>`` in the store; a rank whose key does not appear
    within a grace period (a tenth of the timeout, 2 to 30 s) is the one that stalled. If the
    store itself does not answer (its host is the stalled rank), there is nothing to ask: None.
    """
    grace = min(30.0, max(2.0, timeout_s / 10))
    try:
        store = dist.distributed_c10d._get_default_store()  # the group's own store (no public accessor)
        store.set_timeout(timedelta(seconds=grace))
        store.set(f"rsst/alive/{rank}", "1")
    except Exception:  # the store is gone or stalled with its host
        return None
    missing = []
    for other in range(world_size):
        if other == rank:
            continue
        try:
            store.wait([f"rsst/alive/{other}"], timedelta(seconds=grace))
        except Exception:  # not set within the grace period: this rank does not answer
            missing.append(other)
    return missing


def timeout_line(rank: int, world_size: int, timeout_s: float, stalled: list[int] | None) -> str:
    if stalled:
        who = f"rank{'s' if len(stalled) > 1 else ''} {', '.join(map(str, stalled))}"
        what = f"{who} of {world_size} stalled (stopped, or its node lost)"
    elif stalled is None:
        what = "the rank that holds the rendezvous store (rank 0) stalled, or its node was lost"
    else:
        what = "every rank answered after the timeout: a collective ran longer than the timeout"
    return (
        f"rank {rank}: a collective waited collective_timeout_s={timeout_s:g} s; {what}. "
        "The run stops; the same command resumes from the last saved epoch"
    )
