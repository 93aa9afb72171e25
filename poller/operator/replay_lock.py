"""The lock a replay through user code holds on a SQLite bookkeeping store while
the function runs, instead of the store's own write lock.

SQLite has one writer at a time: a transaction kept open while user code runs
would stop a daemon writing to the same file (its checkpoints, its processed
ids) for as long as the function takes. So the replay holds an exclusive
`flock` on a file next to the store (`<store>.replay-lock`) from the claim's
check to the claim's commit: a second replay waits there, as it would have on
the write lock, and finds the record claimed; the daemon never takes it. The
kernel releases it when the process dies, so a crashed replay never leaves it
held.

The wait is bounded: a replay holds it for one record's delivery (at most the
sink's `timeout_seconds`) and two short transactions.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from poller.operator.errors import OperatorError

_POLL_SECONDS = 0.1


def lock_path(store_path: str) -> Path:
    return Path(f"{store_path}.replay-lock")


@asynccontextmanager
async def replay_lock(store_path: str, wait_seconds: float) -> AsyncIterator[None]:
    """Held exclusively inside the block; OperatorError after `wait_seconds` waiting for it."""
    path = lock_path(store_path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        # Polled without blocking, so that the wait stays in this task (cancellable) and bounded.
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                raise OperatorError(
                    f"another replay has held {path} for more than {wait_seconds:g} s; "
                    "try again when it is done"
                )
            await asyncio.sleep(_POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # releases the lock


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True
