"""Where a stream's failed records are kept, read back for `failures list | replay`.

One class per destination, each answering the same questions: how many are
waiting, which ones (oldest first), and — for a replay — how a replayed record
is claimed *inside* the transaction that writes its rows, so that a second
replay, or two at once, write nothing twice:

- `table`: the failure row is deleted in that transaction (a concurrent replay
  waits on the row lock, then finds nothing to delete and writes nothing).
- `file` and `sqs`: the record's replay id (`replay:file:<sha256 of its line>`,
  `replay:sqs:<message id>`) goes into the processed-ids table in that
  transaction, as an SQS message id does; a queue message is deleted after the
  commit, and a file line stays (listings leave out the lines already replayed).
  The purge of an SQS stream's processed ids never drops a file line's mark
  (the line is there for ever), and a queue message's only after SQS's longest
  retention (`sink_api.QUEUE_REPLAY_MARK_SECONDS`).
- A file line that is no failure record (a torn line) is `unreadable`, named
  by its line number, and never replayed.

A record that fails again keeps its place with its new error: the row is
updated; a file gets a new line and a queue a new message, the old one being
marked or deleted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from poller.aws import aws_client, classify_aws, region_of
from poller.config import FileDestination, SqsDestination, StreamConfig, TableDestination
from poller.destinations import FileDest, SqsDest
from poller.failure_file import read_lines
from poller.operator.errors import OperatorError
from poller.operator.stores import Store, as_utc, failures_table
from poller.records import Failure, RecordError, TransientError
from poller.sink_api import FILE_REPLAY_MARK, QUEUE_REPLAY_MARK

LIST_RECEIVE_CALLS = 20


@dataclass(slots=True)
class FailureItem:
    """One failed record as its destination keeps it."""

    id: str  # table row id, file line number, or queue message id
    shard_id: str | None
    sequence_number: str | None
    sub_sequence: int
    message_id: str | None
    partition_key: str | None
    reason: str
    error_class: str | None
    error_message: str | None
    attempts: int
    payload: bytes
    first_failure_at: float
    created_at: datetime | None
    replay_id: str | None = None  # file and queue: the processed id that marks it replayed
    receipt: str | None = None  # queue: the receipt handle of this reading

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "shard_id": self.shard_id,
            "sequence_number": self.sequence_number,
            "sub_sequence": self.sub_sequence,
            "message_id": self.message_id,
            "reason": self.reason,
            "error_class": self.error_class,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "payload": self.payload.decode("utf-8", "backslashreplace"),
        }


def _payload(text: str | None, encoding: str | None) -> bytes:
    if text is None:
        return b""
    if encoding == "base64":
        return base64.b64decode(text)
    return text.encode("utf-8")


def _epoch(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    moment = as_utc(value)
    return moment.timestamp() if moment else time.time()


def _from_document(doc: dict[str, Any], item_id: str) -> FailureItem:
    """A failure as `Failure.as_dict` wrote it (file lines, queue bodies)."""
    return FailureItem(
        id=item_id,
        shard_id=doc.get("shard_id"),
        sequence_number=doc.get("sequence_number"),
        sub_sequence=int(doc.get("sub_sequence") or 0),
        message_id=doc.get("message_id"),
        partition_key=doc.get("partition_key"),
        reason=str(doc.get("reason", "")),
        error_class=doc.get("error_class"),
        error_message=doc.get("error_message"),
        attempts=int(doc.get("attempts") or 0),
        payload=_payload(doc.get("payload"), doc.get("payload_encoding")),
        first_failure_at=_epoch(doc.get("first_failure_at")),
        created_at=datetime.fromtimestamp(_epoch(doc.get("last_failure_at")), UTC),
    )


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A line of a failure file that is not a failure record (a torn line of a
    crash): reported by its number, never skipped in silence, never replayed."""

    path: str
    line: int
    error: str
    excerpt: str

    def text(self) -> str:
        return f"{self.path}:{self.line}: {self.error}: {self.excerpt}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "error": self.error, "excerpt": self.excerpt}


