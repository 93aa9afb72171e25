"""SQLite through aiosqlite: the embedded default (demo, single-node set-ups,
and the handler sink's checkpoint store). One connection, one writer."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from poller.records import Checkpoint, Failure, RecordError, TransientError, describe_error
from poller.rows import RowShape
from poller.sink_api import FILE_REPLAY_MARK, QUEUE_REPLAY_MARK, QUEUE_REPLAY_MARK_SECONDS
from poller.sinks import ddl, errors
from poller.sinks.base import LeaseRow, SqlSink, checkpoint_row, checkpoints_from_rows
from poller.sinks.coercion import column_converter
from poller.sinks.column_types import sqlite_column


def sqlite_path(dsn: str) -> str:
    for prefix in ("sqlite:///", "sqlite://", "file:"):
        if dsn.startswith(prefix):
            return dsn[len(prefix) :]
    return dsn


def _kind(decl: str) -> str:
    d = decl.upper()
    if "INT" in d:
        return "int"
    if "BOOL" in d:
        return "bool"
    if any(t in d for t in ("REAL", "FLOA", "DOUB")):
        return "float"
    if "JSON" in d:
        return "json_text"
    if "BLOB" in d:
        return "bytes"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return "text"
    return "other"


# OperationalError texts that are the database's state, not the rows.
_TRANSIENT_TEXTS = ("locked", "busy", "disk i/o", "unable to open", "readonly", "read-only", "full")


def classify(exc: BaseException) -> Exception:
    if isinstance(exc, TransientError | RecordError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        return errors.record_error(f"sqlite: {describe_error(exc)}", "constraint_violation")
    if isinstance(exc, sqlite3.InterfaceError | sqlite3.DataError | sqlite3.ProgrammingError):
        # A value SQLite cannot bind (an int over 64 bits, an unsupported type).
        return errors.record_error(f"sqlite: {describe_error(exc)}", "data_error")
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "too big" in text:  # SQLITE_TOOBIG: a string or blob over its limit
            return errors.record_error(f"sqlite: {describe_error(exc)}", "data_error")
        if any(t in text for t in _TRANSIENT_TEXTS):
            return TransientError(f"sqlite: {exc}")
        return errors.needs_attention(f"sqlite: {describe_error(exc)}")
    if isinstance(exc, sqlite3.Error):
        return TransientError(f"sqlite: {type(exc).__name__}: {exc}")
    return errors.by_python_type(exc, "sqlite")


def q(name: str) -> str:
    return ddl.quote_ident(name)


def qc(name: str) -> str:
    return ddl.quote_column(name)


def table_info(table: str) -> str:
    """`PRAGMA table_info` of a table that may be schema-qualified (`main.t`): the
    schema goes before the pragma's name, not into its argument."""
    schema, _, name = table.rpartition(".")
    return f"PRAGMA {qc(schema) + '.' if schema else ''}table_info({qc(name)})"


