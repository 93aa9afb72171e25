"""`poller failures replay`: failed records back through decode → filter → map →
sink, each exactly once.

Each failure is replayed on its own, all or nothing: its record is rebuilt from
what the destination kept (payload, shard, sequence, message id), prepared by
the stream's own `Preparer` (decoders, filters, mapping and coercion as the
daemon runs them), and committed in one transaction that also claims the
failure (`FailureStore.claim`). A record whose error comes back keeps its
place with the new error and writes nothing; one the filters now drop is
claimed with no rows. A transient error (the database down) stops the replay:
what was replayed stays replayed, the rest can be replayed later.

Handler and lambda sinks: the record is handed to user code as a one-record
Lambda event while the failure's claim is held, so a second replay, or one
running at the same time (it waits on the claim), does not deliver it again;
if user code fails (an exception, or the record named in `batchItemFailures`)
nothing is claimed and the failure stays with its new error. Only a crash
between user code's answer and the claim's commit delivers it once more on the
next replay: at least once, as Lambda. On PostgreSQL and MySQL the claim is the
bookkeeping store's transaction itself, open while user code runs (its row
locks stop no daemon). On SQLite, whose one write lock would stop a daemon on
the same file for as long as the function runs, it is three steps under a file
lock instead (`replay_lock`): a short transaction asks whether the failure is
claimed, user code runs with no transaction open, a second short transaction
claims it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from poller.config import (
    DynamoDBSource,
    HandlerSinkConfig,
    KinesisSource,
    LambdaSinkConfig,
    StreamConfig,
)
from poller.operator.errors import OperatorError
from poller.operator.failure_stores import (
    ConcurrentReplay,
    FailureItem,
    FailureStore,
    Unreadable,
    failure_store,
)
from poller.operator.guard import Guard
from poller.operator.replay_lock import replay_lock
from poller.operator.stores import Store, failures_table, opened
from poller.processing.failures import Unit
from poller.processing.mapping import last_op_per_key
from poller.processing.pipeline import Preparer
from poller.records import KINESIS, Failure, Record, RecordError, TransientError, describe_error
from poller.sink_api import Sink
from poller.sinks.base import SqlSink
from poller.sinks.daemons import bookkeeping_store
from poller.sinks.factory import build_sink
from poller.sinks.handler import EventSink
from poller.sinks.sqlite import SqliteSink

# Failures of the whole source record; any other names one decoded child of it
# (by its sub-sequence), and only that child is written again.
_WHOLE_RECORD = {"decode_error", "filter_error", "record_age"}
# Waiting for another replay's lock: its delivery (the sink's timeout) and two short transactions.
_LOCK_WAIT_MARGIN_SECONDS = 60


@dataclass(slots=True)
class ReplayReport:
    replayed: list[str] = field(default_factory=list)
    filtered: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id → the new error
    not_found: list[str] = field(default_factory=list)  # asked for, and not (or no longer) there
    unreadable: list[Unreadable] = field(default_factory=list)  # failure-file lines that are no record
    guard: Guard | None = None  # what --force replayed over

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "filtered_out": self.filtered,
            "already_replayed": self.already,
            "failed_again": self.failed,
            "not_found": self.not_found,
            "unreadable": [u.as_dict() for u in self.unreadable],
        }


def rebuild(cfg: StreamConfig, item: FailureItem) -> Record:
    """The record as its source would hand it over again, from what the destination kept."""
    src = cfg.source
    shard = item.shard_id or ""
    sequence = item.sequence_number or item.message_id or ""
    if isinstance(src, KinesisSource):
        raw = {"SequenceNumber": sequence, "PartitionKey": item.partition_key or "", "Data": item.payload}
        return Record(
            KINESIS, cfg.name, shard, sequence, item.payload, item.payload, 0, item.partition_key, raw=raw
        )
    if isinstance(src, DynamoDBSource):
        from poller.sources.dynamodb_records import to_record

        try:
            event = json.loads(item.payload)  # kept in Lambda's record form
        except ValueError:
            event = None
        if isinstance(event, dict):
            return to_record(event, stream=cfg.name, shard_id=shard, stream_arn=src.stream_arn or "")
        return Record("aws:dynamodb", cfg.name, shard, sequence, item.payload, item.payload)
    from poller.sources.sqs import to_record as sqs_record

    attributes = {"MessageGroupId": shard} if shard else {}
    message = {
        "MessageId": item.message_id or sequence,
        "Body": item.payload.decode("utf-8", "surrogateescape"),
        "Attributes": attributes,
    }
    return sqs_record(message, cfg.name, "", src.region or "")


def _chosen(units: list[Unit], item: FailureItem) -> list[Unit]:
    if item.reason in _WHOLE_RECORD or len(units) <= 1:
        return units
    child = [u for u in units if getattr(u.token, "sub_sequence", None) == item.sub_sequence]
    return child or units


class Replayer:
    """Replays failures into `sink`: rows for a database sink, deliveries for user code."""

    def __init__(self, cfg: StreamConfig, sink: Sink, failures: FailureStore):
        self.cfg = cfg
        self.sink = sink
        self.failures = failures
        self.preparer = Preparer(cfg, sink)
        self.store = claims_store(sink)

    async def replay(self, item: FailureItem, report: ReplayReport) -> None:
        units = _chosen(self.preparer.stream_units([rebuild(self.cfg, item)]), item)
        failed = next((u.failure for u in units if u.failure is not None), None)
        if failed is not None:
            await self._failed_again(item, failed.reason, failed.error_class, failed.error_message, report)
            return
        live = [u for u in units if not u.filtered]
        try:
            claimed = await self._commit(item, live)
        except TransientError as e:
            raise OperatorError(f"replay stopped at failure {item.id}: {e}") from e
        except RecordError as e:
            await self._failed_again(item, e.reason, type(e).__name__, describe_error(e), report)
            return
        await self.failures.replayed(item)
        if not claimed:
            report.already.append(item.id)
        elif self._writes(live):
            report.replayed.append(item.id)
        else:
            report.filtered.append(item.id)

    def _writes(self, live: list[Unit]) -> bool:
        if isinstance(self.sink, EventSink):
            return bool(live)
        return any(u.ops for u in live)

    async def _commit(self, item: FailureItem, live: list[Unit]) -> bool:
        """Claim the failure and write (or deliver) it, in one transaction — on SQLite, user
        code in three steps instead (`_deliver_outside_the_write_lock`); False if it was
        claimed already."""
        store = self.store
        if isinstance(self.sink, EventSink) and isinstance(store, SqliteSink):
            return await self._deliver_outside_the_write_lock(self.sink, store, item, live)
        try:
            async with store.transaction() as conn:
                if not await self.failures.claim(conn, item):
                    return False
                if isinstance(self.sink, EventSink):
                    await self._deliver(self.sink, [u.source for u in live])
                else:
                    await self._write(conn, [op for u in live for op in u.ops])
                return True
        except (TransientError, RecordError):
            raise
        except ConcurrentReplay:
            return False
        except Exception as e:
            raise store.classify(e) from e

    async def _deliver_outside_the_write_lock(
        self, sink: EventSink, store: SqliteSink, item: FailureItem, live: list[Unit]
    ) -> bool:
        """SQLite: is it claimed? (a short transaction), user code, the claim (another),
        all under the replay lock rather than the store's write lock (`replay_lock`)."""
        user_code = self.cfg.sink
        assert isinstance(user_code, HandlerSinkConfig | LambdaSinkConfig)
        wait = user_code.timeout_seconds + _LOCK_WAIT_MARGIN_SECONDS
        async with replay_lock(store.path, wait):
            if not await self._claim(item, keep=False):
                return False
            await self._deliver(sink, [u.source for u in live])
            # Only a replay that does not take the lock could have claimed it meanwhile.
            return await self._claim(item, keep=True)

    async def _claim(self, item: FailureItem, keep: bool) -> bool:
        """Claim the failure in a transaction of its own; `keep=False` rolls the claim
        back (a question: would it be claimed?)."""
        try:
            async with self.store.transaction() as conn:
                claimed = await self.failures.claim(conn, item)
                if claimed and not keep:
                    raise _Probed()
                return claimed
        except _Probed:
            return True
        except (TransientError, RecordError):
            raise
        except ConcurrentReplay:
            return False
        except Exception as e:
            raise self.store.classify(e) from e

    async def _write(self, conn: Any, ops: list[Any]) -> None:
        final = last_op_per_key(ops)
        upserts = [op.values for op in final if op.values is not None]
        deletes = [op.key for op in final if op.values is None]
        if upserts:
            await self.store.upsert(conn, upserts)
        if deletes:
            await self.store.delete(conn, deletes)

    @staticmethod
    async def _deliver(sink: EventSink, records: list[Record]) -> None:
        if not records:
            return
        answer = await sink.deliver(records)
        if sink.failed_items(answer, records):
            raise RecordError("user code reported the record failed again (batchItemFailures)")

    async def _failed_again(
        self, item: FailureItem, reason: str, error_class: str, message: str, report: ReplayReport
    ) -> None:
        now = time.time()
        failure = Failure(
            record=rebuild(self.cfg, item),
            reason=reason,
            error_class=error_class,
            error_message=message,
            attempts=item.attempts + 1,
            first_failure_at=item.first_failure_at,
            last_failure_at=now,
        )
        try:
            await self.failures.failed_again(item, failure)
        except (TransientError, RecordError) as e:
            raise OperatorError(f"failure {item.id} failed again and its error cannot be stored: {e}") from e
        report.failed[item.id] = message


