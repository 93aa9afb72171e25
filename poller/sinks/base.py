"""What every sink does, whatever its database: one transaction per batch
holding the rows, the checkpoints, the processed SQS message ids and the
failure rows, so a crash at any point replays without writing twice.

A dialect supplies the SQL; `SqlSink.commit` is the one place that decides the
order of the statements and how errors are classified.

Fencing (several replicas): a transaction that carries a `Fence` reads its
lease row with a shared lock as its last statement before COMMIT and rolls
back with `Fenced` unless the row still carries this tenure's token (and
names this worker at or above the counter it took the lease at). A taker's conditional write waits for that
lock, so a commit that passed the check commits before any takeover, and one
made after a takeover writes nothing. When the lease store keeps the
checkpoints (DynamoDB), they go to it at that point instead, by a write
conditional on the same lease.
"""

from __future__ import annotations

import abc
import itertools
import operator
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from poller.records import (
    Checkpoint,
    MappingError,
    RecordError,
    ShardState,
    TransientError,
)
from poller.records import (
    Failure as Failure,  # re-exported: the type now lives in records
)
from poller.rows import RowOp, RowShape, last_op_per_key
from poller.sink_api import CommitResult as CommitResult
from poller.sink_api import Fence, Fenced, Sink
from poller.sink_api import MessageWrite as MessageWrite
from poller.sink_api import Transaction as Transaction
from poller.sinks.coercion import CoercionError, Converter, coerce_row, row_coercer
from poller.sinks.session_bounds import SessionBounds

# (owner, lease_counter, lease_token) of a `poller_leases` row.
LeaseRow = tuple[str | None, int, str | None]


