"""A stream's bookkeeping store, opened as the daemon opens it, and plain SQL on it.

The store is the sink's own database for the SQL sinks and the checkpoint
store for handler and lambda sinks, opened in bookkeeping-only mode (no target
table), so a command works before the target table exists and never needs the
mapping. SQL here is written once with `?` placeholders and each dialect gets
its own (`$n`, `%s`); table names are quoted by the dialect's rules. A
rewind's rows and the ended leases it opens again (`poller_leases`, same
database) change in one transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

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
from poller.sinks.factory import checkpoint_store, failures_table_of

S = TypeVar("S", bound=Sink)


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


class Store:
    """SQL on a sink's connection; `conn` is what the sink's `transaction()` yields."""

    def __init__(self, sink: SqlSink):
        self.sink = sink
        self.kind = sink.kind

    def table(self, name: str) -> str:
        if self.kind == "mysql":
            # Always run with arguments, so PyMySQL %-formats the statement.
            return ddl.percent_escaped(ddl.quote_ident(name, "`"))
        return ddl.quote_ident(name)

    def _sql(self, sql: str) -> str:
        if self.kind == "postgres":
            parts = sql.split("?")
            return parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], 1))
        if self.kind == "mysql":
            return sql.replace("?", "%s")
        return sql

    async def fetch(self, conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        sql = self._sql(sql)
        if self.kind == "postgres":
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        if self.kind == "mysql":
            await conn.execute(sql, args)
            return [tuple(r) for r in await conn.fetchall()]
        async with conn.execute(sql, args) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def execute(self, conn: Any, sql: str, *args: Any) -> int:
        """Rows changed."""
        sql = self._sql(sql)
        if self.kind == "postgres":
            status = await conn.execute(sql, *args)
            last = str(status).split()[-1] if status else "0"
            return int(last) if last.isdigit() else 0
        if self.kind == "mysql":
            return int(await conn.execute(sql, args) or 0)
        async with conn.execute(sql, args) as cur:
            return int(cur.rowcount)

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

    async def rewrite(self, stream: str, drop: list[str], new: list[Checkpoint], reopen: list[Lease]) -> None:
        """In one transaction: drop these checkpoint rows, write these, and open these
        ended leases again (each conditional on its counter as read, and moved on)."""
        sink = self.sink
        checkpoints = self.table(sink.checkpoints_table)
        leases = self.table(ddl.LEASES_TABLE)
        try:
            async with sink.transaction() as conn:
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
        except (TransientError, RecordError) as e:
            raise OperatorError(f"{stream}: checkpoints not rewritten: {e}") from e
        except Exception as e:
            raise OperatorError(f"{stream}: checkpoints not rewritten: {sink.classify(e)}") from e

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
