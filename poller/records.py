"""Types shared by every stage: a record as it flows source → sink, and its position.

A source builds `Record`s; decoders replace `data` (and may expand one record
into several, numbering them with `sub_sequence`); the mapper turns the
`normalized()` view into rows. Nothing here knows about AWS clients or SQL.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

KINESIS = "aws:kinesis"
DYNAMODB = "aws:dynamodb"
SQS = "aws:sqs"


@dataclass(slots=True)
class Record:
    """One unit of work.

    `data` starts as the raw payload bytes (Kinesis `Data`, SQS body encoded as
    UTF-8, DynamoDB: the plain-valued `new` image or `old` on REMOVE) and is
    replaced by each decoder. `raw_data` keeps the original bytes so a failed
    record reaches the failure destination with its exact payload.
    `raw` is the record exactly as the AWS API returned it (Lambda event shapes
    and filters are built from it).
    """

    source: str
    stream: str  # the configured stream name
    shard_id: str
    sequence_number: str
    data: Any
    raw_data: bytes = b""
    sub_sequence: int = 0
    partition_key: str | None = None
    arrival_time: float = 0.0  # epoch seconds
    meta: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    event_source_arn: str = ""
    region: str = ""

    @property
    def position(self) -> Position:
        return Position(self.shard_id, self.sequence_number, self.sub_sequence)

    def normalized(self) -> dict[str, Any]:
        """The view `columns` (JMESPath) and `key` expressions are evaluated against."""
        view: dict[str, Any] = {
            "data": self.data,
            "sequence_number": self.sequence_number,
            "sub_sequence": self.sub_sequence,
            "shard_id": self.shard_id,
            "arrival_time": self.arrival_time,
            "source": self.source,
            "stream": self.stream,
        }
        if self.partition_key is not None:
            view["partition_key"] = self.partition_key
        view.update(self.meta)
        return view

    def child(self, data: Any, sub_sequence: int, **meta: Any) -> Record:
        """A record expanded from this one (KPL user record, CloudWatch log event)."""
        merged = dict(self.meta)
        merged.update(meta)
        return Record(
            source=self.source,
            stream=self.stream,
            shard_id=self.shard_id,
            sequence_number=self.sequence_number,
            data=data,
            raw_data=self.raw_data,
            sub_sequence=sub_sequence,
            partition_key=meta.get("partition_key", self.partition_key),
            arrival_time=self.arrival_time,
            meta=merged,
            raw=self.raw,
            event_source_arn=self.event_source_arn,
            region=self.region,
        )


def seq_int(sequence_number: str) -> int:
    """Sequence numbers compare as integers (moto's are "1", "2"; AWS's have 56 digits)."""
    try:
        return int(sequence_number)
    except ValueError:
        return -1


@dataclass(frozen=True, slots=True, order=False)
class Position:
    """Where a shard has been processed to: (sequence number, sub-sequence)."""

    shard_id: str
    sequence_number: str
    sub_sequence: int = 0

    def key(self) -> tuple[int, int]:
        return (seq_int(self.sequence_number), self.sub_sequence)

    def is_after(self, other: Position | None) -> bool:
        return other is None or self.key() > other.key()


class ShardState(enum.StrEnum):
    RUNNING = "RUNNING"
    SHARD_END = "SHARD_END"


@dataclass(slots=True)
class Checkpoint:
    """A stored checkpoint row: last fully processed position of one shard."""

    stream: str
    shard_id: str
    sequence_number: str | None
    sub_sequence: int = 0
    state: ShardState = ShardState.RUNNING
    parent_shard_ids: tuple[str, ...] = ()

    @property
    def position(self) -> Position | None:
        if self.sequence_number is None:
            return None
        return Position(self.shard_id, self.sequence_number, self.sub_sequence)


class RecordError(Exception):
    """An error caused by the record itself: retried a bounded number of times,
    then isolated (bisection) and sent to the failure destination."""

    reason = "record_error"


class DecodeError(RecordError):
    reason = "decode_error"


class MappingError(RecordError):
    reason = "mapping_error"


class TransientError(Exception):
    """An error of the environment (network, database down, throttling):
    retried with backoff for as long as it takes; never fails a record."""


class PartialFailure(RecordError):
    """User code reported some records of a batch as failed (Lambda's
    `batchItemFailures`); the others succeeded. `item_ids` are the records'
    sequence numbers (streams) or message ids (SQS), as Lambda names them."""

    reason = "partial_batch_failure"

    def __init__(self, message: str, item_ids: set[str]):
        super().__init__(message)
        self.item_ids = item_ids