class FailureStore(Protocol):
    kind: str
    unreadable: list[Unreadable]  # what the last `items` or `count` could not read

    async def count(self) -> int | None: ...

    async def items(
        self, limit: int | None, ids: list[str] | None = None, hold: bool = False
    ) -> list[FailureItem]:
        """Oldest first; `hold`: kept from other readers while a replay runs."""
        ...

    async def claim(self, conn: Any, item: FailureItem) -> bool:
        """Inside the replay's transaction: False when it was replayed already."""
        ...

    async def replayed(self, item: FailureItem) -> None:
        """After the replay's commit."""
        ...

    async def failed_again(self, item: FailureItem, failure: Failure) -> None: ...

    async def close(self) -> None: ...


class TableFailures:
    kind = "table"

    def __init__(self, store: Store, stream: str):
        assert store.sink.failures_table
        self.store = store
        self.stream = stream
        self.table = store.table(store.sink.failures_table)
        self.unreadable: list[Unreadable] = []  # a row is always a record

    async def count(self) -> int | None:
        return await self.store.count_failures(self.stream)

    async def items(
        self, limit: int | None, ids: list[str] | None = None, hold: bool = False
    ) -> list[FailureItem]:
        sql = (
            f"SELECT id, shard_id, sequence_number, sub_sequence, message_id, reason, error_class, "
            f"error_message, payload, payload_encoding, attempts, first_failure_at, created_at "
            f"FROM {self.table} WHERE stream = ?"
        )
        args: list[Any] = [self.stream]
        if ids:
            try:
                numbers = [int(i) for i in ids]
            except ValueError as e:
                raise OperatorError(f"failure ids of a table are numbers: {e}") from None
            sql += f" AND id IN ({', '.join('?' for _ in numbers)})"
            args += numbers
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = await self.store.read(sql, *args)
        return [
            FailureItem(
                id=str(r[0]),
                shard_id=r[1],
                sequence_number=r[2],
                sub_sequence=int(r[3] or 0),
                message_id=r[4],
                partition_key=None,
                reason=r[5],
                error_class=r[6],
                error_message=r[7],
                attempts=int(r[10] or 0),
                payload=_payload(r[8], r[9]),
                first_failure_at=_epoch(r[11]),
                created_at=as_utc(r[12]),
            )
            for r in rows
        ]

    async def claim(self, conn: Any, item: FailureItem) -> bool:
        deleted = await self.store.execute(
            conn, f"DELETE FROM {self.table} WHERE stream = ? AND id = ?", self.stream, int(item.id)
        )
        return deleted == 1

    async def replayed(self, item: FailureItem) -> None:
        return None

    async def failed_again(self, item: FailureItem, failure: Failure) -> None:
        store = self.store
        try:
            async with store.sink.transaction() as conn:
                await store.execute(
                    conn,
                    f"UPDATE {self.table} SET reason = ?, error_class = ?, error_message = ?, attempts = ?, "
                    f"last_failure_at = ? WHERE stream = ? AND id = ?",
                    failure.reason,
                    failure.error_class,
                    failure.error_message[:4000],
                    failure.attempts,
                    store_time(store, failure.last_failure_at),
                    self.stream,
                    int(item.id),
                )
        except (TransientError, RecordError):
            raise
        except Exception as e:
            raise store.sink.classify(e) from e

    async def close(self) -> None:
        return None


def store_time(store: Store, epoch: float) -> Any:
    """A time as each driver takes it for a timestamp column."""
    moment = datetime.fromtimestamp(epoch, UTC)
    if store.kind == "mysql":
        return moment.replace(tzinfo=None)  # its sessions run in UTC
    if store.kind == "sqlite":
        return moment.isoformat()
    return moment


