"""What a stream service offers the shard machinery, and what it reports back.

An adapter (Kinesis, DynamoDB Streams) implements the four calls of `ShardApi`
and turns its service's errors into these: `Throttled`, `IteratorExpired`,
other `TransientError`s (retried for as long as it takes), `ShardStopped` (the
adapter stops reading a shard for a reason of its own, e.g. DynamoDB's
`on_trimmed: stop`), or `RecordError` (fatal to the stream: a missing stream,
a bad argument; the supervisor restarts it). Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from poller.records import Record, TransientError

TRIM_HORIZON = "TRIM_HORIZON"
LATEST = "LATEST"
AT_TIMESTAMP = "AT_TIMESTAMP"
AT_SEQUENCE_NUMBER = "AT_SEQUENCE_NUMBER"
AFTER_SEQUENCE_NUMBER = "AFTER_SEQUENCE_NUMBER"


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


@dataclass(frozen=True, slots=True)
class StartAt:
    """Where to open a shard iterator."""

    kind: str
    sequence_number: str | None = None
    timestamp: datetime | None = None


class StopReason(enum.StrEnum):
    """Why a shard worker stopped. Only SHARD_END means the shard is finished."""

    REQUESTED = "requested"  # shutdown, or the stream is stopping
    SHARD_END = "shard_end"  # read to its end; its SHARD_END checkpoint is committed
    TRIMMED = "trimmed"  # DynamoDB `on_trimmed: stop`: the stream stops
    LEASE_LOST = "lease_lost"  # another worker holds the shard's lease now


class Throttled(TransientError):
    """The service refused a call for rate (ProvisionedThroughputExceeded, KMS throttling)."""

    def __init__(self, operation: str, message: str):
        super().__init__(message)
        self.operation = operation


class IteratorExpired(Exception):
    """The shard iterator is too old; open a new one where reading stopped."""


class ShardStopped(Exception):
    """The adapter stops reading this shard: the worker stops with `reason`
    (what it was committing commits) and the fleet acts on the reason."""

    def __init__(self, reason: StopReason, message: str = ""):
        super().__init__(message or reason.value)
        self.reason = reason


class ShardApi(Protocol):
    """What a stream service must offer the shard machinery. Errors: `Throttled`,
    `IteratorExpired`, other `TransientError`s (retried), `ShardStopped`,
    `RecordError` (fatal to the stream: a missing stream, a bad argument)."""

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
