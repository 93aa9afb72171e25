"""The whole stream: discovers its shards and runs a worker for each one that
may be read.

- Lists the shards every `shard_discovery_seconds` and whenever a worker
  stops, and starts one `ShardWorker` per shard whose parents have all
  finished (`Lineage`), so per-key order holds across splits and merges.
- Where each shard starts is `resume.ResumePoints`' answer.
- Acts on each worker's stop reason: SHARD_END updates the lineage (children
  may start; the tombstone goes once every child has a checkpoint), TRIMMED
  stops the whole stream (`run` returns it), REQUESTED needs nothing. A worker
  that fails fails the stream (the supervisor restarts it).

With `coordination:` (several replicas, `poller.coordination`) a shard is read
only while this process holds its lease:
- the fleet tells its `LeaseCoordinator` which shards it may read (lineage)
  and starts a worker for each of those it holds, once readable (a stolen
  shard waits one renew period), with the lease's fence; a lost lease stops
  its worker (LEASE_LOST); a refused commit is reported; SHARD_END ends the
  lease; a graceful stop releases every lease after the workers stopped;
- checkpoints are read again before a worker starts (its last holder's final
  commit is in them) and every renew period (lineage across workers: a
  child starts only once every parent has finished, whoever read it);
- a shard with no checkpoint starts at the stored start (`#start`), never at
  LATEST again, whichever worker reads it first; the `#start` row is stored
  if absent (the first worker's value wins) and tombstones are dropped by
  idempotent deletes, so housekeeping needs no leader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from poller.config import StreamConfig
from poller.coordination import (
    CheckpointStore,
    LeaseCoordinator,
    LeaseStore,
    build_store,
    kept_checkpoints,
    worker_id,
)
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.processing.pipeline import Preparer
from poller.records import Checkpoint, Position, TransientError
from poller.sink_api import FailureDestination, Fence, Sink, Transaction
from poller.sources.base import SourceConsumer
from poller.sources.shards.api import (
    AT_TIMESTAMP,
    LATEST,
    ShardApi,
    ShardInfo,
    StartAt,
    StopReason,
)
from poller.sources.shards.lanes import StreamParts
from poller.sources.shards.lineage import Lineage
from poller.sources.shards.options import ShardOptions
from poller.sources.shards.positions import (
    ResumeFloor,
    lane_checkpoint_id,
    parse_start_row,
    start_row,
)
from poller.sources.shards.publisher import PollingPublisher, RecordsPublisher
from poller.sources.shards.resume import ResumePoints
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
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.name = cfg.name
        self.now = now  # AWS's clock (`AwsClock.now_utc`): where a LATEST start lies
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
        self.resume = ResumePoints()  # where each shard starts, from the checkpoints as loaded
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.stopped: StopReason | None = None  # set when a worker's stop stops the stream
        self.shards: list[ShardInfo] = []  # the last listing
        self._relist = True
        self._listed_at = 0.0
        # Several replicas: the leases, and where checkpoints are read and dropped
        # (the sink, or the lease store when it keeps them).
        self.leases: LeaseCoordinator | None = None
        self.checkpoints: Sink | CheckpointStore = sink
        self._loaded_at = 0.0
        self._load_began = float("-inf")  # when the checkpoints last read began to be read (leases clock)

    @classmethod
    def of(cls, source: SourceConsumer, api: ShardApi, min_read_interval: float) -> ShardFleet:
        """The fleet of a Kinesis or DynamoDB source, with what the runner handed it."""
        return cls(
            api,
            ShardOptions.from_config(source.cfg, min_read_interval=min_read_interval),
            source.cfg,
            source.sink,
            source.destination,
            source.preparer,
            source.on_source_ready,
            source.on_health,
            now=source.clock.now_utc,
        )

    def _polling(self, shard: ShardInfo) -> RecordsPublisher:
        return PollingPublisher(self.api, self.name, shard.shard_id, self.opts)

    async def run(self, stop: asyncio.Event) -> StopReason:
        """Until `stop` (REQUESTED) or a worker's stop that ends the stream (TRIMMED)."""
        self._stop = stop
        c = self.parts.cfg.coordination
        if c is None:
            return await self._run(stop)
        store = build_store(self.parts.cfg)
        opened = await retrying(stop, self.name, "opening the lease store", lambda: _opened(store))
        try:
            if opened is None:
                return StopReason.REQUESTED
            keeper = kept_checkpoints(store)
            if keeper is not None:
                self.checkpoints = keeper
            self.leases = LeaseCoordinator(
                self.name, store, worker_id(c), c.lease_seconds, on_change=self._wake.set, keeper=keeper
            )
            self.leases.running = lambda: self.workers.keys()
            log.info(
                "sharing the stream's shards through leases",
                stream=self.name,
                worker=self.leases.owner,
                lease_store=store.describe(),
                lease_seconds=c.lease_seconds,
            )
            return await self._run(stop)
        finally:
            await store.close()

    async def _run(self, stop: asyncio.Event) -> StopReason:
        loaded = await retrying(
            stop, self.name, "loading checkpoints", lambda: self.checkpoints.load_checkpoints(self.name)
        )
        if loaded is None:
            return StopReason.REQUESTED
        self._load(loaded)
        self._loaded_at = time.monotonic()
        if self.resume.fresh and not await self._keep_start(stop):
            return StopReason.REQUESTED
        leases_stop = asyncio.Event()
        coordinating = None
        if self.leases is not None:
            coordinating = asyncio.create_task(self.leases.run(leases_stop), name=f"{self.name}-leases")
            coordinating.add_done_callback(lambda _: self._wake.set())
        graceful = False
        try:
            while not stop.is_set() and self.stopped is None:
                if coordinating is not None and coordinating.done():
                    coordinating.result()  # its error (a second worker refused) ends the stream
                    raise RuntimeError("the lease coordinator stopped unexpectedly")
                if not await self._list(stop):
                    break
                if self.leases is None:
                    self._discovered(self.shards)
                else:
                    await self._schedule(stop)
                await self._drop_tombstones()
                await self._wait(stop)
                await self._reap()
            graceful = True
        finally:
            graceful = graceful or stop.is_set() or self.stopped is not None
            if self.leases is not None:
                self.leases.draining = True  # keep what it holds until released; take nothing more
            await self._stop_workers(graceful=graceful)
            if coordinating is not None:
                leases_stop.set()
                await asyncio.gather(coordinating, return_exceptions=True)
                if self.leases is not None:
                    if graceful:
                        await self.leases.release_all()
                    else:
                        self.leases.abandon()
        return self.stopped or StopReason.REQUESTED

    async def _list(self, stop: asyncio.Event) -> bool:
        """List the shards when due: first, every `shard_discovery_seconds`, and when
        a worker stopped (children may be readable). False once stopped."""
        if not self._relist and time.monotonic() - self._listed_at < self.opts.discovery_interval:
            return True
        self._relist = False
        shards = await retrying(stop, self.name, "ListShards", self.api.list_shards)
        if shards is None:
            return False
        self.shards = shards
        self._listed_at = time.monotonic()
        return True

    def _load(self, loaded: dict[str, Checkpoint]) -> None:
        shards, marker = self.resume.load(loaded)
        if marker is not None:
            self.resume.since = parse_start_row(marker)
            if self.resume.since is None:
                log.error(
                    "stored start position unreadable; shards with no checkpoint start at TRIM_HORIZON",
                    stream=self.name,
                    value=marker.sequence_number,
                )
        self.resume.fresh = not shards and marker is None
        self.lineage = Lineage(shards.values())
        log.info(
            "checkpoints loaded",
            stream=self.name,
            shards=len(self.resume.rows),
            ended=len(self.lineage.ended),
            lane_rows=sum(len(v) for v in self.resume.lane_rows.values()),
        )

    async def _keep_start(self, stop: asyncio.Event) -> bool:
        """Store a LATEST / AT_TIMESTAMP start before any shard is opened. With
        leases it is stored only if absent: every worker uses the first one's."""
        since = self.opts.start_moment(self.now())
        if since is None:
            return True
        row = start_row(self.name, since)
        leases = self.leases
        if leases is not None:
            kept = await retrying(stop, self.name, "storing the start position", lambda: leases.keep_row(row))
            if kept is None:
                return False
            self.resume.since = parse_start_row(kept) or since
            return True
        tx = Transaction(stream=self.name, checkpoints=[row])
        stored = await retrying(stop, self.name, "storing the start position", lambda: self.sink.commit(tx))
        if stored is None:
            return False
        self.resume.since = since
        return True

    def _discovered(self, shards: list[ShardInfo]) -> None:
        self.lineage.update(shards)
        if self.resume.initial is None:
            self.resume.initial = {s.shard_id for s in shards} if self.resume.fresh else set()
            self.on_source_ready()
        for shard in shards:
            if shard.shard_id not in self.workers and self.lineage.ready(shard.shard_id):
                self._start(shard)
        self._publish()

    # -- with leases -----------------------------------------------------------------

    async def _schedule(self, stop: asyncio.Event) -> None:
        """Start a worker for each readable shard this process holds the lease of,
        and stop the workers of leases lost."""
        leases = self.leases
        assert leases is not None
        self.lineage.update(self.shards)
        if self.resume.initial is None:
            # With leases a shard with no checkpoint starts at the stored start.
            self.resume.initial = set()
            self.on_source_ready()
        for shard_id in leases.take_lost():
            worker = self.workers.get(shard_id)
            if worker is not None:
                log.info("stopping a shard whose lease was lost", stream=self.name, shard=shard_id)
                worker.request_stop(StopReason.LEASE_LOST)
        held = leases.holding()
        if time.monotonic() - self._loaded_at >= leases.renew_every or any(
            s not in self.workers and not leases.loaded_for(s, self._load_began) for s in held
        ):
            # What other workers committed and ended: the lineage, and where held shards resume.
            if not await self._reload(stop):
                return
        listed = {s.shard_id for s in self.shards}
        leases.want({s.shard_id: s.parent_ids for s in self.shards if self.lineage.ready(s.shard_id)}, listed)
        for shard in self.shards:
            shard_id = shard.shard_id
            if shard_id not in held or shard_id in self.workers:
                continue
            if self.lineage.finished(shard_id):
                # Read to its end by another worker, which did not get to end the lease.
                await leases.ended(shard_id)
            elif not leases.loaded_for(shard_id, self._load_began):
                # Taken (again) while the checkpoints were being read: they may predate
                # what its last holder committed. The next round reads them again.
                self._wake.set()
            elif self.lineage.ready(shard_id) and leases.readable(shard_id):
                self._start(shard, leases.fence(shard_id))
        self._publish()

    async def _reload(self, stop: asyncio.Event) -> bool:
        assert self.leases is not None
        began = self.leases.clock()
        loaded = await retrying(
            stop, self.name, "loading checkpoints", lambda: self.checkpoints.load_checkpoints(self.name)
        )
        if loaded is None:
            return False
        self._loaded_at = time.monotonic()
        self._load_began = began
        shards, marker = self.resume.load(loaded)
        if marker is not None and self.resume.since is None:
            self.resume.since = parse_start_row(marker)
        seen = Lineage(shards.values())
        if seen.ended - self.lineage.ended:
            self._relist = True  # a shard another worker read to its end: its children may be new here
        self.lineage.ended |= seen.ended
        self.lineage.tombstones |= seen.tombstones
        self.lineage.checkpointed |= seen.checkpointed
        return True

    # -- workers -------------------------------------------------------------------

    def _start(self, shard: ShardInfo, fence: Fence | None = None) -> None:
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
        if start.kind == LATEST and self.resume.since is not None:
            reopen = StartAt(AT_TIMESTAMP, timestamp=self.resume.since)
        worker = ShardWorker(self.parts, shard, start, checkpoint, floor, reopen, fence)
        task = asyncio.create_task(worker.run(self._stop), name=f"{self.name}-{shard.shard_id}")
        task.add_done_callback(lambda _: self._worker_done())
        self.workers[shard.shard_id] = worker
        self.tasks[shard.shard_id] = task

    def _start_of(self, shard: ShardInfo) -> tuple[StartAt, Position | None, ResumeFloor | None]:
        return self.resume.start_of(shard, self.opts, leased=self.leases is not None)

    # -- callbacks from the workers ------------------------------------------------

    def _worker_done(self) -> None:
        self._relist = True  # its children may be readable now
        self._wake.set()

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
            ids = [shard_id, *self.resume.lane_rows.get(shard_id, {})]
            if self.opts.parallelization > 1:
                ids += [
                    lane_checkpoint_id(shard_id, i, self.opts.parallelization)
                    for i in range(self.opts.parallelization)
                ]
            try:
                await self.checkpoints.delete_checkpoints(self.name, sorted(set(ids)))
            except TransientError as e:
                log.warning(
                    "could not delete a SHARD_END checkpoint", stream=self.name, shard=shard_id, error=str(e)
                )
                return
            self.lineage.tombstones.discard(shard_id)
            self.resume.lane_rows.pop(shard_id, None)
            log.info(
                "SHARD_END checkpoint deleted: children are processing", stream=self.name, shard=shard_id
            )

    async def _wait(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        timeout = max(0.0, self._listed_at + self.opts.discovery_interval - time.monotonic())
        if self.leases is not None:
            readable = self.leases.next_readable()
            if readable is not None:
                timeout = min(timeout, readable)
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        self._wake.clear()

    async def _reap(self) -> None:
        """Forget the workers that stopped, acting on why."""
        for shard_id, task in list(self.tasks.items()):
            if not task.done():
                continue
            del self.tasks[shard_id]
            worker = self.workers.pop(shard_id)
            if task.cancelled():
                continue
            if task.exception() is not None:
                raise RuntimeError(f"shard {shard_id} failed: {task.exception()}") from task.exception()
            reason = task.result()
            if reason is StopReason.TRIMMED:
                # `on_trimmed: stop`: the whole stream stops once what it holds commits.
                self.stopped = StopReason.TRIMMED
            elif self.leases is not None and reason is StopReason.SHARD_END:
                await self.leases.ended(shard_id)
            elif self.leases is not None and worker.fenced:
                self.leases.fenced(shard_id)
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


async def _opened(store: LeaseStore) -> bool:
    await store.open()
    return True
