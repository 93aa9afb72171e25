"""`poller status`: per stream and shard, what the stores and the source say now.

- A shard's state comes from the same `Lineage` the daemon schedules with, fed
  the stored checkpoints and the source's listing: `ended` (finished),
  `reading` (may be read now), `waiting_on_parent`.
- Lag is asked of the source itself: the first record after the checkpoint
  (or where the shard would start); its age (the daemon's iterator age, from
  its arrival time) and, on Kinesis, its `MillisBehindLatest`; 0 when there
  is none.
- Leases (with `coordination:`): each shard's lease owner, counter and state
  as seen now (`leases`: free, held, expired, ended), from the stream's lease
  store; without it the owner is empty (one worker reads every shard). With
  `lease_store: dynamodb` the checkpoints are read from the lease table too.
- SQS has no shards: the queue's (and its dead-letter queue's) visible, in
  flight and delayed messages.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from poller.aws import aws_client, classify_aws, region_of
from poller.config import SqsSource, StreamConfig
from poller.operator import leases
from poller.operator.checkpoints import open_checkpoints
from poller.operator.errors import OperatorError
from poller.operator.failure_stores import failure_store, queue_arn_parts
from poller.operator.lease_table import keeps_checkpoints
from poller.operator.render import table
from poller.operator.sources import first_unread, shard_api
from poller.operator.stores import CheckpointRow, open_store
from poller.records import ShardState
from poller.sources.shards.api import AFTER_SEQUENCE_NUMBER, AT_TIMESTAMP, TRIM_HORIZON, ShardInfo, StartAt
from poller.sources.shards.lineage import Lineage
from poller.sources.shards.positions import START_ID, parse_lane_id, parse_start_row


@dataclass(slots=True)
class ShardStatus:
    shard_id: str
    state: str
    lease_owner: str | None
    parents: list[str]
    sequence_number: str | None
    sub_sequence: int
    checkpointed_at: str | None
    lag_seconds: float | None  # age of the oldest unread record, 0 when none; None: not asked (ended)
    millis_behind_latest: int | None = None  # Kinesis, for the oldest unread record
    listed: bool = True
    lease_counter: int | None = None
    lease_state: str | None = None  # free | held | expired | ended; None: no lease (yet)
    lease_renewed_seconds_ago: float | None = None  # by the lease database's clock (SQL stores)
    lease_holder: str | None = None  # host and pid of the holding process, from its tenure token

    def show_lease(self, lease: leases.LeaseView | None) -> None:
        if lease is not None:
            self.lease_owner, self.lease_counter, self.lease_state = lease.owner, lease.counter, lease.state
            self.lease_renewed_seconds_ago = lease.renewed_ago
            self.lease_holder = lease.holder


@dataclass(slots=True)
class QueueCounts:
    url: str
    visible: int
    in_flight: int
    delayed: int


@dataclass(slots=True)
class StreamStatus:
    name: str
    source: str
    failure_destination: str
    failures: int | None
    start: str | None = None  # the stored LATEST / AT_TIMESTAMP / rewind moment
    lease_store: str | None = None  # with `coordination:`: where the leases are
    lease_seconds: float | None = None
    shards: list[ShardStatus] = field(default_factory=list)
    queue: QueueCounts | None = None
    dead_letter_queue: QueueCounts | None = None
    errors: list[str] = field(default_factory=list)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _start(row: CheckpointRow | None, since: datetime | None) -> StartAt:
    """Where the daemon would read this shard from next (as `ShardFleet` decides)."""
    if row is not None and row.checkpoint.sequence_number is not None:
        return StartAt(AFTER_SEQUENCE_NUMBER, row.checkpoint.sequence_number)
    if since is not None:
        return StartAt(AT_TIMESTAMP, timestamp=since)
    return StartAt(TRIM_HORIZON)


async def _shards(
    cfg: StreamConfig,
    rows: dict[str, CheckpointRow],
    status: StreamStatus,
    held: dict[str, leases.LeaseView],
) -> None:
    marker = rows.pop(START_ID, None)
    since = parse_start_row(marker.checkpoint) if marker is not None else None
    status.start = _iso(since)
    # Lane rows and bookkeeping rows (`#snapshot...`) are not shards of their own.
    rows = {k: v for k, v in rows.items() if not k.startswith("#")}
    own = {k: v for k, v in rows.items() if parse_lane_id(k) is None}
    lineage = Lineage([r.checkpoint for r in rows.values()])
    async with shard_api(cfg) as api:
        listed = await api.list_shards()
        lineage.update(listed)
        for shard in listed:
            status.shards.append(await _shard(api, shard, own.get(shard.shard_id), lineage, since))
    for shard_id, row in sorted(own.items()):
        if shard_id not in lineage.listed:  # trimmed away: only its stored row is left
            status.shards.append(_row_only(shard_id, row))
    for shown in status.shards:
        shown.show_lease(held.get(shown.shard_id))


async def _shard(
    api: Any, shard: ShardInfo, row: CheckpointRow | None, lineage: Lineage, since: datetime | None
) -> ShardStatus:
    if lineage.finished(shard.shard_id):
        state = "ended"
    elif lineage.ready(shard.shard_id):
        state = "reading"
    else:
        state = "waiting_on_parent"
    lag: float | None = None
    behind: int | None = None
    if state != "ended":
        found = await first_unread(api, shard, _start(row, since))
        if found is None:
            lag, behind = 0.0, 0
        else:
            # As the daemon's iterator age: how old the next record to process is.
            behind = found.millis_behind
            if found.arrival:
                lag = round(max(0.0, time.time() - found.arrival), 3)
            elif behind is not None:
                lag = behind / 1000
    c = row.checkpoint if row else None
    return ShardStatus(
        shard.shard_id,
        state,
        None,
        list(shard.parent_ids),
        c.sequence_number if c else None,
        c.sub_sequence if c else 0,
        _iso(row.updated_at) if row else None,
        lag,
        behind,
    )


def _row_only(shard_id: str, row: CheckpointRow) -> ShardStatus:
    c = row.checkpoint
    return ShardStatus(
        shard_id,
        "ended" if c.state == ShardState.SHARD_END else "gone",
        None,
        list(c.parent_shard_ids),
        c.sequence_number,
        c.sub_sequence,
        _iso(row.updated_at),
        None,
        listed=False,
    )


async def _queue_counts(client: Any, url: str) -> tuple[QueueCounts, dict[str, str]]:
    attrs: dict[str, str] = (
        await client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
                "RedrivePolicy",
            ],
        )
    )["Attributes"]
    counts = QueueCounts(
        url,
        int(attrs.get("ApproximateNumberOfMessages", 0)),
        int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
    )
    return counts, attrs


def dead_letter_url(queue_url: str, dead_letter_arn: str) -> str:
    """The DLQ's URL beside its queue's: same endpoint (VPC endpoint or emulator), the
    ARN's account and name — no GetQueueUrl, so no extra permission."""
    parts = dead_letter_arn.split(":")
    account, name = parts[4], parts[5]
    own_account, own_name = queue_arn_parts(queue_url)
    base = queue_url[: len(queue_url) - len(own_name)].rstrip("/")
    if own_account:
        base = base[: len(base) - len(own_account)] + account
    return f"{base}/{name}"


