"""Retention gaps: records lost because a stored position fell behind what the
stream still holds. Both stream sources report them here, one way.

A gap is counted (`poller_retention_gaps_total{stream,shard}`) and logged once,
as an error naming what was lost: after which position, and the time range
(`lost_from` .. `lost_until`, ISO times; either end may be unknown, e.g. the
arrival time of a checkpointed record nobody read in this process). What
happens next is the stream's `on_retention_gap`: `continue` from the oldest
record still held, `stop` the stream, or `snapshot` (DynamoDB: re-sync the
table). The detectors live in the adapters (`kinesis.py`,
`dynamodb_streams.py`); `vanished` is the one check made before the shards
are opened: a shard with a running checkpoint that the listing no longer
shows was trimmed away before it was read to its end.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.records import Checkpoint, ShardState
from poller.sink_api import Sink
from poller.sources.shards.api import ShardApi, ShardInfo
from poller.sources.shards.positions import parse_lane_id
from poller.sources.shards.retrying import retrying

log = get_logger()

# DynamoDB Streams keeps records 24 hours; Kinesis says how long in DescribeStreamSummary.
DYNAMODB_RETENTION_SECONDS = 24 * 3600.0


def iso(moment: datetime | float | None) -> str | None:
    """A moment (datetime or epoch seconds) as ISO text in UTC; None stays None."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat()


def report_gap(
    stream: str,
    shard: str,
    message: str,
    *,
    policy: str,
    lost_from: datetime | float | None = None,
    lost_until: datetime | float | None = None,
    **context: Any,
) -> None:
    """Count and log one retention gap (the caller then applies `policy`)."""
    metrics.RETENTION_GAPS.labels(stream, shard).inc()
    log.error(
        message,
        stream=stream,
        shard=shard,
        retention_gap=True,
        lost_from=iso(lost_from),
        lost_until=iso(lost_until),
        on_retention_gap=policy,
        **context,
    )


def vanished(rows: dict[str, Checkpoint], listed: list[ShardInfo]) -> list[str]:
    """Shards with a running checkpoint of their own that the listing no longer
    shows: they were trimmed away before they were read to their end. Rows of
    the stream's own bookkeeping (`#start`, `#snapshot...`) and lane rows are
    not shards."""
    ids = {s.shard_id for s in listed}
    return sorted(
        shard_id
        for shard_id, c in rows.items()
        if not shard_id.startswith("#")
        and parse_lane_id(shard_id) is None
        and c.state == ShardState.RUNNING
        and shard_id not in ids
    )


def rows_of(rows: dict[str, Checkpoint], shard_ids: list[str]) -> list[str]:
    """The stored rows of these shards: their own and their lanes'."""
    wanted = set(shard_ids)
    out = []
    for cid in rows:
        lane = parse_lane_id(cid)
        if (lane[0] if lane is not None else cid) in wanted:
            out.append(cid)
    return sorted(out)


async def settle_vanished(
    stop: asyncio.Event,
    stream: str,
    sink: Sink,
    api: ShardApi,
    policy: str,
    retention_seconds: float | None,
) -> str | None:
    """Before the shards are opened: report each shard trimmed away while its
    checkpoint was running. Returns what to do: `continue` (the vanished shards'
    rows are dropped, so a restart does not report them again), `stop` or
    `snapshot` (their rows are kept: the operator, or the re-sync, deals with
    them); None if `stop` was set meanwhile."""
    rows = await retrying(stop, stream, "loading checkpoints", lambda: sink.load_checkpoints(stream))
    if rows is None:
        return None
    if not any(not cid.startswith("#") for cid in rows):
        return "continue"  # nothing checkpointed: nothing can have fallen behind
    listed = await retrying(stop, stream, "ListShards", api.list_shards)
    if listed is None:
        return None
    gone = vanished(rows, listed)
    if not gone:
        return "continue"
    boundary = time.time() - retention_seconds if retention_seconds else None
    for shard_id in gone:
        report_gap(
            stream,
            shard_id,
            "a shard with a running checkpoint is gone from the stream (trimmed away, past the "
            "stream's retention): its records after the checkpoint were lost",
            policy=policy,
            lost_until=boundary,
            lost_after_sequence=rows[shard_id].sequence_number,
        )
    if policy != "continue":
        return policy
    ids = rows_of(rows, gone)

    async def drop() -> str:
        await sink.delete_checkpoints(stream, ids)
        return "continue"

    return await retrying(stop, stream, "dropping the rows of vanished shards", drop)
