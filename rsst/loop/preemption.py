"""Deferred handling of the cluster's "time is nearly up" signal.

Under submitit, Slurm sends the job a signal (USR2, or ``$SUBMITIT_PREEMPT_SIGNAL``)
``signal_delay_s`` before its time limit; submitit's handler requeues the job and exits at
once, which would throw away the epoch in progress. While a run lasts, that handler is
wrapped: the signal only marks a request, the loop finishes the epoch, saves its checkpoint,
and then hands over to submitit's handler, which requeues the job. The requeued job re-enters
``run(cfg)`` and resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger("rsst")


def preempt_signal() -> signal.Signals:
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]


class GracefulStop:
    """Holds a pending stop request and the handler to call once the state is saved."""

    def __init__(self, signum: int, handler: Any) -> None:
        self.signum, self.handler = signum, handler
        self.pending: tuple[int, FrameType | None] | None = None

    def request(self, signum: int, frame: FrameType | None) -> None:
        log.warning(
            "received %s: finishing the epoch in progress, then saving and handing over", signal.Signals(signum).name
        )
        self.pending = (signum, frame)

    def check(self) -> None:
        """Call at a point where the checkpoint is saved: runs the wrapped handler if a signal came."""
        if self.pending is not None:
            self.hand_over()

    def hand_over(self) -> None:
        """Run the wrapped handler now (the checkpoint is saved): with the signal received, or, in a
        multi-process run where the signal reached another rank first, as if it had come here too."""
        log.warning("checkpoint saved; handing %s to the launcher", signal.Signals(self.signum).name)
        self.handler(*(self.pending or (self.signum, None)))


@contextmanager
def graceful_stop() -> Iterator[GracefulStop | None]:
    """Wrap the preemption signal's Python handler (if the launcher installed one) for the block's duration."""
    try:
        signum = preempt_signal()
        current = signal.getsignal(signum)
    except (KeyError, ValueError):  # an unknown signal name, or not in the main thread
        yield None
        return
    if not callable(current):  # no launcher handler: nothing to defer
        yield None
        return
    stop = GracefulStop(signum, current)
    signal.signal(signum, stop.request)
    try:
        yield stop
    finally:
        signal.signal(signum, current)
