"""The launcher's preemption signal is deferred until the run's state is saved."""

from __future__ import annotations

import os
import signal

from rsst.loop.preemption import graceful_stop


def test_the_signal_is_deferred_until_check_then_handed_to_the_launcher_handler():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with graceful_stop() as stop:
            assert stop is not None
            os.kill(os.getpid(), signal.SIGUSR2)
            assert calls == [] and stop.pending is not None
            stop.check()
            assert calls == [signal.SIGUSR2]
        os.kill(os.getpid(), signal.SIGUSR2)  # the launcher's handler is back in place afterwards
        assert calls == [signal.SIGUSR2, signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_without_a_launcher_handler_nothing_is_wrapped():
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        with graceful_stop() as stop:
            assert stop is None
            assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, previous)
