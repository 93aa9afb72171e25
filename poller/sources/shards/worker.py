"""One shard's worker: reads it through a publisher into lanes, commits each
lane's batches through the failure policy, and ends it with a tombstone.

Its life, as `WorkerState`:

    INITIALIZING ──► READING ──► DRAINING ──► ENDING ──► DONE   (stop reason SHARD_END)
          │             │           │           │
          └─────────────┴─────┬─────┴───────────┘
                              ├──► STOPPED   (REQUESTED, TRIMMED, LEASE_LOST)
                              └──► FAILED    (an error: the fleet fails the stream)

- READING: the publisher's results go to the lanes, by a stable hash of the
  partition key, until the shard ends (a result with no next iterator).
- DRAINING: everything read is being committed.
- ENDING: the SHARD_END checkpoint (the tombstone) is being written.
- DONE: it is committed; the fleet may start the children. The shard's metric
  series are removed.
- STOPPED: shutdown (`REQUESTED`), the adapter (`ShardStopped`, e.g.
  `TRIMMED`) or the fleet (`request_stop`, e.g. `LEASE_LOST`) stopped it first.
  `run` returns once a lane's batch already committing has committed; records
  still queued are dropped and read again from the checkpoint next time, so
  nothing past a commit is ever checkpointed. With LEASE_LOST the shard's
  metric series are removed too: another process reads it now.
- Several replicas: every commit carries the shard lease's `Fence` (given at
  construction), which the sink checks inside the transaction. A commit it
  refuses (`Fenced`: the lease passed to another worker) stops the worker with
  LEASE_LOST and `fenced` set, so the fleet tells the coordinator; a commit
  already in flight when the fleet stops the worker for a lost lease finishes
  the same way — refused, never half-written.

Invariants: records go to lanes by crc32 of their partition key, so a key's
records commit in read order (see `lanes`); per-lane queues bound what is read
ahead (`max(batch.size, prefetch_records / N)`), and a full queue holds the
reader back; the states only move as drawn, and DONE is reached only with the
tombstone committed.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable
from contextlib import aclosing
from typing import Any

import structlog

from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.records import Checkpoint, Position, Record, ShardState
from poller.retry import AnyOf, StopSignal
from poller.sink_api import Fence, Fenced, Transaction
from poller.sources.shards.api import (
    AFTER_SEQUENCE_NUMBER,
    ReadResult,
    ShardInfo,
    ShardStopped,
    StartAt,
    StopReason,
)
from poller.sources.shards.checkpointer import ShardProgress
from poller.sources.shards.lanes import Lane, StreamParts
from poller.sources.shards.positions import ResumeFloor, lane_of
from poller.sources.shards.retrying import retrying

log = get_logger()


class WorkerState(enum.StrEnum):
    """Where a shard worker is in its life (the diagram in the module docstring)."""

    INITIALIZING = "initializing"
    READING = "reading"
    DRAINING = "draining"
    ENDING = "ending"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


_FINAL = frozenset({WorkerState.DONE, WorkerState.STOPPED, WorkerState.FAILED})
_NEXT: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.INITIALIZING: frozenset({WorkerState.READING}),
    WorkerState.READING: frozenset({WorkerState.DRAINING}),
    WorkerState.DRAINING: frozenset({WorkerState.ENDING}),
    WorkerState.ENDING: frozenset({WorkerState.DONE}),
}


def can_move(current: WorkerState, to: WorkerState) -> bool:
    """Forward one step, or from any state not yet final to STOPPED or FAILED."""
    if current in _FINAL:
        return False
    return to in _NEXT[current] or to in (WorkerState.STOPPED, WorkerState.FAILED)


class ShardWorker:
    """Reads one shard to its end (or until it is stopped) and commits what it reads."""

    def __init__(
        self,
        parts: StreamParts,
        info: ShardInfo,
        start: StartAt,
        checkpoint: Position | None = None,
        floor: ResumeFloor | None = None,
        reopen: StartAt | None = None,
        fence: Fence | None = None,
    ):
        self.p = parts
        self.info = info
        self.shard_id = info.shard_id
        self.start = start
        # Where to reopen an iterator that expired before a record was read:
        # LATEST again would skip what arrived meanwhile.
        self.reopen = reopen or start
        self.floor = floor
        self.state = WorkerState.INITIALIZING
        self.stop_reason: StopReason | None = None
        self.last_read: str | None = None
        self.child_ids: tuple[str, ...] = ()
        self.publisher = parts.publisher(info)
        opts = parts.opts
        n = opts.parallelization
        self.progress = ShardProgress(parts.name, info, n, checkpoint, parts.on_checkpointed)
        self.progress.fence = fence
        self.fenced = False  # a commit was refused: the lease is another worker's
        size = max(opts.batch_size, opts.prefetch // n)
        self.lanes = [Lane(parts, self.shard_id, i, size, self.progress, floor) for i in range(n)]
        self._asked = asyncio.Event()
        self._asked_reason = StopReason.REQUESTED
        name, shard = parts.name, info.shard_id
        self._received = metrics.RECORDS.labels(name, "received")
        self._millis_behind = metrics.MILLIS_BEHIND.labels(name, shard)
        self._iterator_age = metrics.ITERATOR_AGE.labels(name, shard)

    # -- lifecycle -----------------------------------------------------------------

    def request_stop(self, reason: StopReason = StopReason.REQUESTED) -> None:
        """Stop this worker alone (the fleet's shutdown is the `stop` given to `run`)."""
        if not self._asked.is_set():
            self._asked_reason = reason
            self._asked.set()

    def _to(self, state: WorkerState) -> None:
        assert can_move(self.state, state), f"{self.state} → {state}"
        self.state = state

    async def run(self, stop: asyncio.Event) -> StopReason:
        """Why the worker stopped: SHARD_END once the shard's tombstone is committed."""
        structlog.contextvars.bind_contextvars(shard=self.shard_id)
        stopping = AnyOf(stop, self._asked)
        await self._taken()
        for lane in self.lanes:
            lane.start()
        try:
            self._to(WorkerState.READING)
            stopped = await self._until(stop, stopping, self._read_to_end())
            if stopped is None:
                self._to(WorkerState.DRAINING)
                stopped = await self._until(stop, stopping, self.progress.drained())
            if stopped is None:
                self._to(WorkerState.ENDING)
                stopped = await self._write_end(stop, stopping)
            if stopped is None:
                self._to(WorkerState.DONE)
                self.stop_reason = StopReason.SHARD_END
            else:
                self._stopped(stopped)
            await self._close_lanes(force=False)
        except asyncio.CancelledError:
            if self.state not in _FINAL:
                self._stopped(StopReason.REQUESTED)
            await self._close_lanes(force=True)
            raise
        except BaseException:
            if self.state not in _FINAL:
                self._to(WorkerState.FAILED)
            await self._close_lanes(force=True)
            raise
        reason = self.stop_reason
        assert reason is not None
        if reason in (StopReason.SHARD_END, StopReason.LEASE_LOST):
            # This process is done with the shard: its series would otherwise stay
            # for the life of the process, one set per shard the stream ever had.
            metrics.forget_shard(self.p.name, self.shard_id)
        return reason

    async def _taken(self) -> None:
        """Under a lease just taken, the sink adopts what it keeps of the shard. If it
        cannot now (its store down), the shard's first commit does it all the same."""
        fence = self.progress.fence
        if fence is None:
            return
        try:
            await self.p.sink.shard_taken(self.p.name, self.shard_id, fence)
        except Exception as e:
            log.warning("the sink could not adopt the shard's state yet", error=f"{type(e).__name__}: {e}")

    def _stopped(self, reason: StopReason) -> None:
        self._to(WorkerState.STOPPED)
        self.stop_reason = reason

    def _reason(self, stop: asyncio.Event) -> StopReason:
        return StopReason.REQUESTED if stop.is_set() else self._asked_reason

    async def _until(self, stop: asyncio.Event, stopping: AnyOf, work: Awaitable[None]) -> StopReason | None:
        """Run `work` until it is done (None) or the worker is stopped (why); a lane
        that fails fails the shard."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.create_task(stopping.wait())
        lanes = [lane.task for lane in self.lanes if lane.task is not None]
        try:
            await asyncio.wait({task, stopper, *lanes}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for lane_task in lanes:
            if lane_task.done():
                if not lane_task.cancelled() and isinstance(lane_task.exception(), Fenced):
                    self.fenced = True
                    return StopReason.LEASE_LOST
                lane_task.result()  # raises the lane's error
                raise RuntimeError(f"lane of shard {self.shard_id} stopped unexpectedly")
        if task.cancelled():
            return self._reason(stop)
        try:
            task.result()
        except ShardStopped as e:
            log.info("shard stopped by its source", stream=self.p.name, reason=e.reason.value)
            return e.reason
        return None

    async def _close_lanes(self, force: bool) -> None:
        """Stop the lanes: idle ones at once, busy ones after their batch commits."""
        for lane in self.lanes:
            lane.closing = True
            if (force or not lane.busy) and lane.task is not None:
                lane.task.cancel()
        tasks = [lane.task for lane in self.lanes if lane.task is not None]
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Fenced):
                self.fenced = True  # a batch in flight as the lease was lost: refused whole
            elif isinstance(result, Exception):
                log.error(
                    "lane failed while stopping", stream=self.p.name, shard=self.shard_id, error=str(result)
                )

    # -- reading -------------------------------------------------------------------

    def _resume_point(self) -> StartAt:
        if self.last_read is not None:
            return StartAt(AFTER_SEQUENCE_NUMBER, self.last_read)
        return self.reopen

    async def _read_to_end(self) -> None:
        # Closed at once when reading stops, rather than whenever it is collected.
        async with aclosing(self.publisher.results(self.start, self._resume_point)) as results:
            async for result in results:
                self._take(result)
                if result.records:
                    await self._enqueue(result.records)
                if result.next_iterator is None:
                    self.child_ids = result.child_ids

    def _take(self, result: ReadResult) -> None:
        behind = result.millis_behind or 0
        if result.millis_behind is not None:
            self._millis_behind.set(behind)
        if not result.records and not behind and not self.progress.pending():
            self._iterator_age.set(0)

    async def _enqueue(self, raws: list[dict[str, Any]]) -> None:
        to_record = self.p.api.to_record
        shard_id = self.shard_id
        records = [to_record(raw, shard_id) for raw in raws]
        self._received.inc(len(records))
        self.last_read = records[-1].sequence_number
        self.progress.read([r.sequence_number for r in records])
        lanes = self.lanes
        if len(lanes) == 1:
            await lanes[0].put_all(records)
            return
        n = len(lanes)
        buckets: list[list[Record]] = [[] for _ in lanes]
        for r in records:
            buckets[lane_of(r.partition_key, n)].append(r)
        for lane, bucket in zip(lanes, buckets, strict=True):
            if bucket:
                await lane.put_all(bucket)

    async def _write_end(self, stop: asyncio.Event, stopping: StopSignal) -> StopReason | None:
        position = self.progress.written
        end = Checkpoint(
            self.p.name,
            self.shard_id,
            position.sequence_number if position is not None else None,
            position.sub_sequence if position is not None else 0,
            ShardState.SHARD_END,
            self.info.parent_ids,
        )
        tx = Transaction(stream=self.p.name, checkpoints=[end], fence=self.progress.fence)
        try:
            done = await retrying(
                stopping, self.p.name, "SHARD_END checkpoint", lambda: self.p.sink.commit(tx)
            )
        except Fenced:
            self.fenced = True
            return StopReason.LEASE_LOST
        if done is None:
            return self._reason(stop)
        log.info(
            "shard ended", stream=self.p.name, sequence=end.sequence_number, children=list(self.child_ids)
        )
        self.p.on_end(self.shard_id, self.child_ids)
        return None
