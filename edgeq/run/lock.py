"""One run at a time per run directory."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from edgeq.core.errors import EdgeqError

LOCK_NAME = ".edgeq.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, wait: bool = True):
    """One run at a time per run directory: flock on run_dir/.edgeq.lock (released by the kernel if the holder
    dies, so a stale lock never blocks); the holder's pid is written in it for the message."""
    import fcntl
    import sys

    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            if not wait:
                raise EdgeqError(f"{run_dir}: another edgeq run (pid {holder}) is writing this run directory; "
                                 "wait for it to finish, or choose another --out") from None
            print(f"edgeq: {run_dir} is in use by another edgeq run (pid {holder}); waiting for it to finish "
                  "(--no-wait refuses instead)", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