async def _queues(cfg: StreamConfig, status: StreamStatus) -> None:
    src = cfg.source
    assert isinstance(src, SqsSource)
    async with aws_client("sqs", region_of(src.region), src.endpoint_url) as client:
        try:
            status.queue, attrs = await _queue_counts(client, src.queue_url)
            redrive = json.loads(attrs.get("RedrivePolicy") or "{}")
            if redrive.get("deadLetterTargetArn"):
                dlq = dead_letter_url(src.queue_url, redrive["deadLetterTargetArn"])
                status.dead_letter_queue = (await _queue_counts(client, dlq))[0]
        except Exception as e:
            raise OperatorError(f"{cfg.name}: queue {src.queue_url}: {classify_aws(e)}") from e


async def stream_status(cfg: StreamConfig) -> StreamStatus:
    dest = cfg.on_failure.type if cfg.on_failure else None
    status = StreamStatus(cfg.name, cfg.source.type, dest or "", None)
    rows: dict[str, CheckpointRow] = {}
    try:
        async with open_store(cfg) as store:
            if cfg.source.type != "sqs" and not keeps_checkpoints(cfg):
                rows = await store.checkpoint_rows(cfg.name)
            try:
                failures = failure_store(cfg, store)
            except OperatorError:
                failures = None  # SQS with no destination: its DLQ is shown instead
            if failures is not None:
                status.failure_destination = failures.kind
                try:
                    status.failures = await failures.count()
                finally:
                    await failures.close()
    except OperatorError as e:
        status.errors.append(str(e))
    held: dict[str, leases.LeaseView] = {}
    if cfg.coordination is not None:
        status.lease_seconds = cfg.coordination.lease_seconds
        try:
            status.lease_store = leases.where(cfg)
            if keeps_checkpoints(cfg):
                async with open_checkpoints(cfg) as kept:
                    rows = await kept.checkpoint_rows(cfg.name)
            held = await leases.observe(cfg)
        except OperatorError as e:
            status.errors.append(str(e))
    try:
        if isinstance(cfg.source, SqsSource):
            await _queues(cfg, status)
        else:
            await _shards(cfg, rows, status, held)
    except OperatorError as e:
        status.errors.append(str(e))
    return status


