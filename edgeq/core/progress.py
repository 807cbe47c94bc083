"""Signs of life for long steps: rich spinners and bars on a terminal, plain log lines elsewhere.

Everything printed during a run goes through `console` (`log` for one line), so log lines appear above a
live display instead of through it. EDGEQ_PROGRESS=plain|rich overrides the terminal check on stdout.
A display opened while another of ours is live degrades to plain lines (one live display at a time).
TensorFlow is imported only when a Keras callback is asked for.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from rich.console import Console

from edgeq.core.tfcompat import keras

console = Console(stderr=False)
PLAIN_MIN_INTERVAL = 2.0  # seconds between two plain progress lines of one loop (tests set 0)
PLAIN_UNKNOWN_INTERVAL = 10.0  # ... of a loop whose length is unknown
T = TypeVar("T")
_live = 0  # our live displays now shown (0 or 1)
_lock = threading.Lock()


def log(msg: str) -> None:
    """One line, above the live display if one is shown; no markup, never wrapped."""
    console.print(msg, markup=False, highlight=False, emoji=False, soft_wrap=True)


def _rich() -> bool:
    """Draw live displays now: a terminal (or EDGEQ_PROGRESS=rich) and none of ours already shown."""
    mode = os.environ.get("EDGEQ_PROGRESS", "").strip().lower()
    if mode not in ("plain", "rich"):
        try:
            mode = "rich" if sys.stdout.isatty() else "plain"
        except (AttributeError, ValueError):
            mode = "plain"
    return mode == "rich" and _live == 0


def _start(label: str, total: float | None, *columns, spin: bool = False):
    """A started transient rich Progress with one task, or (None, None): plain lines instead."""
    global _live
    from rich.errors import LiveError
    from rich.progress import Progress, SpinnerColumn, TextColumn

    with _lock:
        if not _rich():
            return None, None
        lead = [SpinnerColumn()] if spin else []
        p = Progress(*lead, TextColumn("{task.description}", markup=False), *columns, console=console,
                     transient=True)
        try:
            p.start()
        except LiveError:
            return None, None
        _live += 1
    return p, p.add_task(label, total=total, status="")


def _stop(p) -> None:
    global _live
    if p is not None:
        p.stop()
        with _lock:
            _live -= 1


def _failed(e: BaseException) -> str:
    return "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"


@contextmanager
def spinner(label: str) -> Iterator[None]:
    """A spinner with elapsed seconds around a step that reports no progress of its own."""
    from rich.progress import TimeElapsedColumn

    t = time.perf_counter()
    p, _ = _start(label, None, TimeElapsedColumn(), spin=True)
    if p is None:
        log(f"{label} ...")
    try:
        yield
    except BaseException as e:
        _stop(p)
        log(f"{label}: {_failed(e)} after {time.perf_counter() - t:.1f} s")
        raise
    _stop(p)
    log(f"{label}: done ({time.perf_counter() - t:.1f} s)")


def track(iterable: Iterable[T], total: int | None = None, label: str = "", unit: str = "") -> Iterator[T]:
    """The items of `iterable`, with a bar (count/total, elapsed, remaining) or plain lines every ~10 %."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return _track(iterable, total, label, f" {unit}" if unit else "")


def _track(iterable, total, label, unit):
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn, TimeRemainingColumn

    t = last = time.perf_counter()
    p, task = _start(label, total, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    if p is None:
        log(f"{label} ..." + (f" ({total}{unit})" if total else ""))
    n, tenth = 0, 0
    try:
        for item in iterable:
            n += 1
            yield item
            if p is not None:
                p.advance(task)
                continue
            now = time.perf_counter()
            if total:
                if n < total and n * 10 // total > tenth and now - last >= PLAIN_MIN_INTERVAL:
                    tenth, last = n * 10 // total, now
                    log(f"{label}: {n}/{total}{unit} ({100 * n // total} %, {now - t:.1f} s)")
            elif now - last >= max(PLAIN_UNKNOWN_INTERVAL, PLAIN_MIN_INTERVAL):
                last = now
                log(f"{label}: {n}{unit} ({now - t:.1f} s)")
    except BaseException as e:  # GeneratorExit: the consumer stopped early
        _stop(p)
        how = "stopped" if isinstance(e, GeneratorExit) else _failed(e)
        log(f"{label}: {how} at {n}{f'/{total}' if total else ''}{unit} after {time.perf_counter() - t:.1f} s")
        raise
    _stop(p)
    log(f"{label}: done, {n}{unit} ({time.perf_counter() - t:.1f} s)")


def keras_progress(label: str, epochs: int, steps_per_epoch: int):
    """A tf.keras Callback: a bar over all steps with epoch and latest loss/val_loss; one line per epoch.

    Call its close() in a `finally` after fit(): Keras skips on_train_end when training raises."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    def fmt(logs: dict, *keys: str) -> str:
        return ", ".join(f"{k} {float(logs[k]):.4f}" for k in keys if logs.get(k) is not None)

    class KerasProgress(keras().callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._p = self._task = None
            self._t = self._epoch_t = time.perf_counter()
            self._epoch = 0

        def on_train_begin(self, logs=None):
            self._t = time.perf_counter()
            self._p, self._task = _start(label, epochs * steps_per_epoch, BarColumn(), MofNCompleteColumn(),
                                         TextColumn("steps {task.fields[status]}", markup=False),
                                         TimeElapsedColumn(), TimeRemainingColumn())
            if self._p is None:
                log(f"{label}: {epochs} epoch(s) x {steps_per_epoch} steps ...")

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch, self._epoch_t = epoch + 1, time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if self._p is not None:
                self._p.update(self._task, advance=1,
                               status=f"epoch {self._epoch}/{epochs} " + fmt(logs or {}, "loss"))

        def on_epoch_end(self, epoch, logs=None):
            stats = fmt(logs or {}, "loss", "val_loss")
            if self._p is not None:
                self._p.update(self._task, completed=(epoch + 1) * steps_per_epoch,
                               status=f"epoch {epoch + 1}/{epochs} {stats}")
            log(f"{label}: epoch {epoch + 1}/{epochs}{', ' + stats if stats else ''} "
                f"({time.perf_counter() - self._epoch_t:.1f} s)")

        def on_train_end(self, logs=None):
            self.close()
            log(f"{label}: done, {self._epoch} epoch(s) ({time.perf_counter() - self._t:.1f} s)")

        def close(self) -> None:
            """Stop the bar (idempotent)."""
            _stop(self._p)
            self._p = None

    return KerasProgress()