class _ProcessedIdMarks:
    """Replay ids kept in the processed-ids table, in the replay's transaction."""

    store: Store
    stream: str

    async def claim(self, conn: Any, item: FailureItem) -> bool:
        assert item.replay_id is not None
        sink = self.store.sink
        if await sink.existing_ids(conn, self.stream, [item.replay_id]):
            return False
        try:
            await sink.insert_ids(conn, self.stream, [item.replay_id])
        except Exception as e:
            if sink.is_integrity_error(e):
                raise ConcurrentReplay() from e
            raise
        return True

    async def pending(self, items: list[FailureItem]) -> list[FailureItem]:
        ids = [i.replay_id for i in items if i.replay_id]
        if not ids:
            return items
        done = await self.store.sink.processed_ids(self.stream, ids)
        return [i for i in items if i.replay_id not in done]

    async def mark(self, item: FailureItem) -> None:
        try:
            async with self.store.sink.transaction() as conn:
                await self.claim(conn, item)
        except ConcurrentReplay:
            pass


class ConcurrentReplay(Exception):
    """Another replay marked the same record meanwhile."""


class FileFailures(_ProcessedIdMarks):
    kind = "file"

    def __init__(self, store: Store, stream: str, path: str):
        self.store = store
        self.stream = stream
        self.path = Path(path)
        self._dest = FileDest(path)
        self.unreadable: list[Unreadable] = []

    async def _all(self) -> list[FailureItem]:
        try:
            lines = read_lines(self.path)
        except OSError as e:
            raise OperatorError(f"failure file {self.path}: {e.strerror}") from e
        items = []
        self.unreadable = []
        for line in lines:
            if line.doc is None:
                self.unreadable.append(Unreadable(str(self.path), line.number, line.error, line.excerpt()))
                continue
            stream = line.doc.get("stream")
            if not isinstance(stream, str):
                why = "not a failure record (no stream)"
                self.unreadable.append(Unreadable(str(self.path), line.number, why, line.excerpt()))
                continue
            if stream != self.stream:
                continue  # another stream's, in a file they share
            try:
                item = _from_document(line.doc, str(line.number))
            except (TypeError, ValueError) as e:  # a field of the wrong type, a payload not base64
                why = f"not a failure record ({type(e).__name__}: {e})"
                self.unreadable.append(Unreadable(str(self.path), line.number, why, line.excerpt()))
                continue
            item.replay_id = f"{FILE_REPLAY_MARK}{hashlib.sha256(line.raw).hexdigest()[:40]}"
            items.append(item)
        return await self.pending(items)

    async def count(self) -> int | None:
        return len(await self._all())

    async def items(
        self, limit: int | None, ids: list[str] | None = None, hold: bool = False
    ) -> list[FailureItem]:
        items = [i for i in await self._all() if not ids or i.id in ids]
        return items[:limit] if limit is not None else items

    async def replayed(self, item: FailureItem) -> None:
        return None

    async def failed_again(self, item: FailureItem, failure: Failure) -> None:
        await self._dest.send([failure])
        await self.mark(item)

    async def close(self) -> None:
        return None


def queue_arn_parts(url: str) -> tuple[str | None, str]:
    """(account or None, queue name) of a queue URL (`https://host/ACCOUNT/NAME`)."""
    parts = [p for p in urlsplit(url).path.split("/") if p]
    if len(parts) >= 2:
        return parts[-2], parts[-1]
    return None, parts[-1] if parts else url


