"""Shard machinery shared by the Kinesis and DynamoDB Streams sources.

A source adapter implements the narrow `ShardApi` (list the shards, open an
iterator, read, build a `Record`); everything else is here, once:

- `ShardFleet` lists the shards every `shard_discovery_seconds` and whenever a
  shard ends, and starts one `ShardWorker` per shard whose parents are all
  finished (`Lineage`), so per-key order holds across splits and merges.
- `ShardWorker` reads its shard (at most one call per `min_read_interval`, at
  once while behind, every `idle_poll_seconds` when caught up) into bounded
  lane queues. Each lane batches, prepares and commits through the failure
  policy, with the checkpoint in the same transaction as the rows.
- With a parallelization factor above one, records go to lanes by a stable
  hash of their partition key. The shard checkpoint is the contiguous
  committed prefix (`PrefixTracker`), and each lane also keeps a checkpoint
  row of its own, so records a lane committed ahead of the prefix are not
  written again after a crash (`ResumeFloor`).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import structlog

from poller.config import DynamoDBSource, KinesisSource, StreamConfig
from poller.destinations import Destination
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.processing.batching import take_batch
from poller.processing.failures import Backoff, Decision, FailurePolicy, Unit, count_failures
from poller.processing.mapping import RowOp
from poller.processing.pipeline import Preparer
from poller.records import (
    Checkpoint,
    Position,
    Record,
    RecordError,
    ShardState,
    TransientError,
    seq_int,
)
from poller.sinks.base import CommitResult, Failure, Sink, Transaction

log = get_logger()

T = TypeVar("T")

TRIM_HORIZON = "TRIM_HORIZON"
LATEST = "LATEST"
AT_TIMESTAMP = "AT_TIMESTAMP"
AT_SEQUENCE_NUMBER = "AT_SEQUENCE_NUMBER"
AFTER_SEQUENCE_NUMBER = "AFTER_SEQUENCE_NUMBER"

# Reading and listing retry for as long as it takes; these bound one wait.
_BACKOFF_INITIAL = 0.2
_BACKOFF_CAP = 10.0


# --------------------------------------------------------------------------- the source's side


@dataclass(frozen=True, slots=True)
class ShardInfo:
    shard_id: str
    parent_ids: tuple[str, ...] = ()  # parent and adjacent parent (merge)
    closed: bool = False  # has an ending sequence number: it will end


@dataclass(slots=True)
class ReadResult:
    records: list[dict[str, Any]]  # raw records, as the API returned them
    next_iterator: str | None  # None: the shard has ended and everything was returned
    millis_behind: int | None = None
    child_ids: tuple[str, ...] = ()  # shards that continue this one (in its last read)


class Throttled(TransientError):
    """The service refused a call for rate (ProvisionedThroughputExceeded, KMS throttling)."""

    def __init__(self, operation: str, message: str):
        super().__init__(message)
        self.operation = operation


class IteratorExpired(Exception):
    """The shard iterator is too old; open a new one where reading stopped."""


class ShardApi(Protocol):
    """What a stream service must offer the shard machinery. Errors: `Throttled`,
    `IteratorExpired`, other `TransientError`s (retried), `RecordError` (fatal
    to the stream: a missing stream, a bad argument)."""

    async def list_shards(self) -> list[ShardInfo]: ...

    async def iterator(
        self,
        shard_id: str,
        kind: str,
        sequence_number: str | None = None,
        timestamp: datetime | None = None,
    ) -> str: ...

    async def read(self, iterator: str, limit: int) -> ReadResult: ...

    def to_record(self, raw: dict[str, Any], shard_id: str) -> Record: ...


@dataclass(frozen=True, slots=True)
class StartAt:
    """Where to open a shard iterator."""

    kind: str
    sequence_number: str | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class ShardOptions:
    starting_position: str = TRIM_HORIZON
    starting_timestamp: datetime | None = None
    latest_margin: float = 60.0
    parallelization: int = 1
    batch_size: int = 100
    batch_window: float = 0.5
    prefetch: int = 10_000
    idle_poll: float = 1.0
    max_idle_poll: float = 2.0
    discovery_interval: float = 30.0
    max_records_per_call: int = 10_000
    min_read_interval: float = 0.2  # Kinesis: 5 GetRecords per second per shard

    @classmethod
    def from_config(cls, cfg: StreamConfig, *, min_read_interval: float) -> ShardOptions:
        src = cfg.source
        if not isinstance(src, KinesisSource | DynamoDBSource):
            raise TypeError(f"{cfg.name}: source {src.type!r} has no shards")
        return cls(
            starting_position=src.starting_position,
            starting_timestamp=src.starting_timestamp,
            latest_margin=src.latest_margin_seconds,
            parallelization=src.parallelization_factor,
            batch_size=cfg.batch.size,
            batch_window=cfg.batch.window_seconds,
            prefetch=src.prefetch_records,
            idle_poll=src.idle_poll_seconds,
            max_idle_poll=max(src.idle_poll_seconds, src.max_idle_poll_seconds),
            discovery_interval=src.shard_discovery_seconds,
            max_records_per_call=src.max_records_per_call,
            min_read_interval=min_read_interval,
        )

    def initial_start(self) -> StartAt:
        if self.starting_position == AT_TIMESTAMP:
            return StartAt(AT_TIMESTAMP, timestamp=self.starting_timestamp)
        return StartAt(self.starting_position)

    def start_moment(self) -> datetime | None:
        """Where the configured start lies in time, for a restart before every shard
        committed. LATEST is this host's clock, taken back by a margin so a clock a
        little ahead of AWS's loses nothing (a restart may read that much before)."""
        if self.starting_position == AT_TIMESTAMP:
            return self.starting_timestamp
        if self.starting_position == LATEST:
            return datetime.now(UTC) - timedelta(seconds=self.latest_margin)
        return None


