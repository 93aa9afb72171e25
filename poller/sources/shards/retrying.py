"""Calls that must succeed before a stream can go on (listing shards, opening
an iterator, storing a checkpoint), retried on transient errors for as long
as it takes, with capped exponential backoff; they give up only on a stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.processing.failures import Backoff
from poller.records import TransientError
from poller.sources.shards.api import Throttled

log = get_logger()

T = TypeVar("T")

# Reading and listing retry for as long as it takes; these bound one wait.
BACKOFF_INITIAL = 0.2
BACKOFF_CAP = 10.0


class StopSignal(Protocol):
    """An `asyncio.Event`, or `AnyOf` several."""

    def is_set(self) -> bool: ...

    async def wait(self) -> object: ...


class AnyOf:
    """Set once any of its events is: for a worker, shutdown or a stop asked of it alone."""

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


async def retrying(
    stop: StopSignal, stream: str, what: str, call: Callable[[], Awaitable[T]], **context: Any
) -> T | None:
    """Call until it succeeds, backing off on transient errors; None once `stop` is set."""
    backoff = Backoff(BACKOFF_INITIAL, BACKOFF_CAP)
    attempt = 0
    while not stop.is_set():
        try:
            return await call()
        except TransientError as e:
            attempt += 1
            if isinstance(e, Throttled):
                metrics.THROTTLES.labels(stream, e.operation).inc()
            (log.warning if attempt < 5 else log.error)(
                f"{what} failed, retrying", stream=stream, attempt=attempt, error=str(e), **context
            )
            await sleep_unless(stop, backoff.delay(attempt))
    return None


async def sleep_unless(stop: StopSignal, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
