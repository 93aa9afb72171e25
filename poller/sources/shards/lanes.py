"""A shard's lanes: the processing half of a worker.

Each lane batches its queue, prepares the batch (decode, filter, map, coerce)
and commits it through its failure policy, whose `LaneCheckpointer` puts the
checkpoint rows in the same transaction.

Invariants:
- a lane commits one batch at a time, in the order its records were read; its
  next batch is taken and prepared while one commits (the commit mostly waits
  on the database, and taking the batch frees room for the reader);
- a batch prepared when the lane closes is dropped, as records still queued
  are: nothing past a commit is checkpointed, so they are read again;
- records at or below what was committed before a restart (`ResumeFloor`)
  are dropped, never written twice — a KPL aggregate cut mid-way resumes at
  its first uncommitted user record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from poller.config import StreamConfig
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.processing.batching import take_batch
from poller.processing.failures import Decision, FailurePolicy, Unit, count_failures
from poller.processing.pipeline import Preparer
from poller.records import Position, Record, RecordError, seq_int
from poller.sink_api import FailureDestination, Sink
from poller.sources.shards.api import ShardApi, ShardInfo
from poller.sources.shards.checkpointer import LaneCheckpointer, ShardProgress
from poller.sources.shards.options import ShardOptions
from poller.sources.shards.positions import ResumeFloor
from poller.sources.shards.publisher import RecordsPublisher

log = get_logger()


@dataclass(slots=True)
class StreamParts:
    """What every worker of a stream shares."""

    name: str
    cfg: StreamConfig
    api: ShardApi
    opts: ShardOptions
    sink: Sink
    destination: FailureDestination
    preparer: Preparer
    publisher: Callable[[ShardInfo], RecordsPublisher]
    on_health: Callable[[bool], None]
    on_checkpointed: Callable[[str], None]
    on_end: Callable[[str, tuple[str, ...]], None]


def record_ends(units: list[Unit]) -> set[int]:
    """Indices of the units that complete a source record (its last decoded part)."""
    ends: set[int] = set()
    last = len(units) - 1
    for i, u in enumerate(units):
        if i == last or units[i + 1].source.sequence_number != u.source.sequence_number:
            ends.add(u.index)
    return ends


class Lane:
    """One lane of one shard."""

    def __init__(
        self,
        parts: StreamParts,
        shard_id: str,
        index: int,
        queue_size: int,
        progress: ShardProgress,
        floor: ResumeFloor | None,
    ):
        self.p = parts
        self.shard_id = shard_id
        self.index = index
        self.queue: asyncio.Queue[Record] = asyncio.Queue(queue_size)
        self.progress = progress
        self.floor = floor
        self.checkpointer = LaneCheckpointer(progress, index, parts.destination.in_transaction)
        self.policy = self._policy()
        self.task: asyncio.Task[None] | None = None
        self.busy = False
        self.closing = False
        self.past_floor = False
        name = parts.name
        self._written = metrics.RECORDS.labels(name, "written")
        self._duplicate = metrics.RECORDS.labels(name, "duplicate")
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        self._iterator_age = metrics.ITERATOR_AGE.labels(name, shard_id)

    def _policy(self) -> FailurePolicy:
        max_attempts = self.p.cfg.retry.max_attempts

        def decide(u: Unit, _: RecordError) -> Decision:
            return "fail" if u.attempts >= max_attempts else "retry"

        return FailurePolicy(
            self.p.name,
            self.p.cfg.retry,
            self.p.sink,
            self.p.destination,
            build_tx=self.checkpointer.build_tx,
            decide=decide,
            on_health=self.p.on_health,
            shard=self.shard_id,
            checkpointer=self.checkpointer,
        )

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name=f"{self.p.name}-{self.shard_id}-{self.index}")

    async def put_all(self, records: list[Record]) -> None:
        """Put in order; wait for room only when the prefetch bound is reached."""
        queue = self.queue
        room = queue.maxsize - queue.qsize()
        put_nowait = queue.put_nowait
        for r in records[:room]:
            put_nowait(r)
        for r in records[room:]:
            await queue.put(r)

    async def _loop(self) -> None:
        structlog.contextvars.bind_contextvars(shard=self.shard_id, lane=self.index)
        upcoming = asyncio.create_task(self._next_batch())
        try:
            while not self.closing:
                batch = await upcoming
                upcoming = asyncio.create_task(self._next_batch())
                if batch is None:
                    continue
                units, ends = batch
                self.busy = True
                # Failure-policy logs of this batch then name where it starts.
                structlog.contextvars.bind_contextvars(sequence=units[0].source.sequence_number)
                try:
                    await self._commit(units, ends)
                finally:
                    self.busy = False
        finally:
            upcoming.cancel()
            for error in await asyncio.gather(upcoming, return_exceptions=True):
                if isinstance(error, Exception):
                    log.error("preparing a batch failed while the lane stopped", error=str(error))

    async def _next_batch(self) -> tuple[list[Unit], set[int]] | None:
        """The next batch as units and the indexes that end a source record;
        None when every record of it was committed before a restart."""
        opts = self.p.opts
        records = await take_batch(self.queue, opts.batch_size, opts.batch_window)
        # Logs written while preparing name where this batch starts.
        structlog.contextvars.bind_contextvars(sequence=records[0].sequence_number)
        cut: dict[str, tuple[int, int]] = {}
        if self.floor is not None and not self.past_floor:
            records, cut = self._below_floor(records)
            if not records:
                return None
        units = self.p.preparer.stream_units(records)
        ends = record_ends(units)
        if cut:
            units = self._drop_covered(units, ends, cut)
        return (units, ends) if units else None

    async def _commit(self, units: list[Unit], ends: set[int]) -> None:
        size = self.p.opts.batch_size
        for start in range(0, len(units), size):
            chunk = units[start : start + size]
            self.checkpointer.ends = ends
            await self.policy.commit(chunk)
            self._account(chunk)

    def _below_floor(self, records: list[Record]) -> tuple[list[Record], dict[str, tuple[int, int]]]:
        """Drop records committed before a restart; note the ones committed in part
        (a KPL aggregate cut mid-way) so their committed units are dropped after decoding."""
        floor = self.floor
        assert floor is not None
        kept: list[Record] = []
        cut: dict[str, tuple[int, int]] = {}
        covered: list[tuple[str, Position]] = []
        for r in records:
            key = floor.covering(r)
            number = seq_int(r.sequence_number)
            if key is None or number > key[0]:
                kept.append(r)
            elif number < key[0]:
                covered.append((r.sequence_number, r.position))
            else:
                cut[r.sequence_number] = key
                kept.append(r)
        if seq_int(records[-1].sequence_number) > floor.top:
            self.past_floor = True
        self._duplicate.inc(len(covered))
        self.progress.complete(covered)
        return kept, cut

    def _drop_covered(self, units: list[Unit], ends: set[int], cut: dict[str, tuple[int, int]]) -> list[Unit]:
        kept: list[Unit] = []
        covered: list[tuple[str, Position]] = []
        for u in units:
            key = cut.get(u.source.sequence_number)
            if key is not None and u.token.key() <= key:
                if u.index in ends:
                    covered.append((u.source.sequence_number, u.token))
                continue
            kept.append(u)
        self._duplicate.inc(len(units) - len(kept))
        self.progress.complete(covered)
        return kept

    def _account(self, chunk: list[Unit]) -> None:
        written = 0
        for u in chunk:
            if u.failure is None and not u.filtered:
                written += 1
        self._written.inc(written)
        self._batch_size.observe(len(chunk))
        count_failures(self.p.name, self.p.destination, chunk)
        arrival = chunk[-1].source.arrival_time
        if arrival:
            self._iterator_age.set(max(0.0, time.time() - arrival))
