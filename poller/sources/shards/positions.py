"""Checkpoint rows and the positions they hold: pure, no I/O.

- A shard's own row holds its contiguous committed prefix (`PrefixTracker`):
  it never passes uncommitted work and only moves forward.
- With several lanes, each lane also keeps a row `shardId-…#lane-i-of-N`, so
  records a lane committed ahead of the prefix are not written again after a
  crash (`ResumeFloor`). Records go to lanes by crc32 of their partition key,
  stable across restarts.
- The row `#start` keeps a LATEST / AT_TIMESTAMP start (ISO time in
  `sequence_number`) for shards that committed nothing before a restart.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from poller.records import Checkpoint, Position, Record

_LANE_MARK = "#lane-"

# The row that keeps a LATEST or AT_TIMESTAMP start: written before the first
# shard is opened, so a shard that had committed nothing before a restart starts
# from that moment instead of its oldest record.
START_ID = "#start"


def lane_of(partition_key: str | None, lanes: int) -> int:
    """A stable lane for a key (crc32, not `hash()`: a restart must route the same way)."""
    if lanes <= 1:
        return 0
    return zlib.crc32((partition_key or "").encode()) % lanes


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