def _plain(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


class SqliteSink(SqlSink):
    kind = "sqlite"

    def __init__(self, dsn: str, shape: RowShape, table: str, **kw: Any):
        super().__init__(shape, table, **kw)
        self.path = sqlite_path(dsn)
        self.db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            if self.path not in (":memory:", ""):
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.db = await aiosqlite.connect(self.path, isolation_level=None, timeout=30)
            await self.db.execute("PRAGMA journal_mode=WAL")
            await self.db.execute("PRAGMA synchronous=FULL")
            for stmt in ddl.bookkeeping(
                ddl.SQLITE,
                '"',
                q(self.checkpoints_table),
                q(self.processed_table),
                q(self.failures_table) if self.failures_table else None,
            ):
                await self.db.execute(stmt)
            async with self.db.execute(table_info(ddl.LEASES_TABLE)) as cur:
                existing = {r[1] for r in await cur.fetchall()}
            for stmt in ddl.added_columns(ddl.SQLITE, '"', existing):
                await self.db.execute(stmt)
            if not self.table:
                return  # bookkeeping only
            if self.shape.append:
                await self.db.execute(ddl.append_table(ddl.SQLITE, q(self.table)))
            async with self.db.execute(table_info(self.table)) as cur:
                types = {r[1]: r[2] for r in await cur.fetchall()}
        except Exception as e:
            raise classify(e) from e
        if not types:
            raise TransientError(
                f"table {self.table} does not exist (create it, or drop `columns` for append mode)"
            )
        missing = [c for c in self.columns if c not in types]
        if missing:
            raise TransientError(f"table {self.table} has no column(s) {missing}")
        self.converters = [column_converter(sqlite_column(_kind(types[c]))) for c in self.columns]
        cols = ", ".join(qc(c) for c in self.columns)
        ph = ", ".join(["?"] * len(self.columns))
        keys = ", ".join(qc(k) for k in self.shape.key)
        updates = [f"{qc(c)} = excluded.{qc(c)}" for c in self.columns if c not in self.shape.key]
        action = "DO NOTHING" if self.shape.append or not updates else "DO UPDATE SET " + ", ".join(updates)
        self._upsert_sql = f"INSERT INTO {q(self.table)} ({cols}) VALUES ({ph}) ON CONFLICT ({keys}) {action}"
        where = " AND ".join(f"{qc(k)} = ?" for k in self.shape.key)
        self._delete_sql = f"DELETE FROM {q(self.table)} WHERE {where}"

    async def close(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            await db.close()

    async def ping(self) -> None:
        async with self.transaction() as db:
            await db.execute("SELECT 1")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        if self.db is None:
            raise TransientError("sqlite sink is not open")
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def existing_ids(self, conn: Any, stream: str, ids: list[str]) -> set[str]:
        ph = ", ".join(["?"] * len(ids))
        async with conn.execute(
            f"SELECT message_id FROM {q(self.processed_table)} WHERE stream = ? AND message_id IN ({ph})",
            (stream, *ids),
        ) as cur:
            return {r[0] for r in await cur.fetchall()}

    async def insert_ids(self, conn: Any, stream: str, ids: list[str]) -> None:
        await conn.executemany(
            f"INSERT INTO {q(self.processed_table)} (stream, message_id) VALUES (?, ?)",
            [(stream, i) for i in ids],
        )

    async def upsert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        await conn.executemany(self._upsert_sql, [tuple(_plain(v) for v in r) for r in rows])

    async def delete(self, conn: Any, keys: list[tuple[Any, ...]]) -> None:
        await conn.executemany(self._delete_sql, [tuple(_plain(v) for v in k) for k in keys])

    async def insert_failures(self, conn: Any, failures: list[Failure]) -> None:
        assert self.failures_table
        cols = ", ".join(self.FAILURE_COLUMNS)
        ph = ", ".join(["?"] * len(self.FAILURE_COLUMNS))
        rows = [tuple(_plain(v) for v in self.failure_row(f)) for f in failures]
        await conn.executemany(f"INSERT INTO {q(self.failures_table)} ({cols}) VALUES ({ph})", rows)

    async def save_checkpoints(self, conn: Any, checkpoints: list[Checkpoint]) -> None:
        await conn.executemany(
            f"""INSERT INTO {q(self.checkpoints_table)}
                (stream, shard_id, sequence_number, sub_sequence, state, parent_shard_ids)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (stream, shard_id) DO UPDATE SET
                  sequence_number = excluded.sequence_number, sub_sequence = excluded.sub_sequence,
                  state = excluded.state, parent_shard_ids = excluded.parent_shard_ids,
                  updated_at = CURRENT_TIMESTAMP""",
            [checkpoint_row(c) for c in checkpoints],
        )

    async def lease_row(self, conn: Any, stream: str, shard_id: str) -> LeaseRow | None:
        # The transaction began IMMEDIATE: no other writer runs until it ends.
        async with conn.execute(
            f"SELECT owner, lease_counter, lease_token FROM {q(ddl.LEASES_TABLE)} "
            "WHERE stream = ? AND shard_id = ?",
            (stream, shard_id),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else (row[0], int(row[1]), row[2])

    async def load_checkpoints(self, stream: str) -> dict[str, Checkpoint]:
        async with (
            self.transaction() as db,
            db.execute(
                f"SELECT shard_id, sequence_number, sub_sequence, state, parent_shard_ids "
                f"FROM {q(self.checkpoints_table)} WHERE stream = ?",
                (stream,),
            ) as cur,
        ):
            rows = await cur.fetchall()
        return checkpoints_from_rows(stream, rows)

    async def delete_checkpoints(self, stream: str, shard_ids: list[str]) -> None:
        async with self.transaction() as db:
            await db.executemany(
                f"DELETE FROM {q(self.checkpoints_table)} WHERE stream = ? AND shard_id = ?",
                [(stream, s) for s in shard_ids],
            )

    async def processed_ids(self, stream: str, ids: list[str]) -> set[str]:
        async with self.transaction() as db:
            return await self.existing_ids(db, stream, ids)

    async def purge_processed(self, stream: str, older_than_seconds: float) -> int:
        async with self.transaction() as db:
            cur = await db.execute(
                f"DELETE FROM {q(self.processed_table)} WHERE stream = ? "
                f"AND processed_at < datetime('now', ?) AND message_id NOT LIKE ? "
                f"AND (message_id NOT LIKE ? OR processed_at < datetime('now', ?))",
                (
                    stream,
                    f"-{int(older_than_seconds)} seconds",
                    FILE_REPLAY_MARK + "%",
                    QUEUE_REPLAY_MARK + "%",
                    f"-{int(max(older_than_seconds, QUEUE_REPLAY_MARK_SECONDS))} seconds",
                ),
            )
            return int(cur.rowcount or 0)

    def classify(self, exc: BaseException) -> Exception:
        return classify(exc)

    def is_integrity_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)