class QueueFailures(_ProcessedIdMarks):
    """An SQS failure queue: read by receiving (a listing leaves the messages
    visible again at once), replayed by receiving, committing, then deleting."""

    kind = "sqs"

    def __init__(self, store: Store, stream: str, cfg: SqsDestination):
        self.store = store
        self.stream = stream
        self.cfg = cfg
        self._client: Any = None
        self._context: Any = None
        self._dest = SqsDest(cfg)
        self.unreadable: list[Unreadable] = []  # a body that is no record is another stream's

    async def _sqs(self) -> Any:
        if self._client is None:
            self._context = aws_client("sqs", region_of(self.cfg.region), self.cfg.endpoint_url)
            self._client = await self._context.__aenter__()
            await self._dest.open()
        return self._client

    async def close(self) -> None:
        if self._context is not None:
            await self._dest.close()
            await self._context.__aexit__(None, None, None)
            self._context = self._client = None

    async def count(self) -> int | None:
        client = await self._sqs()
        try:
            attrs = (
                await client.get_queue_attributes(
                    QueueUrl=self.cfg.queue_url,
                    AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
                )
            )["Attributes"]
        except Exception as e:
            raise OperatorError(f"failure queue {self.cfg.queue_url}: {classify_aws(e)}") from e
        return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(
            attrs.get("ApproximateNumberOfMessagesNotVisible", 0)
        )

    async def items(
        self, limit: int | None, ids: list[str] | None = None, hold: bool = False
    ) -> list[FailureItem]:
        """This stream's messages. A listing leaves them visible at once; a replay
        holds them (visibility 120 s) and gives the other streams' back."""
        client = await self._sqs()
        visibility = 120 if hold else 0
        seen: set[str] = set()
        items: list[FailureItem] = []
        others: list[str] = []
        for _ in range(LIST_RECEIVE_CALLS):
            try:
                resp = await client.receive_message(
                    QueueUrl=self.cfg.queue_url,
                    MaxNumberOfMessages=10,
                    VisibilityTimeout=visibility,
                    WaitTimeSeconds=1,
                )
            except Exception as e:
                raise OperatorError(f"failure queue {self.cfg.queue_url}: {classify_aws(e)}") from e
            messages = resp.get("Messages") or []
            fresh = [m for m in messages if m["MessageId"] not in seen]
            if not fresh:
                break
            for m in fresh:
                seen.add(m["MessageId"])
                try:
                    doc = json.loads(m.get("Body", ""))
                except ValueError:
                    doc = None
                mine = isinstance(doc, dict) and doc.get("stream") == self.stream
                wanted = mine and (not ids or m["MessageId"] in ids)
                if not wanted:
                    others.append(m["ReceiptHandle"])
                    continue
                assert isinstance(doc, dict)
                item = _from_document(doc, m["MessageId"])
                item.replay_id = f"{QUEUE_REPLAY_MARK}{m['MessageId']}"
                item.receipt = m["ReceiptHandle"]
                items.append(item)
            if limit is not None and len(items) >= limit:
                break
        if hold and others:
            await self._release(others)
        return items

    async def _release(self, receipts: list[str]) -> None:
        client = await self._sqs()
        for start in range(0, len(receipts), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0}
                for i, r in enumerate(receipts[start : start + 10])
            ]
            await client.change_message_visibility_batch(QueueUrl=self.cfg.queue_url, Entries=entries)

    async def replayed(self, item: FailureItem) -> None:
        client = await self._sqs()
        await client.delete_message(QueueUrl=self.cfg.queue_url, ReceiptHandle=item.receipt)

    async def failed_again(self, item: FailureItem, failure: Failure) -> None:
        await self._dest.send([failure])
        await self.replayed(item)


def failure_store(cfg: StreamConfig, store: Store) -> FailureStore:
    """The stream's failure destination, as the daemon writes it."""
    dest = cfg.on_failure
    if isinstance(dest, FileDestination):
        return FileFailures(store, cfg.name, dest.path)
    if isinstance(dest, SqsDestination):
        return QueueFailures(store, cfg.name, dest)
    if isinstance(dest, TableDestination) or failures_table(cfg):
        return TableFailures(store, cfg.name)
    raise OperatorError(
        f"{cfg.name}: no on_failure destination: failed messages go back to the queue, whose "
        "redrive policy moves them to its dead-letter queue (see `poller status`)"
    )
