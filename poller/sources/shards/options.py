"""A stream's shard settings, read once from its config.

The configured starting position applies only to a stream with no state yet;
`start_moment` is what the fleet stores (as the `#start` row) so that a
restart keeps to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from poller.config import DynamoDBSource, KinesisSource, StreamConfig
from poller.sources.shards.api import AT_TIMESTAMP, LATEST, TRIM_HORIZON, StartAt


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

    def start_moment(self, now: datetime) -> datetime | None:
        """Where the configured start lies in time, for a restart before every shard
        committed. LATEST is `now` (AWS's clock: `AwsClock`), taken back by a margin
        so a clock still a little off AWS's loses nothing (a restart may read that
        much before)."""
        if self.starting_position == AT_TIMESTAMP:
            return self.starting_timestamp
        if self.starting_position == LATEST:
            return now - timedelta(seconds=self.latest_margin)
        return None