class SqlSink(Sink):
    """Template for the three databases; subclasses speak the dialect.

    With `table=""` only the bookkeeping tables are used: the checkpoint store
    of the handler and lambda sinks, whose records go to user code, not rows.
    """

    kind = "sql"

    def __init__(
        self,
        shape: RowShape,
        table: str,
        failures_table: str | None = "poller_failures",
        checkpoints_table: str = "poller_checkpoints",
        processed_table: str = "poller_processed",
        bounds: SessionBounds | None = None,
    ):
        # How long the server lets a session idle inside a transaction and wait for a
        # lock (`session_bounds.py` says why and when); None: the server's defaults.
        self.bounds = bounds if bounds is not None and bounds.enforced else None
        # Start times (monotonic) of the transactions in progress, for `commit_age`.
        self._commits: dict[int, float] = {}
        self._commit_ids = itertools.count()
        self.shape = shape
        self.table = table
        self.failures_table = failures_table
        self.checkpoints_table = checkpoints_table
        self.processed_table = processed_table
        self.columns = list(shape.columns)
        self.converters: list[Converter] = []
        self._coerce = row_coercer([], [])
        self._key_of: Callable[[tuple[Any, ...]], tuple[Any, ...]] = tuple
        self._coerce_key: Callable[[tuple[Any, ...]], tuple[Any, ...]] = tuple
        self._coerce_for: list[Converter] | None = None
        self._coerce_len = -1

    # -- the per-record part (no I/O) -------------------------------------------------

    def coerce(self, ops: list[RowOp]) -> list[RowOp]:
        converters = self.converters
        if self._coerce_for is not converters or self._coerce_len != len(converters):
            self._compile_coercion(converters)
        coerce, key_of = self._coerce, self._key_of
        # The map stage's ops are new objects for each record: coerced in place.
        try:
            for op in ops:
                values = op.values
                if values is None:
                    op.key = self._coerce_key(op.key)
                    continue
                op.values = values = coerce(values)
                op.key = key_of(values)
        except CoercionError as e:
            raise MappingError(str(e)) from e
        return ops

    def _compile_coercion(self, converters: list[Converter]) -> None:
        """Once the dialect has read the table's column types (in `open`)."""
        self._coerce = row_coercer(converters, self.columns)
        self._coerce_for, self._coerce_len = converters, len(converters)
        key_index = self.shape.key_index
        if len(key_index) == 1:
            (k,) = key_index
            self._key_of = lambda values: (values[k],)
        else:
            self._key_of = operator.itemgetter(*key_index)  # a tuple already
        key_converters = [converters[i] for i in key_index] if converters else []
        key_columns = list(self.shape.key)
        self._coerce_key = lambda key: coerce_row(key, key_converters, key_columns)

    # -- the transaction ---------------------------------------------------------------

    def commit_age(self) -> float:
        """Seconds the oldest transaction of `commit` in progress has been open (0: none)."""
        started = min(self._commits.values(), default=None)
        return 0.0 if started is None else time.monotonic() - started

    async def commit(self, tx: Transaction) -> CommitResult:
        result = CommitResult()
        commit_id = next(self._commit_ids)
        try:
            async with self.transaction() as conn:
                # From the moment a connection is ours: a wait for a pooled one is
                # another commit's time, not this one's.
                self._commits[commit_id] = time.monotonic()
                ops = list(tx.ops)
                failures = tx.failures
                if tx.messages:
                    ids = [m.message_id for m in tx.messages]
                    seen = await self.existing_ids(conn, tx.stream, ids)
                    fresh = [m for m in tx.messages if m.message_id not in seen]
                    try:
                        await self.insert_ids(conn, tx.stream, [m.message_id for m in fresh])
                    except Exception as e:
                        if self.is_integrity_error(e):
                            # Another poller committed the same message meanwhile:
                            # retry, and the next attempt will see it as processed.
                            raise TransientError(f"concurrent delivery of a message: {e}") from e
                        raise
                    for m in fresh:
                        ops.extend(m.ops)
                    result.duplicates = len(tx.messages) - len(fresh)
                    result.duplicate_ids = seen
                    failures = [f for f in failures if f.dedup_id is None or f.dedup_id not in seen]
                final = last_op_per_key(ops)
                upserts = [op.values for op in final if op.values is not None]
                deletes = [op.key for op in final if op.values is None]
                if upserts:
                    await self.upsert(conn, upserts)
                if deletes:
                    await self.delete(conn, deletes)
                if failures:
                    await self.insert_failures(conn, failures)
                fence = tx.fence
                if fence is not None and fence.keeper is not None:
                    # Last, so that nothing after it can fail once the lease store took them.
                    await fence.keeper.save_checkpoints(tx.stream, tx.checkpoints, fence)
                else:
                    if tx.checkpoints:
                        await self.save_checkpoints(conn, tx.checkpoints)
                    if fence is not None:
                        await self._check_fence(conn, tx.stream, fence)
                result.rows = len(final)
        except (TransientError, RecordError, Fenced):
            raise
        except Exception as e:
            raise self.classify(e) from e
        finally:
            self._commits.pop(commit_id, None)
        return result

    async def _check_fence(self, conn: Any, stream: str, fence: Fence) -> None:
        row = await self.lease_row(conn, stream, fence.shard_id)
        owner, counter, token = row if row is not None else (None, -1, None)
        if not fence.holds(owner, counter, token):
            raise Fenced(fence.shard_id, owner, tenure_over=not fence.current())

    # -- dialect hooks -----------------------------------------------------------------

    @abc.abstractmethod
    async def lease_row(self, conn: Any, stream: str, shard_id: str) -> LeaseRow | None:
        """(owner, lease_counter, lease_token) of a `poller_leases` row, read inside the
        transaction with a shared lock held to its end (a taker's write waits for the commit)."""

    @abc.abstractmethod
    def transaction(self) -> Any:
        """An async context manager yielding a connection inside a transaction."""

    @abc.abstractmethod
    async def existing_ids(self, conn: Any, stream: str, ids: list[str]) -> set[str]: ...

    @abc.abstractmethod
    async def insert_ids(self, conn: Any, stream: str, ids: list[str]) -> None: ...

    @abc.abstractmethod
    async def upsert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None: ...

    @abc.abstractmethod
    async def delete(self, conn: Any, keys: list[tuple[Any, ...]]) -> None: ...

    @abc.abstractmethod
    async def insert_failures(self, conn: Any, failures: list[Failure]) -> None: ...

    @abc.abstractmethod
    async def save_checkpoints(self, conn: Any, checkpoints: list[Checkpoint]) -> None: ...

    @abc.abstractmethod
    def classify(self, exc: BaseException) -> Exception:
        """A TransientError or RecordError standing for this driver error."""

    @abc.abstractmethod
    def is_integrity_error(self, exc: BaseException) -> bool: ...

    # -- shared SQL text ---------------------------------------------------------------

    @staticmethod
    def failure_row(f: Failure, now: float | None = None) -> tuple[Any, ...]:
        payload, encoding = f.payload_text()
        r = f.record
        key, text = 255, 1024  # the widths of MySQL's key and text columns (ddl.MYSQL)
        return (
            f.text(r.stream, key),
            f.text(r.shard_id, key),
            f.text(r.sequence_number, text),
            r.sub_sequence,
            f.text(r.meta.get("message_id"), key),
            f.text(f.reason, key),
            f.text(f.error_class, key),
            f.text(f.error_message[:4000], 4000),
            payload,
            encoding,
            f.attempts,
            _ts(f.first_failure_at),
            _ts(f.last_failure_at),
            _ts(now if now is not None else time.time()),
        )

    FAILURE_COLUMNS = (
        "stream",
        "shard_id",
        "sequence_number",
        "sub_sequence",
        "message_id",
        "reason",
        "error_class",
        "error_message",
        "payload",
        "payload_encoding",
        "attempts",
        "first_failure_at",
        "last_failure_at",
        "created_at",
    )


def checkpoint_row(c: Checkpoint) -> tuple[Any, ...]:
    """A checkpoint as the column values every dialect stores."""
    return (
        c.stream,
        c.shard_id,
        c.sequence_number,
        c.sub_sequence,
        str(c.state),
        ",".join(c.parent_shard_ids),
    )


def checkpoints_from_rows(stream: str, rows: Any) -> dict[str, Checkpoint]:
    """Rows of (shard_id, sequence_number, sub_sequence, state, parent_shard_ids)."""
    return {
        r[0]: Checkpoint(
            stream, r[0], r[1], int(r[2]), ShardState(r[3]), tuple(p for p in r[4].split(",") if p)
        )
        for r in rows
    }


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@asynccontextmanager
async def nullcontext_async(value: Any) -> AsyncIterator[Any]:
    yield value
