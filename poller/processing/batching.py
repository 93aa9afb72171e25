"""Gathering items into batches by size and time window."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def take_batch(
    queue: asyncio.Queue[T], size: int, window: float, flush: asyncio.Event | None = None
) -> list[T]:
    """Wait for one item, then gather more until `size` items or `window`
    seconds have passed since the first — whichever comes first. Once `flush`
    is set (shutting down) the batch ends with what it has: a long window must
    not hold a drain past its deadline."""
    batch = [await queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    while len(batch) < size:
        while len(batch) < size and not queue.empty():
            batch.append(queue.get_nowait())
        if len(batch) >= size or (flush is not None and flush.is_set()):
            break
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        if flush is not None:
            remaining = min(remaining, _FLUSH_CHECK)
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            continue  # the loop checks the deadline and `flush`
    return batch


_FLUSH_CHECK = 0.1  # seconds: how soon a batch still in its window sees a flush
