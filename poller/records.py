"""Types shared by every stage: a record as it flows source → sink, and its position.

A source builds `Record`s; decoders replace `data` (and may expand one record
into several, numbering them with `sub_sequence`); the mapper turns the
`normalized()` view into rows. Nothing here knows about AWS clients or SQL.
"""

from __future__ import annotations

import base64
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


MAX_ERROR_MESSAGE = 4000


def describe_error(error: BaseException, limit: int = MAX_ERROR_MESSAGE) -> str:
    """`str(error)` made safe to store and log: bounded in length, and never
    raising itself (an exception's `__str__` is arbitrary code)."""
    try:
        text = str(error)
    except Exception:
        text = f"<{type(error).__name__}: message unavailable>"
    if len(text) > limit:
        text = f"{text[: limit - 40]}... ({len(text)} characters)"
    return text


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


class LockWaitTimeout(TransientError):
    """A statement of a commit waited for a lock another transaction held past the
    sink's lock-wait bound (`poller.sinks.session_bounds`): most often a replica
    frozen mid-commit, until the database ends its session. Retried like any
    transient error, and counted apart (`poller_lock_waits_total`)."""


class PartialFailure(RecordError):
    """User code reported some records of a batch as failed (Lambda's
    `batchItemFailures`); the others succeeded. `item_ids` are the records'
    sequence numbers (streams) or message ids (SQS), as Lambda names them."""

    reason = "partial_batch_failure"

    def __init__(self, message: str, item_ids: set[str]):
        super().__init__(message)
        self.item_ids = item_ids


def contained(error: Exception, stage: str) -> RecordError:
    """The record error standing for `error`, raised by `stage` for one record:
    whatever a record's content makes any stage raise is that record's failure."""
    if isinstance(error, RecordError):
        return error
    wrapped = RecordError(f"{stage} failed: {type(error).__name__}: {describe_error(error)}")
    wrapped.reason = f"{stage}_error"
    return wrapped


def _plain_text(value: str, limit: int) -> str:
    """ASCII only (anything else backslash-escaped), no control characters, at
    most `limit` characters: a form every destination column accepts."""
    text = value.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(slots=True)
class Failure:
    """A record that goes to the on-failure destination, with why.

    `safe` is set when a destination refused this failure as it was: the
    payload is then always base64 and every text field plain, bounded ASCII.
    `stored_at` names the fallback file that holds it when even that form was
    refused, so it is never lost and never blocks the stream.
    """

    record: Record
    reason: str
    error_class: str
    error_message: str
    attempts: int
    first_failure_at: float
    last_failure_at: float
    dedup_id: str | None = None
    safe: bool = False
    stored_at: str | None = None

    def payload_text(self) -> tuple[str, str]:
        """(payload, encoding): UTF-8 text when it is text a database can hold
        (no NUL), else base64."""
        raw = self.record.raw_data
        if not self.safe and b"\x00" not in raw:
            try:
                return raw.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                pass
        return base64.b64encode(raw).decode(), "base64"

    def text(self, value: str | None, limit: int) -> str | None:
        """A text field as stored: NULs never (no database text type holds
        them), and in safe form plain ASCII within `limit` characters."""
        if value is None:
            return None
        if self.safe:
            return _plain_text(value, limit)
        return value.replace("\x00", "\\x00") if "\x00" in value else value

    def as_dict(self) -> dict[str, Any]:
        payload, encoding = self.payload_text()
        r = self.record
        return {
            "stream": r.stream,
            "source": r.source,
            "shard_id": r.shard_id,
            "sequence_number": r.sequence_number,
            "sub_sequence": r.sub_sequence,
            "partition_key": r.partition_key,
            "message_id": r.meta.get("message_id"),
            "reason": self.reason,
            "error_class": self.error_class,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "first_failure_at": self.first_failure_at,
            "last_failure_at": self.last_failure_at,
            "payload": payload,
            "payload_encoding": encoding,
        }
