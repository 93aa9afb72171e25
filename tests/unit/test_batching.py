"""Batches end at their size, at their window, or at once when the stream stops."""

from __future__ import annotations

import asyncio
import time

import pytest

from poller.processing.batching import take_batch


def filled(n: int) -> asyncio.Queue[int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    return queue


async def test_a_batch_ends_at_its_size_and_leaves_the_rest_queued() -> None:
    queue = filled(25)
    assert await take_batch(queue, 10, 5.0) == list(range(10))
    assert queue.qsize() == 15


@pytest.mark.timing
async def test_a_batch_ends_when_its_window_has_passed() -> None:
    queue = filled(3)
    started = time.monotonic()
    assert await take_batch(queue, 100, 0.3) == [0, 1, 2]
    # Not before the window (a lower bound load cannot break); the upper bound means a
    # window that does not end (30 of them), not a slow one: load delays a timer, briefly.
    assert 0.25 <= time.monotonic() - started < 10


@pytest.mark.timing
async def test_a_stop_ends_an_open_window_at_once_and_loses_nothing() -> None:
    queue = filled(3)
    flush = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, flush.set)
    started = time.monotonic()
    batch = await take_batch(queue, 100, 60.0, flush)
    assert batch == [0, 1, 2]
    assert time.monotonic() - started < 30  # not the 60 s window (half of it: room for a loaded core)
    queue.put_nowait(3)
    assert await take_batch(queue, 100, 60.0, flush) == [3]  # already stopping: no wait at all


async def test_items_arriving_during_the_window_join_the_batch() -> None:
    queue = filled(1)
    loop = asyncio.get_running_loop()
    for i in range(1, 4):
        loop.call_later(0.05 * i, queue.put_nowait, i)
    assert await take_batch(queue, 4, 5.0, asyncio.Event()) == [0, 1, 2, 3]
