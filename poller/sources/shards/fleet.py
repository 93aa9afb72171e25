"""The whole stream: discovers its shards and runs a worker for each one that
may be read.

- Lists the shards every `shard_discovery_seconds` and whenever a worker
  stops, and starts one `ShardWorker` per shard whose parents have all
  finished (`Lineage`), so per-key order holds across splits and merges.
- Where a shard starts: its checkpoint (AT_SEQUENCE_NUMBER, then what was
  committed is dropped); the configured position only for a stream with no
  state at all, stored first as the `#start` row when it is LATEST or
  AT_TIMESTAMP; after that a shard with no checkpoint starts at the stored
  moment, or at TRIM_HORIZON. Children always start at TRIM_HORIZON.
- Acts on each worker's stop reason: SHARD_END updates the lineage (children
  may start; the tombstone goes once every child has a checkpoint), TRIMMED
  stops the whole stream (`run` returns it), REQUESTED needs nothing. A worker
  that fails fails the stream (the supervisor restarts it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from poller.config import StreamConfig
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.processing.pipeline import Preparer
from poller.records import Checkpoint, Position, TransientError
from poller.sink_api import FailureDestination, Sink, Transaction
from poller.sources.shards.api import (
    AT_SEQUENCE_NUMBER,
    AT_TIMESTAMP,
    LATEST,
    TRIM_HORIZON,
    ShardApi,
    ShardInfo,
    StartAt,
    StopReason,
)
from poller.sources.shards.lanes import StreamParts
from poller.sources.shards.lineage import Lineage
from poller.sources.shards.options import ShardOptions
from poller.sources.shards.positions import (
    START_ID,
    ResumeFloor,
    lane_checkpoint_id,
    parse_lane_id,
    parse_start_row,
    start_row,
)
from poller.sources.shards.publisher import PollingPublisher, RecordsPublisher
from poller.sources.shards.retrying import retrying
from poller.sources.shards.worker import ShardWorker

log = get_logger()


class ShardFleet:
    """Discovers a stream's shards and runs a worker for each one that may be read.

    `publisher` builds the reader of a shard (polling by default): the seam
    where a fan-out publisher goes."""

    def __init__(
        self,
        api: ShardApi,
        opts: ShardOptions,
        cfg: StreamConfig,
        sink: Sink,
        destination: FailureDestination,
        preparer: Preparer,
        on_source_ready: Callable[[], None],
        on_health: Callable[[bool], None],
        publisher: Callable[[ShardInfo], RecordsPublisher] | None = None,
    ):
        self.name = cfg.name
        self.api = api
        self.opts = opts
        self.sink = sink
        self.on_source_ready = on_source_ready
        self.parts = StreamParts(
            cfg.name,
            cfg,
            api,
            opts,
            sink,
            destination,
            preparer,
            publisher or self._polling,
            on_health,
            self._checkpointed,
            self._ended,
        )
        self.lineage = Lineage()
        self.workers: dict[str, ShardWorker] = {}
        self.tasks: dict[str, asyncio.Task[StopReason]] = {}
        self.rows: dict[str, Checkpoint] = {}  # shard rows as loaded
        self.lane_rows: dict[str, dict[str, Checkpoint]] = {}  # shard → lane rows as loaded
        self.fresh = False
        self.initial: set[str] | None = None  # shards listed first, when the stream had no state
        self.since: datetime | None = None  # the stored LATEST / AT_TIMESTAMP start
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.stopped: StopReason | None = None  # set when a worker's stop stops the stream

    def _polling(self, shard: ShardInfo) -> RecordsPublisher:
        return PollingPublisher(self.api, self.name, shard.shard_id, self.opts)

    async def run(self, stop: asyncio.Event) -> StopReason:
        """Until `stop` (REQUESTED) or a worker's stop that ends the stream (TRIMMED)."""
        self._stop = stop
        loaded = await retrying(
            stop, self.name, "loading checkpoints", lambda: self.sink.load_checkpoints(self.name)
        )
        if loaded is None:
            return StopReason.REQUESTED
        self._load(loaded)
        if self.fresh and not await self._keep_start(stop):
            return StopReason.REQUESTED
        try:
            while not stop.is_set() and self.stopped is None:
                shards = await retrying(stop, self.name, "ListShards", self.api.list_shards)
                if shards is None:
                    break
                self._discovered(shards)
                await self._drop_tombstones()
                await self._wait(stop)
                self._reap()
        finally:
            await self._stop_workers(graceful=stop.is_set() or self.stopped is not None)
        return self.stopped or StopReason.REQUESTED

    def _load(self, loaded: dict[str, Checkpoint]) -> None:
        loaded = dict(loaded)
        marker = loaded.pop(START_ID, None)
        if marker is not None:
            self.since = parse_start_row(marker)
            if self.since is None:
                log.error(
                    "stored start position unreadable; shards with no checkpoint start at TRIM_HORIZON",
                    stream=self.name,
                    value=marker.sequence_number,
                )
        self.fresh = not loaded and marker is None
        self.lineage = Lineage(loaded.values())
        for checkpoint_id, c in loaded.items():
            lane = parse_lane_id(checkpoint_id)
            if lane is None:
                self.rows[checkpoint_id] = c
            else:
                self.lane_rows.setdefault(lane[0], {})[checkpoint_id] = c
        log.info(
            "checkpoints loaded",
            stream=self.name,
            shards=len(self.rows),
            ended=len(self.lineage.ended),
            lane_rows=sum(len(v) for v in self.lane_rows.values()),
        )

    async def _keep_start(self, stop: asyncio.Event) -> bool:
        """Store a LATEST / AT_TIMESTAMP start before any shard is opened."""
        since = self.opts.start_moment()
        if since is None:
            return True
        tx = Transaction(stream=self.name, checkpoints=[start_row(self.name, since)])
        stored = await retrying(stop, self.name, "storing the start position", lambda: self.sink.commit(tx))
        if stored is None:
            return False
        self.since = since
        return True

    def _discovered(self, shards: list[ShardInfo]) -> None:
        self.lineage.update(shards)
        if self.initial is None:
            self.initial = {s.shard_id for s in shards} if self.fresh else set()
            self.on_source_ready()
        for shard in shards:
            if shard.shard_id not in self.workers and self.lineage.ready(shard.shard_id):
                self._start(shard)
        self._publish()

    def _start(self, shard: ShardInfo) -> None:
        start, checkpoint, floor = self._start_of(shard)
        log.info(
            "reading shard",
            stream=self.name,
            shard=shard.shard_id,
            at=start.kind,
            sequence=start.sequence_number,
            parents=list(shard.parent_ids),
        )
        reopen = None
        if start.kind == LATEST and self.since is not None:
            reopen = StartAt(AT_TIMESTAMP, timestamp=self.since)
        worker = ShardWorker(self.parts, shard, start, checkpoint, floor, reopen)
        task = asyncio.create_task(worker.run(self._stop), name=f"{self.name}-{shard.shard_id}")
        task.add_done_callback(lambda _: self._wake.set())
        self.workers[shard.shard_id] = worker
        self.tasks[shard.shard_id] = task

    def _start_of(self, shard: ShardInfo) -> tuple[StartAt, Position | None, ResumeFloor | None]:
        """Resume at the checkpoint; the configured position only for a stream
        with no state at all; after that, a shard with no checkpoint starts at the
        stored LATEST / AT_TIMESTAMP moment, or at TRIM_HORIZON."""
        row = self.rows.get(shard.shard_id)
        position = row.position if row is not None else None
        lanes = [
            (lane[1], lane[2], c.position)
            for cid, c in self.lane_rows.get(shard.shard_id, {}).items()
            if (lane := parse_lane_id(cid)) is not None and c.position is not None
        ]
        floor = ResumeFloor.build(position, lanes)
        if position is not None:
            return StartAt(AT_SEQUENCE_NUMBER, position.sequence_number), position, floor
        if self.initial and shard.shard_id in self.initial:
            return self.opts.initial_start(), None, floor
        if self.since is not None and not self.fresh:
            # After a restart: a shard that was quiet is not replayed from its oldest
            # record, and a child, newer than the start, is read whole all the same.
            return StartAt(AT_TIMESTAMP, timestamp=self.since), None, floor
        return StartAt(TRIM_HORIZON), None, floor

    # -- callbacks from the workers ------------------------------------------------

    def _checkpointed(self, shard_id: str) -> None:
        if shard_id not in self.lineage.checkpointed:
            self.lineage.mark_checkpointed(shard_id)
            self._wake.set()  # a parent's tombstone may go now

    def _ended(self, shard_id: str, child_ids: tuple[str, ...]) -> None:
        self.lineage.mark_ended(shard_id)
        self.lineage.learn_children(shard_id, child_ids)
        self._wake.set()

    # -- housekeeping --------------------------------------------------------------

    async def _drop_tombstones(self) -> None:
        for shard_id in self.lineage.expired_tombstones():
            ids = [shard_id, *self.lane_rows.get(shard_id, {})]
            if self.opts.parallelization > 1:
                ids += [
                    lane_checkpoint_id(shard_id, i, self.opts.parallelization)
                    for i in range(self.opts.parallelization)
                ]
            try:
                await self.sink.delete_checkpoints(self.name, sorted(set(ids)))
            except TransientError as e:
                log.warning(
                    "could not delete a SHARD_END checkpoint", stream=self.name, shard=shard_id, error=str(e)
                )
                return
            self.lineage.tombstones.discard(shard_id)
            self.lane_rows.pop(shard_id, None)
            log.info(
                "SHARD_END checkpoint deleted: children are processing", stream=self.name, shard=shard_id
            )

    async def _wait(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(
                waiters, timeout=self.opts.discovery_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waiters:
                w.cancel()
        self._wake.clear()

    def _reap(self) -> None:
        """Forget the workers that stopped, acting on why."""
        for shard_id, task in list(self.tasks.items()):
            if not task.done():
                continue
            del self.tasks[shard_id]
            del self.workers[shard_id]
            if task.cancelled():
                continue
            if task.exception() is not None:
                raise RuntimeError(f"shard {shard_id} failed: {task.exception()}") from task.exception()
            if task.result() is StopReason.TRIMMED:
                # `on_trimmed: stop`: the whole stream stops once what it holds commits.
                self.stopped = StopReason.TRIMMED
        self._publish()

    async def _stop_workers(self, graceful: bool) -> None:
        """Graceful: each worker finishes the batches it is committing; else cancel them."""
        tasks = list(self.tasks.values())
        for shard_id, t in self.tasks.items():
            if graceful:
                self.workers[shard_id].request_stop(StopReason.REQUESTED)
            else:
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.workers.clear()
        self.tasks.clear()
        self._publish()

    def _publish(self) -> None:
        for state, count in self.lineage.states(self.workers).items():
            metrics.SHARDS.labels(self.name, state).set(count)