async def replay(
    cfg: StreamConfig, ids: list[str] | None, limit: int | None = None, *, force: bool = False
) -> ReplayReport:
    """Refused (unless `force`) while a daemon without `coordination:` runs the stream:
    it writes the same keys meanwhile, and a record replayed under it can land after
    a newer change of its key."""
    report = ReplayReport()
    async with opened(cfg.name, _open_target(cfg), "the sink") as sink:
        store = Store(claims_store(sink))
        if cfg.coordination is None:
            report.guard = Guard(cfg, None, force)
            report.guard.daemons(await store.live_daemons(cfg.name), "not replayed")
        failures = failure_store(cfg, store)
        try:
            items = await failures.items(limit, ids, hold=True)
            report.unreadable = failures.unreadable
            if ids:
                report.not_found = sorted(set(ids) - {i.id for i in items})
            replayer = Replayer(cfg, sink, failures)
            for item in items:
                await replayer.replay(item, report)
        finally:
            await failures.close()
    return report


class _Probed(Exception):
    """Rolls back a claim made only to ask whether it could be."""


def claims_store(sink: Sink) -> SqlSink:
    """Where a failure is claimed: the sink's own database, or user code's bookkeeping store."""
    store = bookkeeping_store(sink)
    assert store is not None, "every sink a replay opens keeps its bookkeeping in SQL"
    return store


def _open_target(cfg: StreamConfig) -> Sink:
    """The sink the daemon writes through, as the daemon builds it."""
    s = cfg.sink
    if isinstance(s, HandlerSinkConfig | LambdaSinkConfig) and s.tumbling_window_seconds:
        raise OperatorError(
            f"{cfg.name}: a record replayed alone would not belong to a tumbling window's state; "
            "list it with `poller failures list` and send it again through the function's owner"
        )
    return build_sink(cfg, failures_table(cfg))
