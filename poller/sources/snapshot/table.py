"""A table's snapshot from start to switch-over: records the stream position,
scans every segment (resuming each where it stopped), and marks the snapshot
done — or re-syncs the table after a retention gap.

Its life, in its rows (`rows`):

    (no #snapshot row) ──begin──► scanning ──every segment done──► done
                                     ▲                                 │
                                     └───────────── resync ◄───────────┘  (on_retention_gap: snapshot)

- begin: one transaction writes `#snapshot` (began = AWS's time, `AwsClock`,
  minus the source's `latest_margin_seconds`, room for what the measured skew
  does not know) and, when the
  stream has no shard rows yet, `#start` at the same moment: the stream is read
  from there after the scan, so every change made during it is applied after it.
  A stream that has shard rows already keeps them: they are older still.
- scanning: `SegmentScan`s in parallel, one per unfinished segment, sharing a
  `ReadBudget`; progress is a metric and a log line every few seconds (items,
  percentage of the table's ItemCount, segments done), and a warning once the
  scan has run for 20 hours (the stream keeps 24).
- done: `#snapshot` gets its `done` time once every segment row says done; a
  re-sync first drops the stale shard rows. A done snapshot is not scanned again.
- resync: the old segment rows go, then a new `#snapshot` (resync) and
  `#start` are written, and the scan runs again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from poller.config import DynamoDBSource, StreamConfig
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.processing.pipeline import Preparer
from poller.records import Checkpoint
from poller.sink_api import FailureDestination, Sink, Transaction
from poller.sources.shards import retrying, start_row
from poller.sources.snapshot.budget import ReadBudget
from poller.sources.snapshot.rows import (
    SNAPSHOT_ID,
    SegmentProgress,
    SnapshotState,
    is_snapshot_row,
    progress_of,
)
from poller.sources.snapshot.segment import ScanApi, SegmentScan, SnapshotParts, TableInfo

log = get_logger()

PROGRESS_LOG_SECONDS = 5.0
LONG_SCAN_SECONDS = 20 * 3600.0  # DynamoDB Streams keeps 24 hours: past this, warn


class TableSnapshot:
    """The snapshot of one stream's table."""

    def __init__(
        self,
        cfg: StreamConfig,
        sink: Sink,
        destination: FailureDestination,
        preparer: Preparer,
        client: Any,
        table: str,
        region: str,
        on_health: Callable[[bool], None],
        stream_arn: str | None = None,
        view_type: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        assert isinstance(cfg.source, DynamoDBSource)
        self.now = now  # AWS's clock (`AwsClock.now_utc`): the snapshot's moments are the stream's
        self.cfg = cfg
        self.src = cfg.source
        self.name = cfg.name
        self.sink = sink
        self.destination = destination
        self.preparer = preparer
        self.api = ScanApi(client, table, consistent=cfg.source.snapshot.consistent_read)
        self.region = region
        self.on_health = on_health
        self.stream_arn = stream_arn
        self.view_type = view_type or "NEW_AND_OLD_IMAGES"
        self.rows: dict[str, Checkpoint] = {}
        self.state: SnapshotState | None = None
        self.progress: list[SegmentProgress] = []
        self.completed_now = False  # this process finished the scan (the switch-over is now)
        self._segments = metrics.SNAPSHOT_SEGMENTS
        self._ratio = metrics.SNAPSHOT_PROGRESS.labels(self.name)
        self._scanning: set[int] = set()
        self._pages_read = 0
        self._item_count = 0

    # -- rows ------------------------------------------------------------------------

    async def load(self, stop: asyncio.Event) -> bool:
        rows = await retrying(
            stop, self.name, "loading checkpoints", lambda: self.sink.load_checkpoints(self.name)
        )
        if rows is None:
            return False
        self.rows = dict(rows)
        self.state = SnapshotState.parse(rows.get(SNAPSHOT_ID))
        if self.state is not None:
            self.progress = progress_of(rows, self.state.segments)
            if self.state.done is not None:
                self._ratio.set(1)
        return True

    def shard_rows(self) -> list[str]:
        """The stream's shard and lane rows (not `#start`, not the snapshot's)."""
        return sorted(cid for cid in self.rows if not cid.startswith("#"))

    def wanted(self) -> bool:
        """Whether a snapshot is to be taken or resumed now."""
        if self.state is None:
            return self.src.snapshot.mode != "none"
        if self.state.done is not None:
            return False
        if self.src.snapshot.mode == "none" and not self.state.resync:
            log.warning(
                "an unfinished snapshot is recorded but snapshot.mode is none: it is not resumed",
                stream=self.name,
            )
            return False
        return True

    async def _commit(self, stop: asyncio.Event, what: str, checkpoints: list[Checkpoint]) -> bool:
        tx = Transaction(stream=self.name, checkpoints=checkpoints)

        async def commit() -> bool:
            await self.sink.commit(tx)
            return True

        if await retrying(stop, self.name, what, commit) is None:
            return False
        for row in checkpoints:
            self.rows[row.shard_id] = row
        return True

    async def _delete(self, stop: asyncio.Event, what: str, ids: list[str]) -> bool:
        if not ids:
            return True

        async def delete() -> bool:
            await self.sink.delete_checkpoints(self.name, ids)
            return True

        if await retrying(stop, self.name, what, delete) is None:
            return False
        for cid in ids:
            self.rows.pop(cid, None)
        return True

    async def begin(self, stop: asyncio.Event, *, resync: bool = False) -> bool:
        """Record the stream position, then the snapshot: nothing is scanned before both commit."""
        stale = [cid for cid in self.rows if is_snapshot_row(cid) and cid != SNAPSHOT_ID]
        if not await self._delete(stop, "dropping an old snapshot's segment rows", stale):
            return False
        began = self.now() - timedelta(seconds=self.src.latest_margin_seconds)
        state = SnapshotState(began, self.src.snapshot.segments, resync=resync)
        rows = [state.row(self.name)]
        if resync or not self.shard_rows():
            rows.append(start_row(self.name, began))
        if not await self._commit(stop, "recording the snapshot's start", rows):
            return False
        self.state = state
        self.progress = progress_of({}, state.segments)
        log.info(
            "snapshot started"
            if not resync
            else "snapshot started to re-sync the table after a retention gap",
            stream=self.name,
            table=self.api.table,
            segments=state.segments,
            stream_from=began.isoformat(),
            max_read_units_per_second=self.src.snapshot.max_read_units_per_second,
        )
        return True

    # -- the scan --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> bool:
        """Begin or resume, scan to the end, mark done; False if `stop` came first."""
        if self.state is not None and self.state.done is not None:
            return True
        # DescribeTable first: its answer also measures AWS's clock, which `begin` reads.
        info = await retrying(stop, self.name, "DescribeTable", self.api.describe, table=self.api.table)
        if info is None:
            return False
        if self.state is None and not await self.begin(stop):
            return False
        state = self.state
        assert state is not None
        if state.segments != self.src.snapshot.segments:
            log.warning(
                "snapshot resumed with the segment count it began with",
                stream=self.name,
                segments=state.segments,
                configured=self.src.snapshot.segments,
            )
        if not await self._scan(stop, state, info):
            return False
        if state.resync and not await self._delete(stop, "dropping stale shard rows", self.shard_rows()):
            return False
        done = SnapshotState(state.began, state.segments, self.now(), state.resync)
        if not await self._commit(stop, "recording the snapshot done", [done.row(self.name)]):
            return False
        self.state = done
        self.completed_now = True
        self._ratio.set(1)
        self._publish()
        log.info(
            "snapshot complete; the stream is read from the position recorded before it",
            stream=self.name,
            items=sum(p.items for p in self.progress),
            began=state.began.isoformat(),
            took_seconds=round((done.done - state.began).total_seconds(), 1) if done.done else None,
        )
        return True

    async def resync(self, stop: asyncio.Event) -> bool:
        """A retention gap lost changes: take a new snapshot, then the stream from there."""
        if not await self.load(stop) or not await self.begin(stop, resync=True):
            return False
        return await self.run(stop)

    async def _scan(self, stop: asyncio.Event, state: SnapshotState, info: TableInfo) -> bool:
        self._item_count = info.item_count
        parts = SnapshotParts(
            self.cfg,
            self.api,
            info,
            ReadBudget(self.src.snapshot.max_read_units_per_second),
            self.sink,
            self.destination,
            self.preparer,
            self.stream_arn or info.arn,
            self.region,
            self.view_type,
            self.on_health,
            self._on_page,
        )
        scans = [SegmentScan(parts, p) for p in self.progress if not p.done]
        self._scanning = {s.progress.index for s in scans}
        self._publish()
        reporter = asyncio.create_task(self._report(stop, state, parts.budget))
        tasks = [asyncio.create_task(s.run(stop), name=f"{self.name}-{s.label}") for s in scans]
        try:
            done = await _all_or_first_error(tasks)
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
            self._scanning = set()
            self._publish()
        return done and all(p.done for p in self.progress)

    def _on_page(self, progress: SegmentProgress, items: int) -> None:
        self.progress[progress.index] = progress
        self._pages_read += 1
        if progress.done:
            self._publish()
        if self._item_count:
            self._ratio.set(sum(p.items for p in self.progress) / self._item_count)

    def _publish(self) -> None:
        counts = {"pending": 0, "scanning": 0, "done": 0}
        for p in self.progress:
            counts["done" if p.done else "scanning" if p.index in self._scanning else "pending"] += 1
        for state, n in counts.items():
            self._segments.labels(self.name, state).set(n)

    async def _report(self, stop: asyncio.Event, state: SnapshotState, budget: ReadBudget) -> None:
        """A progress line every few seconds; a warning once the scan nears the stream's retention."""
        started = time.monotonic()
        warned = False
        try:
            while not stop.is_set():
                await asyncio.sleep(PROGRESS_LOG_SECONDS)
                running = self._log_progress(state, budget, started)
                if running > LONG_SCAN_SECONDS and not warned:
                    warned = True
                    log.warning(
                        "the snapshot has run for over 20 hours; DynamoDB Streams keeps changes for 24: if "
                        "it lasts past that, the changes made early in the scan are lost (detected at "
                        "switch-over)",
                        stream=self.name,
                        began=state.began.isoformat(),
                    )
        finally:
            self._log_progress(state, budget, started)  # where the scan ended (or stopped)

    def _log_progress(self, state: SnapshotState, budget: ReadBudget, started: float) -> float:
        """One progress line; returns how long the snapshot has run (seconds since it began)."""
        items = sum(p.items for p in self.progress)
        running = (self.now() - state.began).total_seconds()
        elapsed = max(time.monotonic() - started, 1e-9)
        log.info(
            "snapshot progress",
            stream=self.name,
            items=items,
            table_items=self._item_count,
            percent=round(100 * items / self._item_count, 1) if self._item_count else None,
            segments_done=sum(1 for p in self.progress if p.done),
            segments=len(self.progress),
            pages=self._pages_read,
            read_units_per_second=round(budget.consumed / elapsed, 1),
            running_seconds=round(running),
        )
        return running


async def _all_or_first_error(tasks: list[asyncio.Task[bool]]) -> bool:
    """Wait for every task; the first one that fails cancels the others and its error is raised."""
    if not tasks:
        return True
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    return all(t.result() for t in done if not t.cancelled()) and not pending