# --------------------------------------------------------------------------- pure parts


def lane_of(partition_key: str | None, lanes: int) -> int:
    """A stable lane for a key (crc32, not `hash()`: a restart must route the same way)."""
    if lanes <= 1:
        return 0
    return zlib.crc32((partition_key or "").encode()) % lanes


_LANE_MARK = "#lane-"

# The row that keeps a LATEST or AT_TIMESTAMP start: written before the first
# shard is opened, so a shard that had committed nothing before a restart starts
# from that moment instead of its oldest record.
START_ID = "#start"


def start_row(stream: str, since: datetime) -> Checkpoint:
    return Checkpoint(stream, START_ID, since.astimezone(UTC).isoformat())


def parse_start_row(row: Checkpoint) -> datetime | None:
    try:
        since = datetime.fromisoformat(row.sequence_number or "")
    except ValueError:
        return None
    return since if since.tzinfo is not None else since.replace(tzinfo=UTC)


def lane_checkpoint_id(shard_id: str, lane: int, lanes: int) -> str:
    """The checkpoint row of one lane of a shard, e.g. `shardId-000000000001#lane-2-of-4`."""
    return f"{shard_id}{_LANE_MARK}{lane}-of-{lanes}"


def parse_lane_id(checkpoint_id: str) -> tuple[str, int, int] | None:
    """(shard id, lane, lane count) of a lane checkpoint row; None for a shard's own row."""
    shard_id, mark, rest = checkpoint_id.rpartition(_LANE_MARK)
    if not mark:
        return None
    lane, of, count = rest.partition("-of-")
    if not (of and lane.isdigit() and count.isdigit()):
        return None
    return shard_id, int(lane), int(count)


