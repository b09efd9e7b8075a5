"""Termination signals end a run the way Ctrl-C does.

A scheduler's time limit, `timeout`, a cancelled CI job (SIGTERM) or a closed terminal (SIGHUP)
must leave what Ctrl-C leaves: the measured rows kept, the run marked `interrupted`, a resume
command printed, and no traceback.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """A termination signal arrived; handled wherever Ctrl-C is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Stopped` in the main thread. Only the first
    signal raises: the clean-up that follows (stopping workers, marking the run) must not itself
    be cut short by a supervisor that repeats the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if not raised:
            raised.append(signum)
            raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def ignore_stop_signals() -> None:
    """For worker processes: the parent handles these signals, stops the worker between messages
    and records nothing false (a worker killed mid-case would be recorded as an error)."""
    for s in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(s, signal.SIG_IGN)
