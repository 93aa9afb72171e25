"""The reader of one shard, behind one interface.

A publisher yields what a shard holds as `ReadResult`s, in order, from where
it is told to start until the shard ends (the last result has no next
iterator and names the children). The worker does not know how records are
read: `PollingPublisher` is the GetRecords loop; a fan-out publisher
(SubscribeToShard) yields the same results to the same worker.

Invariants of `PollingPublisher`:
- at most one GetRecords per `min_read_interval`; again at once after a full
  response or while `MillisBehindLatest > 0`, else after `idle_poll_seconds`,
  doubling while the shard stays empty up to `max_idle_poll_seconds`;
- throttling and other transient errors back off (capped exponential, full
  jitter) and are retried for as long as it takes; each call is counted in
  `poller_get_records_calls_total`, refused ones too (that is the rate AWS limits);
- an expired iterator is reopened where the worker says reading stopped
  (AFTER_SEQUENCE_NUMBER of the last record read), never at LATEST again;
- the next call is made only once the worker has taken the previous result:
  a worker whose lanes are full holds the reader back (the prefetch bound).
`ShardStopped` from the adapter ends the iteration by propagating to the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.records import TransientError
from poller.retry import Backoff
from poller.sources.shards.api import IteratorExpired, ReadResult, ShardApi, StartAt, Throttled
from poller.sources.shards.options import ShardOptions
from poller.sources.shards.retrying import BACKOFF_CAP, BACKOFF_INITIAL, retrying

log = get_logger()


class RecordsPublisher(Protocol):
    """Reads one shard for its worker."""

    def results(self, start: StartAt, resume: Callable[[], StartAt]) -> AsyncGenerator[ReadResult, None]:
        """What the shard holds from `start` to its end. `resume` says where to
        reopen after the position was lost (an expired iterator, a new subscription)."""
        ...


class PollingPublisher:
    """GetRecords in a loop, paced per shard (see the module docstring)."""

    def __init__(self, api: ShardApi, stream: str, shard_id: str, opts: ShardOptions):
        self.api = api
        self.stream = stream
        self.shard_id = shard_id
        self.opts = opts
        self._calls = metrics.GET_RECORDS.labels(stream, shard_id)

    async def _open(self, start: StartAt) -> str:
        never = asyncio.Event()  # the reader is cancelled on stop, not asked
        iterator = await retrying(
            never,
            self.stream,
            "GetShardIterator",
            lambda: self.api.iterator(self.shard_id, start.kind, start.sequence_number, start.timestamp),
            shard=self.shard_id,
        )
        assert iterator is not None
        return iterator

    async def results(
        self, start: StartAt, resume: Callable[[], StartAt]
    ) -> AsyncGenerator[ReadResult, None]:
        opts = self.opts
        limit = opts.max_records_per_call
        loop = asyncio.get_running_loop()
        backoff = Backoff(BACKOFF_INITIAL, BACKOFF_CAP)
        attempt = 0
        iterator = await self._open(start)
        next_call = 0.0
        empty_reads = 0
        while True:
            wait = next_call - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            next_call = loop.time() + opts.min_read_interval
            self._calls.inc()
            try:
                result = await self.api.read(iterator, limit)
            except IteratorExpired:
                at = resume()
                log.info(
                    "shard iterator expired; reopening",
                    stream=self.stream,
                    at=at.kind,
                    sequence=at.sequence_number,
                )
                iterator = await self._open(at)
                continue
            except TransientError as e:
                attempt += 1
                self._transient(e, attempt)
                await asyncio.sleep(backoff.delay(attempt))
                continue
            attempt = 0
            yield result
            if result.next_iterator is None:
                return
            iterator = result.next_iterator
            if len(result.records) < limit and not result.millis_behind:
                # Each GetRecords costs ~0.6 ms of client CPU: a shard that stays
                # empty backs off to max_idle_poll, one with records polls at idle_poll.
                empty_reads = 0 if result.records else empty_reads + 1
                idle = opts.idle_poll * 2 ** min(max(empty_reads - 1, 0), 16)
                await asyncio.sleep(min(idle, opts.max_idle_poll))

    def _transient(self, e: TransientError, attempt: int) -> None:
        if isinstance(e, Throttled):
            metrics.THROTTLES.labels(self.stream, e.operation).inc()
            if attempt < 5:
                return
        (log.warning if attempt < 5 else log.error)(
            "reading shard failed, retrying", stream=self.stream, attempt=attempt, error=str(e)
        )