class PrefixTracker:
    """The contiguous committed prefix of a shard's records.

    Records are added in read order and completed in any order (lanes commit
    independently). The prefix is the last record before the first one still
    pending, so a checkpoint there never passes uncommitted work, and it only
    ever moves forward.
    """

    __slots__ = ("_done", "_pending", "prefix")

    def __init__(self, prefix: Position | None = None) -> None:
        self._pending: deque[str] = deque()
        self._done: dict[str, Position] = {}
        self.prefix = prefix

    def __len__(self) -> int:
        """Records read and not yet completed."""
        return len(self._pending)

    def add(self, sequence_numbers: Iterable[str]) -> None:
        self._pending.extend(sequence_numbers)

    def prefix_with(self, completed: Iterable[tuple[str, Position]]) -> Position | None:
        """The prefix as it will be once `completed` commit too; changes nothing."""
        extra = dict(completed)
        done = self._done
        prefix = self.prefix
        for sequence_number in self._pending:
            position = done.get(sequence_number) or extra.get(sequence_number)
            if position is None:
                break
            prefix = position
        return prefix

    def complete(self, completed: Iterable[tuple[str, Position]]) -> Position | None:
        """Record that these records are committed (each with its last position)."""
        done = self._done
        done.update(completed)
        pending = self._pending
        while pending and pending[0] in done:
            self.prefix = done.pop(pending.popleft())
        return self.prefix


@dataclass(slots=True)
class ResumeFloor:
    """What a restarted shard committed already: its checkpoint, and the rows of
    lanes that committed ahead of it. Records at or below the floor that covers
    them are dropped (compared as integers, sub-sequence included)."""

    shard: tuple[int, int] | None = None
    lanes: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)  # count → lane → key
    top: int = -1  # the highest sequence number any part covers

    @classmethod
    def build(cls, shard: Position | None, lanes: Iterable[tuple[int, int, Position]]) -> ResumeFloor | None:
        floor = cls(shard.key() if shard is not None else None)
        for lane, count, position in lanes:
            floor.lanes.setdefault(count, {})[lane] = position.key()
        keys = [k for per in floor.lanes.values() for k in per.values()]
        if floor.shard is not None:
            keys.append(floor.shard)
        if not keys:
            return None
        floor.top = max(k[0] for k in keys)
        return floor

    def covering(self, record: Record) -> tuple[int, int] | None:
        """The highest committed (sequence, sub-sequence) that applies to this record."""
        best = self.shard
        if self.lanes:
            h = zlib.crc32((record.partition_key or "").encode())
            for count, per_lane in self.lanes.items():
                key = per_lane.get(h % count)
                if key is not None and (best is None or key > best):
                    best = key
        return best


class Lineage:
    """Which shards may be read now: a child only once every parent has finished.

    A shard has finished when it left a SHARD_END checkpoint, when the listing
    no longer shows it (trimmed away), or when one of its descendants has a
    checkpoint: children start only after their parents end, so a child with a
    checkpoint proves its parent's tombstone was cleaned up after it finished.
    """

    def __init__(self, checkpoints: Iterable[Checkpoint] = ()) -> None:
        self.ended: set[str] = set()
        self.tombstones: set[str] = set()  # SHARD_END rows still stored
        self.checkpointed: set[str] = set()  # shards with any stored row (their own or a lane's)
        self.listed: dict[str, ShardInfo] = {}
        self.children: dict[str, set[str]] = {}
        self._learned: dict[str, set[str]] = {}
        for c in checkpoints:
            lane = parse_lane_id(c.shard_id)
            self.checkpointed.add(lane[0] if lane else c.shard_id)
            if lane is None and c.state == ShardState.SHARD_END:
                self.ended.add(c.shard_id)
                self.tombstones.add(c.shard_id)

    def update(self, shards: Iterable[ShardInfo]) -> None:
        self.listed = {s.shard_id: s for s in shards}
        children: dict[str, set[str]] = {k: set(v) for k, v in self._learned.items()}
        for s in self.listed.values():
            for parent in s.parent_ids:
                children.setdefault(parent, set()).add(s.shard_id)
        self.children = children

    def learn_children(self, shard_id: str, child_ids: Iterable[str]) -> None:
        ids = set(child_ids)
        if ids:
            self._learned.setdefault(shard_id, set()).update(ids)
            self.children.setdefault(shard_id, set()).update(ids)

    def mark_checkpointed(self, shard_id: str) -> None:
        self.checkpointed.add(shard_id)

    def mark_ended(self, shard_id: str) -> None:
        self.ended.add(shard_id)
        self.tombstones.add(shard_id)
        self.checkpointed.add(shard_id)

    def finished(self, shard_id: str) -> bool:
        return self._finished(shard_id, {})

    def _finished(self, shard_id: str, memo: dict[str, bool]) -> bool:
        if shard_id in memo:
            return memo[shard_id]
        memo[shard_id] = False  # lineage has no cycles; this only guards bad input
        result = (
            shard_id in self.ended
            or shard_id not in self.listed
            or any(c in self.checkpointed or self._finished(c, memo) for c in self.children.get(shard_id, ()))
        )
        memo[shard_id] = result
        return result

    def ready(self, shard_id: str) -> bool:
        """Not finished, and every parent is."""
        memo: dict[str, bool] = {}
        info = self.listed.get(shard_id)
        return (
            info is not None
            and not self._finished(shard_id, memo)
            and all(self._finished(p, memo) for p in info.parent_ids)
        )

    def states(self, running: Iterable[str]) -> dict[str, int]:
        """Listed shards by state, for the `poller_shards` gauge."""
        running = set(running)
        memo: dict[str, bool] = {}
        counts = {"waiting_on_parent": 0, "reading": 0, "ended": 0}
        for shard_id in self.listed:
            if shard_id in running:
                counts["reading"] += 1
            elif self._finished(shard_id, memo):
                counts["ended"] += 1
            else:
                counts["waiting_on_parent"] += 1
        return counts

    def expired_tombstones(self) -> list[str]:
        """SHARD_END rows no longer needed: every child has a checkpoint of its own,
        or the shard is gone from the listing."""
        out = []
        for shard_id in sorted(self.tombstones):
            children = self.children.get(shard_id, set())
            if shard_id not in self.listed or (children and children <= self.checkpointed):
                out.append(shard_id)
        return out


