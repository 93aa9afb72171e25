"""One segment of a parallel Scan: its pages, read one ahead, each committed
with the segment's row in the same transaction.

Invariants:
- a page's items become records of INSERTs (`snapshot_record`) and go through
  the stream's decode → filter → map → coerce path (`Preparer`) and its
  failure policy, as stream records do: a bad item goes to the failure
  destination, never blocks the segment;
- the segment's row goes in the transaction that holds the page's last unit
  (a bisected page commits its halves in order, the row with the last), so it
  never claims a page whose rows are not all committed: a restart reads that
  page again, and never skips one;
- one page is read ahead while the previous one commits; every Scan waits
  for its turn in the shared `ReadBudget` first, and throttling backs off
  (capped exponential with jitter, counted in `poller_throttles_total`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from poller.aws import classify_aws, error_code
from poller.config import StreamConfig
from poller.observability import metrics
from poller.processing.failures import Decision, FailurePolicy, Unit, count_failures
from poller.processing.pipeline import Preparer
from poller.records import Checkpoint, Failure, RecordError, TransientError
from poller.rows import RowOp
from poller.sink_api import FailureDestination, Sink, Transaction
from poller.sources.dynamodb_records import snapshot_record
from poller.sources.shards import Throttled, retrying
from poller.sources.snapshot.budget import ReadBudget
from poller.sources.snapshot.rows import SegmentProgress

_THROTTLED = {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}


@dataclass(frozen=True, slots=True)
class TableInfo:
    name: str
    arn: str
    key_attributes: list[str]
    item_count: int


class ScanApi:
    """DescribeTable and Scan, with DynamoDB's errors mapped onto poller's: throttling
    is `Throttled`, a missing table transient (it may be being restored), a bad
    request a `RecordError` (fatal to the stream)."""

    def __init__(self, client: Any, table: str, *, consistent: bool):
        self.client = client
        self.table = table
        self.consistent = consistent

    async def _call(self, operation: str, method: Any, **kwargs: Any) -> Any:
        try:
            return await method(**kwargs)
        except Exception as e:
            code = error_code(e)
            if code in _THROTTLED:
                raise Throttled(operation, f"{operation}: {code}: {e}") from e
            if code == "ResourceNotFoundException":
                raise TransientError(f"table {self.table!r} not found: {e}") from e
            raise classify_aws(e) from e

    async def describe(self) -> TableInfo:
        resp = await self._call("DescribeTable", self.client.describe_table, TableName=self.table)
        t = resp["Table"]
        keys = [k["AttributeName"] for k in t.get("KeySchema", [])]
        return TableInfo(
            str(t.get("TableName", self.table)), str(t.get("TableArn", "")), keys, int(t.get("ItemCount", 0))
        )

    async def page(
        self, segment: int, total: int, start_key: dict[str, Any] | None, limit: int
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Segment": segment,
            "TotalSegments": total,
            "Limit": limit,
            "ConsistentRead": self.consistent,
            "ReturnConsumedCapacity": "TOTAL",
        }
        if start_key is not None:
            kwargs["ExclusiveStartKey"] = start_key
        resp: dict[str, Any] = await self._call("Scan", self.client.scan, **kwargs)
        return resp


def consumed_units(resp: dict[str, Any]) -> float:
    capacity = resp.get("ConsumedCapacity") or {}
    units = capacity.get("CapacityUnits") if isinstance(capacity, dict) else None
    return float(units) if isinstance(units, int | float) else 0.0


@dataclass(slots=True)
class SnapshotParts:
    """What every segment of one snapshot shares."""

    cfg: StreamConfig
    api: ScanApi
    table: TableInfo
    budget: ReadBudget
    sink: Sink
    destination: FailureDestination
    preparer: Preparer
    source_arn: str
    region: str
    view_type: str
    on_health: Callable[[bool], None]
    on_page: Callable[[SegmentProgress, int], None]  # a page committed: the segment's progress, its items


class _PageTransactions:
    """Builds the transactions of one page for the failure policy: its rows and
    failures, and the segment's row in the one that holds the page's last unit."""

    def __init__(self, stream: str, failures_in_transaction: bool):
        self.stream = stream
        self.failures_in_transaction = failures_in_transaction
        self.last = -1  # index of the page's last unit
        self.row: Checkpoint | None = None  # the segment's row once this page commits (None: as it was)

    def build_tx(self, active: list[Unit]) -> Transaction:
        ops: list[RowOp] = []
        failures: list[Failure] = []
        for u in active:
            if u.failure is None:
                ops.extend(u.ops)
            elif self.failures_in_transaction:
                failures.append(u.failure)
        checkpoints = [self.row] if self.row is not None and active[-1].index == self.last else []
        return Transaction(stream=self.stream, ops=ops, failures=failures, checkpoints=checkpoints)


class SegmentScan:
    """Scans one segment from its stored progress to its end."""

    def __init__(self, parts: SnapshotParts, progress: SegmentProgress):
        self.p = parts
        self.progress = progress
        self.name = parts.cfg.name
        self.label = progress.checkpoint_id
        self.tx = _PageTransactions(self.name, parts.destination.in_transaction)
        self.policy = self._policy()
        self._pages = metrics.SNAPSHOT_PAGES.labels(self.name)
        self._units = metrics.SNAPSHOT_READ_UNITS.labels(self.name)
        self._items = metrics.SNAPSHOT_ITEMS.labels(self.name)

    def _policy(self) -> FailurePolicy:
        max_attempts = self.p.cfg.retry.max_attempts

        def decide(u: Unit, _: RecordError) -> Decision:
            return "fail" if u.attempts >= max_attempts else "retry"

        return FailurePolicy(
            self.name,
            self.p.cfg.retry,
            self.p.sink,
            self.p.destination,
            build_tx=self.tx.build_tx,
            decide=decide,
            on_health=self.p.on_health,
            shard=self.label,
        )

    async def run(self, stop: asyncio.Event) -> bool:
        """True once the segment has ended; False if `stop` came first."""
        if self.progress.done:
            return True
        pending: asyncio.Future[tuple[list[dict[str, Any]], dict[str, Any] | None] | None] | None
        pending = asyncio.ensure_future(self._read(stop, self.progress.start_key))
        try:
            while pending is not None:
                page = await pending
                pending = None
                if page is None:
                    return False
                items, last_key = page
                if last_key is not None and not stop.is_set():
                    pending = asyncio.ensure_future(self._read(stop, last_key))
                progress = self.progress.after_page(len(items), last_key)
                if not await self._commit(stop, items, progress):
                    return False
                self.progress = progress
                self.p.on_page(progress, len(items))
                if progress.done:
                    return True
            return False
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    async def _read(
        self, stop: asyncio.Event, start_key: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None] | None:
        budget = self.p.budget
        reserved = await budget.reserve(stop)
        if reserved is None:
            return None
        p = self.progress

        def scan() -> Any:
            return self.p.api.page(p.index, p.total, start_key, self.p.cfg.batch.size)

        try:
            resp = await retrying(stop, self.name, "Scan", scan, segment=self.label)
        except BaseException:
            budget.release(reserved)
            raise
        if resp is None:
            budget.release(reserved)
            return None
        units = consumed_units(resp)
        budget.spent(reserved, units)
        self._pages.inc()
        self._units.inc(units)
        return list(resp.get("Items") or []), resp.get("LastEvaluatedKey") or None

    async def _commit(
        self, stop: asyncio.Event, items: list[dict[str, Any]], progress: SegmentProgress
    ) -> bool:
        p = self.p
        read_at = time.time()
        keys = p.table.key_attributes
        records = [
            snapshot_record(
                item,
                keys,
                stream=self.name,
                shard_id=self.label,
                source_arn=p.source_arn,
                region=p.region,
                read_at=read_at,
                view_type=p.view_type,
            )
            for item in items
        ]
        units = p.preparer.stream_units(records)
        self.tx.row = progress.row(self.name)
        if not units:
            if self.tx.row is None:
                return True
            row = Transaction(stream=self.name, checkpoints=[self.tx.row])

            async def commit_row() -> bool:
                await p.sink.commit(row)
                return True

            return await retrying(stop, self.name, "storing snapshot progress", commit_row) is not None
        self.tx.last = units[-1].index
        await self.policy.commit(units)
        count_failures(self.name, p.destination, units)
        self._items.inc(len(items))
        return True
