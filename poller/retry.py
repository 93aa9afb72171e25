"""The one way poller waits before trying again.

Every retry loop (the failure policy, shard readers and their bookkeeping
calls, SQS receives, describes and deletes, opening a sink, restarting a
stream) backs off the same way: capped exponential with full jitter, so
replicas and shards that fail together do not retry together. The waits of
loops that read or set up (`sleep_unless`, `retry_until_stopped`) end early
when the stream is asked to stop, so shutdown never waits out a backoff. Two
deliberately do not: the failure policy, which goes on trying to commit the
batch in hand until the shutdown deadline cancels it (a graceful stop commits
what was read when it can), and a shard reader's GetRecords retry, which the
worker cancels when it stops.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Backoff:
    """Capped exponential backoff with full jitter: attempt n waits a uniform
    random time in [0, min(cap, initial * 2^(n-1))]."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None):
        self.initial = initial
        self.cap = cap
        self.rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0, self.ceiling(attempt))

    def ceiling(self, attempt: int) -> float:
        """The longest wait of attempt `attempt` (1-based); never above `cap`."""
        return min(self.cap, self.initial * 2.0 ** min(max(0, attempt - 1), 64))


class StopSignal(Protocol):
    """An `asyncio.Event`, or `AnyOf` several."""

    def is_set(self) -> bool: ...

    async def wait(self) -> object: ...


class AnyOf:
    """Set once any of its events is: e.g. shutdown, or a stop asked of one worker alone."""

    def __init__(self, *events: asyncio.Event):
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)

    async def wait(self) -> bool:
        waiters = [asyncio.ensure_future(e.wait()) for e in self.events]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return True


async def sleep_unless(stop: StopSignal | None, seconds: float) -> bool:
    """Sleep `seconds`, or less if `stop` is set meanwhile; True if it was."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def retry_until_stopped(
    stop: StopSignal | None,
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    retryable: Callable[[Exception], bool],
    on_retry: Callable[[Exception, int], None],
) -> T | None:
    """`call` until it succeeds (its result), `stop` is set (None), or it raises
    an error `retryable` refuses (raised). `on_retry(error, attempt)` logs and
    counts each failed attempt before the backoff."""
    attempt = 0
    while stop is None or not stop.is_set():
        try:
            return await call()
        except Exception as e:
            if not retryable(e):
                raise
            attempt += 1
            on_retry(e, attempt)
            if await sleep_unless(stop, backoff.delay(attempt)):
                break
    return None
