"""DynamoDB: a snapshot of the table, then its stream (`source.snapshot`).

A new read model needs the table's items, not only the last 24 hours of its
changes. The snapshot records the stream position first, scans the table
(parallel segments, a read-capacity budget, each segment resumable from its
own row written in the same transaction as its rows), and only then is the
stream read, from the recorded position: changes made during the scan are
applied after it and the target converges to the table.

- `rows`: the snapshot's checkpoint rows and what they say — pure.
- `budget`: the read-capacity budget the segments share.
- `segment`: one segment's pages, read, prepared and committed.
- `table`: the snapshot from its start to its switch-over, and re-syncs.
"""

from poller.sources.snapshot.budget import ReadBudget
from poller.sources.snapshot.rows import (
    SNAPSHOT_ID,
    SegmentProgress,
    SnapshotState,
    decode_key,
    encode_key,
    is_snapshot_row,
    progress_of,
    segment_id,
    switch_over_gap,
)
from poller.sources.snapshot.segment import ScanApi, SegmentScan, TableInfo
from poller.sources.snapshot.table import TableSnapshot

__all__ = [
    "SNAPSHOT_ID",
    "ReadBudget",
    "ScanApi",
    "SegmentProgress",
    "SegmentScan",
    "SnapshotState",
    "TableInfo",
    "TableSnapshot",
    "decode_key",
    "encode_key",
    "is_snapshot_row",
    "progress_of",
    "segment_id",
    "switch_over_gap",
]
