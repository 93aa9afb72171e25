"""Calls that must succeed before a stream can go on (listing shards, opening
an iterator, storing a checkpoint), retried on transient errors for as long
as it takes, with capped exponential backoff; they give up only on a stop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.records import TransientError
from poller.retry import Backoff, StopSignal, retry_until_stopped
from poller.sources.shards.api import Throttled

log = get_logger()

T = TypeVar("T")

# Reading and listing retry for as long as it takes; these bound one wait.
BACKOFF_INITIAL = 0.2
BACKOFF_CAP = 10.0


async def retrying(
    stop: StopSignal, stream: str, what: str, call: Callable[[], Awaitable[T]], **context: Any
) -> T | None:
    """Call until it succeeds, backing off on transient errors; None once `stop` is set."""

    def failed(e: Exception, attempt: int) -> None:
        if isinstance(e, Throttled):
            metrics.THROTTLES.labels(stream, e.operation).inc()
        (log.warning if attempt < 5 else log.error)(
            f"{what} failed, retrying", stream=stream, attempt=attempt, error=str(e), **context
        )

    return await retry_until_stopped(
        stop,
        call,
        Backoff(BACKOFF_INITIAL, BACKOFF_CAP),
        retryable=lambda e: isinstance(e, TransientError),
        on_retry=failed,
    )