# --------------------------------------------------------------------------- helpers


async def retrying(
    stop: asyncio.Event, stream: str, what: str, call: Callable[[], Awaitable[T]], **context: Any
) -> T | None:
    """Call until it succeeds, backing off on transient errors; None once `stop` is set."""
    backoff = Backoff(_BACKOFF_INITIAL, _BACKOFF_CAP)
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
            await _sleep_unless(stop, backoff.delay(attempt))
    return None


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def _put_all(queue: asyncio.Queue[Record], records: list[Record]) -> None:
    """Put in order; wait for room only when the prefetch bound is reached."""
    room = queue.maxsize - queue.qsize()
    put_nowait = queue.put_nowait
    for r in records[:room]:
        put_nowait(r)
    for r in records[room:]:
        await queue.put(r)


def _record_ends(units: list[Unit]) -> set[int]:
    """Indices of the units that complete a source record (its last decoded part)."""
    ends: set[int] = set()
    last = len(units) - 1
    for i, u in enumerate(units):
        if i == last or units[i + 1].source.sequence_number != u.source.sequence_number:
            ends.add(u.index)
    return ends


@dataclass(slots=True)
class _ShardTx(Transaction):
    """A transaction of one lane; its checkpoints are filled in under the shard's lock."""

    lane: int = 0
    last: Position | None = None  # the last unit's position
    completed: list[tuple[str, Position]] = field(default_factory=list)


class _ShardSink(Sink):
    """The sink as one shard's lanes see it: commits of a shard are serialized so
    each transaction's checkpoint accounts for every commit before it."""

    def __init__(self, inner: Sink, worker: ShardWorker):
        self.inner = inner
        self.worker = worker
        self.kind = inner.kind

    async def commit(self, tx: Transaction) -> CommitResult:
        if not isinstance(tx, _ShardTx):
            return await self.inner.commit(tx)
        async with self.worker.commit_lock:
            tx.checkpoints = self.worker.checkpoints_for(tx)
            result = await self.inner.commit(tx)
            self.worker.committed(tx)
        return result

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self.inner.ping()

    def prepare(self, record: Record) -> list[RowOp]:
        return self.inner.prepare(record)

    async def load_checkpoints(self, stream: str) -> dict[str, Checkpoint]:
        return await self.inner.load_checkpoints(stream)

    async def delete_checkpoints(self, stream: str, shard_ids: list[str]) -> None:
        await self.inner.delete_checkpoints(stream, shard_ids)


