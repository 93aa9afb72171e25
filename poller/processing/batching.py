"""Gathering items into batches by size and time window."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def take_batch(queue: asyncio.Queue[T], size: int, window: float) -> list[T]:
    """Wait for one item, then gather more until `size` items or `window`
    seconds have passed since the first — whichever comes first."""
    batch = [await queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    while len(batch) < size:
        while len(batch) < size and not queue.empty():
            batch.append(queue.get_nowait())
        if len(batch) >= size:
            break
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return batch
