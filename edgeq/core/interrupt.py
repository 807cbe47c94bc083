"""Ctrl-C and SIGTERM always stop a run.

The handler raises `Interrupted` at once and also remembers the signal: TensorFlow can swallow a
KeyboardInterrupt raised inside one of its callbacks, so the run checks again at every progress line and
before the report is written (`check()`), and stops there.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


_pending: int | None = None


def _handler(signum, frame) -> None:
    global _pending
    _pending = signum
    raise Interrupted(signum)


def check() -> None:
    """Raise Interrupted if a signal arrived, even one whose first exception was swallowed."""
    if _pending is not None:
        raise Interrupted(_pending)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted for the duration (main thread only); old handlers restored after."""
    global _pending
    _pending = None
    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old[s] = signal.signal(s, _handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _pending = None
