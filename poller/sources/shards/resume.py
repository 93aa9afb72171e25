"""Where each shard of a stream resumes, from its checkpoint rows as loaded. Pure.

- A shard with a checkpoint resumes AT_SEQUENCE_NUMBER (what was committed is
  then dropped), with the floor its lanes' own rows give.
- The configured position holds only for the shards of a stream with no
  state at all (`initial`); it is stored first as the `#start` row when it is
  LATEST or AT_TIMESTAMP.
- After that, a shard with no checkpoint starts at the stored moment (`since`),
  or at TRIM_HORIZON. Children always start at TRIM_HORIZON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from poller.records import Checkpoint, Position
from poller.sources.shards.api import AT_SEQUENCE_NUMBER, AT_TIMESTAMP, TRIM_HORIZON, ShardInfo, StartAt
from poller.sources.shards.options import ShardOptions
from poller.sources.shards.positions import START_ID, ResumeFloor, parse_lane_id


@dataclass(slots=True)
class ResumePoints:
    rows: dict[str, Checkpoint] = field(default_factory=dict)  # shard rows as loaded
    lane_rows: dict[str, dict[str, Checkpoint]] = field(default_factory=dict)  # shard → its lane rows
    since: datetime | None = None  # the stored LATEST / AT_TIMESTAMP start
    initial: set[str] | None = None  # shards listed first, when the stream had no state
    fresh: bool = False  # the stream had no state at all

    def load(self, loaded: dict[str, Checkpoint]) -> tuple[dict[str, Checkpoint], Checkpoint | None]:
        """Keep the shard and lane rows of `loaded`; returns them (lane rows
        included: the lineage reads both) and the `#start` row, if any. Other `#`
        rows are the stream's own (a DynamoDB snapshot's): not shards."""
        shards = {k: v for k, v in loaded.items() if not k.startswith("#")}
        self.rows, self.lane_rows = {}, {}
        for checkpoint_id, c in shards.items():
            lane = parse_lane_id(checkpoint_id)
            if lane is None:
                self.rows[checkpoint_id] = c
            else:
                self.lane_rows.setdefault(lane[0], {})[checkpoint_id] = c
        return shards, loaded.get(START_ID)

    def start_of(
        self, shard: ShardInfo, opts: ShardOptions, leased: bool
    ) -> tuple[StartAt, Position | None, ResumeFloor | None]:
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
            return opts.initial_start(), None, floor
        if self.since is not None and (not self.fresh or leased):
            # After a restart: a shard that was quiet is not replayed from its oldest
            # record, and a child, newer than the start, is read whole all the same.
            return StartAt(AT_TIMESTAMP, timestamp=self.since), None, floor
        return StartAt(TRIM_HORIZON), None, floor
