"""A stream's bookkeeping store, opened as the daemon opens it, and plain SQL on it.

The store is the sink's own database for the SQL sinks and the checkpoint
store for handler and lambda sinks, opened in bookkeeping-only mode (no target
table), so a command works before the target table exists and never needs the
mapping. SQL here is written once with `?` placeholders (`PlainSql`). A
rewind's rows and the ended leases it opens again (`poller_leases`, same
database) change in one transaction, which also holds the stream's lease rows
locked while it decides whether it may write (`rewrite`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from poller.config import (
    HandlerSinkConfig,
    LambdaSinkConfig,
    MysqlSinkConfig,
    PostgresSinkConfig,
    SqliteSinkConfig,
    SqsSource,
    StreamConfig,
)
from poller.coordination.lease import Lease
from poller.operator.errors import OperatorError
from poller.records import Checkpoint, RecordError, TransientError
from poller.sink_api import Sink
from poller.sinks import ddl
from poller.sinks.base import SqlSink, checkpoints_from_rows
from poller.sinks.daemons import DaemonRow, Daemons
from poller.sinks.factory import checkpoint_store, failures_table_of
from poller.sinks.plain_sql import PlainSql

if TYPE_CHECKING:
    from poller.operator.guard import Guard

S = TypeVar("S", bound=Sink)
LOCK_WAIT_SECONDS = 30


class _NotWritten(Exception):
    """A dry run's way out of its transaction: everything it did rolls back."""


def failures_table(cfg: StreamConfig) -> str | None:
    """The failure table the daemon writes for this stream, if it writes one."""
    return failures_table_of(cfg, default=not isinstance(cfg.source, SqsSource))


def bookkeeping_sink(cfg: StreamConfig) -> SqlSink:
    """The stream's store in bookkeeping-only mode (`table=""`)."""
    s = cfg.sink
    failures = failures_table(cfg)
    if isinstance(s, PostgresSinkConfig | MysqlSinkConfig | SqliteSinkConfig):
        return checkpoint_store(s.dsn, failures, store=s.type)
    assert isinstance(s, HandlerSinkConfig | LambdaSinkConfig)
    return checkpoint_store(s.checkpoint_dsn, failures)


@dataclass(slots=True)
class CheckpointRow:
    checkpoint: Checkpoint
    updated_at: datetime | None


class Store(PlainSql):
    """SQL on a sink's connection; `conn` is what the sink's `transaction()` yields."""

    def __init__(self, sink: SqlSink):
        super().__init__(sink.kind)
        self.sink = sink

    async def read(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        try:
            async with self.sink.transaction() as conn:
                return await self.fetch(conn, sql, *args)
        except (TransientError, RecordError):
            raise
        except Exception as e:
            raise self.sink.classify(e) from e

    # -- the bookkeeping tables ----------------------------------------------------

    async def checkpoint_rows(self, stream: str) -> dict[str, CheckpointRow]:
        rows = await self.read(
            f"SELECT shard_id, sequence_number, sub_sequence, state, parent_shard_ids, updated_at "
            f"FROM {self.table(self.sink.checkpoints_table)} WHERE stream = ?",
            stream,
        )
        checkpoints = checkpoints_from_rows(stream, [r[:5] for r in rows])
        return {r[0]: CheckpointRow(checkpoints[r[0]], as_utc(r[5])) for r in rows}

    async def rewrite(
        self, stream: str, drop: list[str], new: list[Checkpoint], guard: Guard, *, dry_run: bool = False
    ) -> None:
        """In one transaction: with `coordination:`, lock the stream's lease rows and let
        `guard` judge them (a take waits for this transaction); drop these checkpoint
        rows and write these; open the ended leases the guard names again (each
        conditional on its counter as read, and moved on); without `coordination:`,
        let `guard` judge the daemons live on the stream, last. `dry_run`: roll back."""
        sink = self.sink
        checkpoints = self.table(sink.checkpoints_table)
        leases = self.table(ddl.LEASES_TABLE)
        try:
            async with sink.transaction() as conn:
                await self._bound_lock_waits(conn)
                reopen: list[Lease] = []
                if guard.cfg.coordination is not None:
                    if self.kind != "sqlite":  # SQLite: the write transaction holds the file
                        await self.fetch(
                            conn, f"SELECT shard_id FROM {leases} WHERE stream = ? FOR UPDATE", stream
                        )
                    _, reopen = await guard.leases()
                for row_id in drop:
                    await self.execute(
                        conn, f"DELETE FROM {checkpoints} WHERE stream = ? AND shard_id = ?", stream, row_id
                    )
                if new:
                    await sink.save_checkpoints(conn, new)
                for lease in reopen:
                    await self.execute(
                        conn,
                        f"UPDATE {leases} SET owner = NULL, state = 'open', "
                        "lease_counter = lease_counter + 1 "
                        "WHERE stream = ? AND shard_id = ? AND lease_counter = ? AND state = 'ended'",
                        stream,
                        lease.shard_id,
                        lease.counter,
                    )
                if guard.cfg.coordination is None:
                    # Last: a daemon that announced itself before this statement is seen.
                    guard.daemons(await Daemons(sink).live(conn, stream), "not rewound")
                if dry_run:
                    raise _NotWritten
        except _NotWritten:
            return
        except OperatorError:
            raise
        except (TransientError, RecordError) as e:
            raise OperatorError(f"{stream}: checkpoints not rewritten: {e}") from e
        except Exception as e:
            raise OperatorError(f"{stream}: checkpoints not rewritten: {sink.classify(e)}") from e

    async def live_daemons(self, stream: str) -> list[DaemonRow]:
        """The daemons live on the stream (`poller.sinks.daemons`)."""
        try:
            async with self.sink.transaction() as conn:
                return await Daemons(self.sink).live(conn, stream)
        except (TransientError, RecordError):
            raise
        except Exception as e:
            raise self.sink.classify(e) from e

    async def _bound_lock_waits(self, conn: Any) -> None:
        """A command waits for a row another transaction holds (a commit, a take) for
        `LOCK_WAIT_SECONDS` at most, then fails and can be run again."""
        if self.kind == "postgres":
            await self.execute(conn, f"SET LOCAL lock_timeout = '{LOCK_WAIT_SECONDS}s'")
        elif self.kind == "mysql":
            await self.execute(conn, f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_SECONDS}")

    async def count_failures(self, stream: str) -> int | None:
        if not self.sink.failures_table:
            return None
        rows = await self.read(
            f"SELECT count(*) FROM {self.table(self.sink.failures_table)} WHERE stream = ?", stream
        )
        return int(rows[0][0])


def as_utc(value: Any) -> datetime | None:
    """A stored time as an aware UTC datetime: PostgreSQL gives one, MySQL a naive
    UTC one (its sessions run in UTC), SQLite text."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@asynccontextmanager
async def opened(stream: str, sink: S, what: str) -> AsyncIterator[S]:
    """`sink` open for a command, closed after; one that cannot be opened is the command's error."""
    try:
        await sink.open()
    except (TransientError, RecordError) as e:
        await sink.close()
        raise OperatorError(f"{stream}: {what} cannot be opened: {e}") from e
    try:
        yield sink
    finally:
        await sink.close()


@asynccontextmanager
async def open_store(cfg: StreamConfig) -> AsyncIterator[Store]:
    async with opened(cfg.name, bookkeeping_sink(cfg), "the checkpoint store") as sink:
        yield Store(sink)