# --------------------------------------------------------------------------- one shard


@dataclass(slots=True)
class _StreamParts:
    """What every worker of a stream shares."""

    name: str
    cfg: StreamConfig
    api: ShardApi
    opts: ShardOptions
    sink: Sink
    destination: Destination
    preparer: Preparer
    on_health: Callable[[bool], None]
    on_checkpointed: Callable[[str], None]
    on_end: Callable[[str, tuple[str, ...]], None]


@dataclass(eq=False, slots=True)
class _Lane:
    index: int
    queue: asyncio.Queue[Record]
    policy: FailurePolicy | None = None
    task: asyncio.Task[None] | None = None
    busy: bool = False
    closing: bool = False
    past_floor: bool = False
    ends: set[int] = field(default_factory=set)  # of the batch being committed


class ShardWorker:
    """Reads one shard to its end (or until stop) and commits what it reads."""

    def __init__(
        self,
        parts: _StreamParts,
        info: ShardInfo,
        start: StartAt,
        checkpoint: Position | None = None,
        floor: ResumeFloor | None = None,
        reopen: StartAt | None = None,
    ):
        self.p = parts
        self.info = info
        self.shard_id = info.shard_id
        self.start = start
        # Where to reopen an iterator that expired before a record was read:
        # LATEST again would skip what arrived meanwhile.
        self.reopen = reopen or start
        self.floor = floor
        self.tracker = PrefixTracker(checkpoint)
        self.written = checkpoint  # the shard row as last committed
        self.last_read: str | None = None
        self.child_ids: tuple[str, ...] = ()
        self.commit_lock = asyncio.Lock()
        self.drained = asyncio.Event()
        self.drained.set()
        self.sink = _ShardSink(parts.sink, self)
        opts = parts.opts
        n = opts.parallelization
        size = max(opts.batch_size, opts.prefetch // n)
        self.lanes = [_Lane(i, asyncio.Queue(size)) for i in range(n)]
        for lane in self.lanes:
            lane.policy = self._policy(lane)
        name, shard = parts.name, info.shard_id
        self._received = metrics.RECORDS.labels(name, "received")
        self._written = metrics.RECORDS.labels(name, "written")
        self._duplicate = metrics.RECORDS.labels(name, "duplicate")
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        self._get_records = metrics.GET_RECORDS.labels(name, shard)
        self._millis_behind = metrics.MILLIS_BEHIND.labels(name, shard)
        self._iterator_age = metrics.ITERATOR_AGE.labels(name, shard)

    def _policy(self, lane: _Lane) -> FailurePolicy:
        max_attempts = self.p.cfg.retry.max_attempts

        def decide(u: Unit, _: RecordError) -> Decision:
            return "fail" if u.attempts >= max_attempts else "retry"

        return FailurePolicy(
            self.p.name,
            self.p.cfg.retry,
            self.sink,
            self.p.destination,
            build_tx=lambda units: self._build_tx(lane, units),
            decide=decide,
            on_health=self.p.on_health,
            shard=self.shard_id,
        )

    # -- lifecycle -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> bool:
        """True once the shard has ended and its SHARD_END checkpoint is committed."""
        structlog.contextvars.bind_contextvars(shard=self.shard_id)
        for lane in self.lanes:
            lane.task = asyncio.create_task(
                self._lane_loop(lane), name=f"{self.p.name}-{self.shard_id}-{lane.index}"
            )
        try:
            ended = await self._until(stop, self._read_to_end()) and await self._until(stop, self._drain())
            if ended:
                ended = await self._write_end(stop)
        except BaseException:
            await self._close_lanes(force=True)
            raise
        await self._close_lanes(force=False)
        return ended

    async def _until(self, stop: asyncio.Event, work: Awaitable[None]) -> bool:
        """Run `work` until it is done (True) or `stop` is set (False); a lane that
        fails fails the shard."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.create_task(stop.wait())
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
                lane_task.result()  # raises the lane's error
                raise RuntimeError(f"lane of shard {self.shard_id} stopped unexpectedly")
        if task.cancelled():
            return False
        task.result()
        return True

    async def _close_lanes(self, force: bool) -> None:
        """Stop the lanes: idle ones at once, busy ones after their batch commits."""
        for lane in self.lanes:
            lane.closing = True
            if (force or not lane.busy) and lane.task is not None:
                lane.task.cancel()
        tasks = [lane.task for lane in self.lanes if lane.task is not None]
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                log.error(
                    "lane failed while stopping", stream=self.p.name, shard=self.shard_id, error=str(result)
                )

    # -- reading -------------------------------------------------------------------

    async def _open(self, start: StartAt) -> str:
        never = asyncio.Event()  # the reader is cancelled on stop, not asked
        iterator = await retrying(
            never,
            self.p.name,
            "GetShardIterator",
            lambda: self.p.api.iterator(self.shard_id, start.kind, start.sequence_number, start.timestamp),
            shard=self.shard_id,
        )
        assert iterator is not None
        return iterator

    def _resume_point(self) -> StartAt:
        if self.last_read is not None:
            return StartAt(AFTER_SEQUENCE_NUMBER, self.last_read)
        return self.reopen

    async def _read_to_end(self) -> None:
        opts = self.p.opts
        limit = opts.max_records_per_call
        loop = asyncio.get_running_loop()
        backoff = Backoff(_BACKOFF_INITIAL, _BACKOFF_CAP)
        attempt = 0
        iterator = await self._open(self.start)
        next_call = 0.0
        empty_reads = 0
        while True:
            wait = next_call - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            next_call = loop.time() + opts.min_read_interval
            self._get_records.inc()  # every call, refused ones too: this is the rate AWS limits
            try:
                result = await self.p.api.read(iterator, limit)
            except IteratorExpired:
                start = self._resume_point()
                log.info(
                    "shard iterator expired; reopening",
                    stream=self.p.name,
                    at=start.kind,
                    sequence=start.sequence_number,
                )
                iterator = await self._open(start)
                continue
            except TransientError as e:
                attempt += 1
                self._transient(e, attempt)
                await asyncio.sleep(backoff.delay(attempt))
                continue
            attempt = 0
            behind = result.millis_behind or 0
            if result.millis_behind is not None:
                self._millis_behind.set(behind)
            if result.records:
                await self._enqueue(result.records)
            elif not behind and not self.tracker:
                self._iterator_age.set(0)
            if result.next_iterator is None:
                self.child_ids = result.child_ids
                return
            iterator = result.next_iterator
            if len(result.records) < limit and not behind:
                # Each GetRecords costs ~0.6 ms of client CPU: a shard that stays
                # empty backs off to max_idle_poll, one with records polls at idle_poll.
                empty_reads = 0 if result.records else empty_reads + 1
                idle = opts.idle_poll * 2 ** min(max(empty_reads - 1, 0), 16)
                await asyncio.sleep(min(idle, opts.max_idle_poll))

    def _transient(self, e: TransientError, attempt: int) -> None:
        if isinstance(e, Throttled):
            metrics.THROTTLES.labels(self.p.name, e.operation).inc()
            if attempt < 5:
                return
        (log.warning if attempt < 5 else log.error)(
            "reading shard failed, retrying", stream=self.p.name, attempt=attempt, error=str(e)
        )

    async def _enqueue(self, raws: list[dict[str, Any]]) -> None:
        to_record = self.p.api.to_record
        shard_id = self.shard_id
        records = [to_record(raw, shard_id) for raw in raws]
        self._received.inc(len(records))
        self.last_read = records[-1].sequence_number
        self.tracker.add([r.sequence_number for r in records])
        self.drained.clear()
        lanes = self.lanes
        if len(lanes) == 1:
            await _put_all(lanes[0].queue, records)
            return
        n = len(lanes)
        buckets: list[list[Record]] = [[] for _ in lanes]
        for r in records:
            buckets[lane_of(r.partition_key, n)].append(r)
        for lane, bucket in zip(lanes, buckets, strict=True):
            if bucket:
                await _put_all(lane.queue, bucket)

    async def _drain(self) -> None:
        while self.tracker:
            self.drained.clear()
            await self.drained.wait()

    async def _write_end(self, stop: asyncio.Event) -> bool:
        position = self.written
        end = Checkpoint(
            self.p.name,
            self.shard_id,
            position.sequence_number if position is not None else None,
            position.sub_sequence if position is not None else 0,
            ShardState.SHARD_END,
            self.info.parent_ids,
        )
        tx = Transaction(stream=self.p.name, checkpoints=[end])
        done = await retrying(stop, self.p.name, "SHARD_END checkpoint", lambda: self.p.sink.commit(tx))
        if done is None:
            return False
        log.info(
            "shard ended", stream=self.p.name, sequence=end.sequence_number, children=list(self.child_ids)
        )
        self.p.on_end(self.shard_id, self.child_ids)
        return True

    # -- processing ----------------------------------------------------------------

    async def _lane_loop(self, lane: _Lane) -> None:
        structlog.contextvars.bind_contextvars(shard=self.shard_id, lane=lane.index)
        # The next batch is taken and prepared while this one commits: the commit
        # mostly waits on the database, and taking the batch makes room for the
        # reader's next GetRecords. A batch prepared when the lane closes is
        # dropped, as records still queued are: nothing past a commit is checkpointed.
        upcoming = asyncio.create_task(self._next_batch(lane))
        try:
            while not lane.closing:
                batch = await upcoming
                upcoming = asyncio.create_task(self._next_batch(lane))
                if batch is None:
                    continue
                units, ends = batch
                lane.busy = True
                # Failure-policy logs of this batch then name where it starts.
                structlog.contextvars.bind_contextvars(sequence=units[0].source.sequence_number)
                try:
                    await self._commit(lane, units, ends)
                finally:
                    lane.busy = False
        finally:
            upcoming.cancel()
            for error in await asyncio.gather(upcoming, return_exceptions=True):
                if isinstance(error, Exception):
                    log.error("preparing a batch failed while the lane stopped", error=str(error))

    async def _next_batch(self, lane: _Lane) -> tuple[list[Unit], set[int]] | None:
        """The lane's next batch as units and the indexes that end a source record;
        None when every record of it was committed before a restart."""
        opts = self.p.opts
        records = await take_batch(lane.queue, opts.batch_size, opts.batch_window)
        # Logs written while preparing name where this batch starts.
        structlog.contextvars.bind_contextvars(sequence=records[0].sequence_number)
        cut: dict[str, tuple[int, int]] = {}
        if self.floor is not None and not lane.past_floor:
            records, cut = self._below_floor(lane, records)
            if not records:
                return None
        units = self.p.preparer.stream_units(records)
        ends = _record_ends(units)
        if cut:
            units = self._drop_covered(units, ends, cut)
        return (units, ends) if units else None

    async def _commit(self, lane: _Lane, units: list[Unit], ends: set[int]) -> None:
        assert lane.policy is not None
        size = self.p.opts.batch_size
        for start in range(0, len(units), size):
            chunk = units[start : start + size]
            lane.ends = ends
            await lane.policy.commit(chunk)
            self._account(chunk)

    def _below_floor(
        self, lane: _Lane, records: list[Record]
    ) -> tuple[list[Record], dict[str, tuple[int, int]]]:
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
            lane.past_floor = True
        self._duplicate.inc(len(covered))
        self._complete_covered(covered)
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
        self._complete_covered(covered)
        return kept

    def _complete_covered(self, covered: list[tuple[str, Position]]) -> None:
        """Records wholly committed before a restart are done without a commit."""
        if covered:
            self.tracker.complete(covered)
            if not self.tracker:
                self.drained.set()

    def _build_tx(self, lane: _Lane, active: list[Unit]) -> Transaction:
        ends = lane.ends
        in_tx = self.p.destination.in_transaction
        ops: list[RowOp] = []
        failures: list[Failure] = []
        completed: list[tuple[str, Position]] = []
        for u in active:
            if u.failure is None:
                ops.extend(u.ops)
            elif in_tx:
                failures.append(u.failure)
            if u.index in ends:
                completed.append((u.source.sequence_number, u.token))
        return _ShardTx(
            stream=self.p.name,
            ops=ops,
            failures=failures,
            lane=lane.index,
            last=active[-1].token,
            completed=completed,
        )

    def checkpoints_for(self, tx: _ShardTx) -> list[Checkpoint]:
        """What this commit writes, computed under the shard's commit lock: with one
        lane, its last position; with several, the lane's own row and the shard's
        contiguous prefix. Neither ever moves backwards."""
        assert tx.last is not None
        n = len(self.lanes)
        rows: list[Checkpoint] = []
        if n == 1:
            shard_position: Position | None = tx.last
        else:
            rows.append(self._row(lane_checkpoint_id(self.shard_id, tx.lane, n), tx.last))
            shard_position = self.tracker.prefix_with(tx.completed)
        if shard_position is not None and shard_position.is_after(self.written):
            rows.append(self._row(self.shard_id, shard_position))
        return rows

    def _row(self, checkpoint_id: str, position: Position) -> Checkpoint:
        parents = self.info.parent_ids if checkpoint_id == self.shard_id else ()
        return Checkpoint(
            self.p.name,
            checkpoint_id,
            position.sequence_number,
            position.sub_sequence,
            ShardState.RUNNING,
            parents,
        )

    def committed(self, tx: _ShardTx) -> None:
        for row in tx.checkpoints:
            if row.shard_id == self.shard_id:
                self.written = row.position
        if tx.checkpoints:
            self.p.on_checkpointed(self.shard_id)
        if tx.completed:
            self.tracker.complete(tx.completed)
            if not self.tracker:
                self.drained.set()

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


# --------------------------------------------------------------------------- the whole stream


class ShardFleet:
    """Discovers a stream's shards and runs a worker for each one that may be read."""

    def __init__(
        self,
        api: ShardApi,
        opts: ShardOptions,
        cfg: StreamConfig,
        sink: Sink,
        destination: Destination,
        preparer: Preparer,
        on_source_ready: Callable[[], None],
        on_health: Callable[[bool], None],
    ):
        self.name = cfg.name
        self.api = api
        self.opts = opts
        self.sink = sink
        self.on_source_ready = on_source_ready
        self.parts = _StreamParts(
            cfg.name,
            cfg,
            api,
            opts,
            sink,
            destination,
            preparer,
            on_health,
            self._checkpointed,
            self._ended,
        )
        self.lineage = Lineage()
        self.workers: dict[str, asyncio.Task[bool]] = {}
        self.rows: dict[str, Checkpoint] = {}  # shard rows as loaded
        self.lane_rows: dict[str, dict[str, Checkpoint]] = {}  # shard → lane rows as loaded
        self.fresh = False
        self.initial: set[str] | None = None  # shards listed first, when the stream had no state
        self.since: datetime | None = None  # the stored LATEST / AT_TIMESTAMP start
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        loaded = await retrying(
            stop, self.name, "loading checkpoints", lambda: self.sink.load_checkpoints(self.name)
        )
        if loaded is None:
            return
        self._load(loaded)
        if self.fresh and not await self._keep_start(stop):
            return
        try:
            while not stop.is_set():
                shards = await retrying(stop, self.name, "ListShards", self.api.list_shards)
                if shards is None:
                    break
                self._discovered(shards)
                await self._drop_tombstones()
                await self._wait(stop)
                self._reap()
        finally:
            await self._stop_workers(graceful=stop.is_set())

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
        self.workers[shard.shard_id] = task

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
        for shard_id, task in list(self.workers.items()):
            if not task.done():
                continue
            del self.workers[shard_id]
            if not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"shard {shard_id} failed: {task.exception()}") from task.exception()
        self._publish()

    async def _stop_workers(self, graceful: bool) -> None:
        tasks = list(self.workers.values())
        if not graceful:
            for t in tasks:
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.workers.clear()
        self._publish()

    def _publish(self) -> None:
        for state, count in self.lineage.states(self.workers).items():
            metrics.SHARDS.labels(self.name, state).set(count)