def as_json(statuses: list[StreamStatus]) -> str:
    return json.dumps({"streams": [asdict(s) for s in statuses]}, indent=2, default=str)


def _lag(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _lease(sh: ShardStatus) -> str:
    """e.g. `held #12, 1.3s ago, web-1 pid 7`: state, counter, (SQL stores) the age of its
    last write, and the holding process."""
    if sh.lease_state is None:
        return "-"
    ago = f", {sh.lease_renewed_seconds_ago:.1f}s ago" if sh.lease_renewed_seconds_ago is not None else ""
    holder = f", {sh.lease_holder}" if sh.lease_holder else ""
    return f"{sh.lease_state} #{sh.lease_counter}{ago}{holder}"


def as_text(statuses: list[StreamStatus]) -> str:
    out: list[str] = []
    for s in statuses:
        failures = "-" if s.failures is None else str(s.failures)
        where = f" ({s.failure_destination})" if s.failure_destination else ""
        out.append(f"stream {s.name} ({s.source}): failures {failures}{where}")
        if s.start:
            out.append(f"  start position: {s.start}")
        if s.lease_store:
            out.append(f"  leases: {s.lease_store}, lease_seconds {s.lease_seconds:g}")
        if s.shards:
            headers = ["SHARD", "STATE", "OWNER", "CHECKPOINT", "CHECKPOINTED AT", "LAG"]
            rows = [
                [
                    sh.shard_id,
                    sh.state,
                    sh.lease_owner or "-",
                    sh.sequence_number or "-",
                    sh.checkpointed_at or "-",
                    _lag(sh.lag_seconds),
                ]
                for sh in s.shards
            ]
            if s.lease_store:
                headers.insert(3, "LEASE")
                for row, sh in zip(rows, s.shards, strict=True):
                    row.insert(3, _lease(sh))
            out.append(table(headers, rows, "  "))
        queues = [("queue", s.queue), ("dead-letter queue", s.dead_letter_queue)]
        rows = [[name, q.url, str(q.visible), str(q.in_flight), str(q.delayed)] for name, q in queues if q]
        if rows:
            out.append(table(["", "URL", "VISIBLE", "IN FLIGHT", "DELAYED"], rows, "  "))
        out.extend(f"  error: {e}" for e in s.errors)
    return "\n".join(out)
