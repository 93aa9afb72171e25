"""Shard machinery shared by the Kinesis and DynamoDB Streams sources.

A source adapter implements the narrow `ShardApi` (list the shards, open an
iterator, read, build a `Record`); everything else is here, once, a file per
concept:

- `api`: the adapter's protocol, its result and error types, `StopReason`.
- `options`: a stream's shard settings.
- `positions`: checkpoint row ids (lane rows, the `#start` row), the
  contiguous committed prefix (`PrefixTracker`) and what a restart drops
  (`ResumeFloor`).
- `lineage`: which shards may be read now (children after every parent).
- `resume`: where each shard starts, from the checkpoint rows as loaded.
- `publisher`: the reader of one shard (`RecordsPublisher`; `PollingPublisher`
  is GetRecords with pacing, idle backoff, iterator expiry and throttling).
- `checkpointer`: a shard's progress and the per-lane checkpointer the failure
  policy commits with (checkpoint rows in the rows' transaction).
- `lanes`: batching, preparing and committing one lane's records.
- `worker`: one shard's life (`WorkerState`), from its first read to its
  SHARD_END tombstone, or to a stop with a reason.
- `fleet`: discovery, lineage scheduling, tombstones, the stored start, and
  what each worker's stop reason means for the stream.
- `retrying`: calls retried until they succeed or the stream stops.

Pure parts (`positions`, `lineage`, `resume`) do no I/O.
"""

from poller.sources.shards.api import (
    AFTER_SEQUENCE_NUMBER,
    AT_SEQUENCE_NUMBER,
    AT_TIMESTAMP,
    LATEST,
    TRIM_HORIZON,
    IteratorExpired,
    ReadResult,
    ShardApi,
    ShardInfo,
    ShardStopped,
    StartAt,
    StopReason,
    Throttled,
)
from poller.sources.shards.checkpointer import LaneCheckpointer, ShardProgress, ShardTransaction
from poller.sources.shards.fleet import ShardFleet
from poller.sources.shards.lanes import Lane, StreamParts, record_ends
from poller.sources.shards.lineage import Lineage
from poller.sources.shards.options import ShardOptions
from poller.sources.shards.positions import (
    START_ID,
    PrefixTracker,
    ResumeFloor,
    lane_checkpoint_id,
    lane_of,
    parse_lane_id,
    parse_start_row,
    start_row,
)
from poller.sources.shards.publisher import PollingPublisher, RecordsPublisher
from poller.sources.shards.retrying import retrying
from poller.sources.shards.worker import ShardWorker, WorkerState, can_move

__all__ = [
    "AFTER_SEQUENCE_NUMBER",
    "AT_SEQUENCE_NUMBER",
    "AT_TIMESTAMP",
    "LATEST",
    "START_ID",
    "TRIM_HORIZON",
    "IteratorExpired",
    "Lane",
    "LaneCheckpointer",
    "Lineage",
    "PollingPublisher",
    "PrefixTracker",
    "ReadResult",
    "RecordsPublisher",
    "ResumeFloor",
    "ShardApi",
    "ShardFleet",
    "ShardInfo",
    "ShardOptions",
    "ShardProgress",
    "ShardStopped",
    "ShardTransaction",
    "ShardWorker",
    "StartAt",
    "StopReason",
    "StreamParts",
    "Throttled",
    "WorkerState",
    "can_move",
    "lane_checkpoint_id",
    "lane_of",
    "parse_lane_id",
    "parse_start_row",
    "record_ends",
    "retrying",
    "start_row",
]
