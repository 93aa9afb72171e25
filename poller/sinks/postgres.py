"""PostgreSQL through asyncpg: binary COPY into a per-connection staging table,
then one `INSERT ... SELECT ... ON CONFLICT` into the target.

The staging table is a session TEMP table created once per pooled connection
(`ON COMMIT DELETE ROWS`), so a batch costs two statements whatever its size.
Columns whose type the binary COPY cannot take from plain Python values (json,
arrays, enums, ...) are staged as text and cast by the server.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from poller import dsn as dsn_rules
from poller.records import (
    Checkpoint,
    Failure,
    LockWaitTimeout,
    RecordError,
    TransientError,
    describe_error,
)
from poller.rows import RowShape
from poller.sink_api import FILE_REPLAY_MARK, QUEUE_REPLAY_MARK, QUEUE_REPLAY_MARK_SECONDS
from poller.sinks import ddl, errors
from poller.sinks.base import LeaseRow, SqlSink, checkpoint_row, checkpoints_from_rows
from poller.sinks.coercion import column_converter
from poller.sinks.column_types import postgres_column

_KINDS = {
    "int2": "int",
    "int4": "int",
    "int8": "int",
    "float4": "float",
    "float8": "float",
    "numeric": "decimal",
    "text": "text",
    "varchar": "text",
    "bpchar": "text",
    "name": "text",
    "bool": "bool",
    "timestamptz": "timestamptz",
    "timestamp": "timestamp",
    "date": "date",
    "uuid": "uuid",
    "bytea": "bytes",
}

# SQLSTATE classes (https://www.postgresql.org/docs/current/errcodes-appendix.html).
# Transient: connection (08), rollback/deadlock/serialization (40), resources (53),
# object in use / lock not available (55), operator intervention (57), system (58),
# internal (XX). Record: cardinality (21), data (22), integrity (23), triggered
# data change (27), routine / external routine exceptions (2F, 38, 39), WITH CHECK
# OPTION (44), program limit exceeded such as an index row too large (54), and a
# trigger's RAISE (P0). Anything else (42 undefined table/column or permission,
# 28 authentication, 3D/3F unknown database/schema, 0A unsupported) needs attention.
_TRANSIENT_CLASSES = ("08", "40", "53", "55", "57", "58", "XX")
_TRANSIENT_STATES = {"25006", "25P03"}  # read-only transaction, idle-in-transaction timeout
_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout (session_bounds.py), or a NOWAIT lock
_RECORD_CLASSES = ("21", "22", "23", "27", "2F", "38", "39", "44", "54", "P0")


def classify(exc: BaseException) -> Exception:
    if isinstance(exc, TransientError | RecordError):
        return exc
    state = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.PostgresError) and isinstance(state, str):
        if state == _LOCK_NOT_AVAILABLE:
            return LockWaitTimeout(f"postgres {state}: {exc}")
        if state in _TRANSIENT_STATES or state.startswith(_TRANSIENT_CLASSES):
            return TransientError(f"postgres {state}: {exc}")
        if state.startswith(_RECORD_CLASSES):
            reason = "constraint_violation" if state.startswith("23") else "data_error"
            return errors.record_error(f"postgres {state}: {describe_error(exc)}", reason)
        return errors.needs_attention(f"postgres {state}: {describe_error(exc)}")
    if isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, ValueError):
        # The connection's state (closed, released, busy), not the values.
        return TransientError(f"postgres unavailable: {type(exc).__name__}: {exc}")
    return errors.by_python_type(exc, "postgres")


def q(name: str) -> str:
    return ddl.quote_ident(name)


def qc(name: str) -> str:
    return ddl.quote_column(name)


class PostgresSink(SqlSink):
    kind = "postgres"

    def __init__(self, dsn: str, shape: RowShape, table: str, pool_size: int = 2, **kw: Any):
        super().__init__(shape, table, **kw)
        self._settings: dict[str, str] = {}
        if self.bounds is not None:
            self._settings = {
                "idle_in_transaction_session_timeout": str(self.bounds.idle_in_transaction * 1000),
                "lock_timeout": str(int(self.bounds.lock_wait * 1000)),
            }
        # asyncpg parses a DSN with urllib, which splits a password at `#`, `/` or `?` and
        # echoes the pieces in its errors: it gets the DSN without one, and the password apart.
        parsed = dsn_rules.parse(dsn)
        self.dsn = parsed.without_password()
        self._password = parsed.password
        self.pool_size = pool_size
        self.pool: asyncpg.Pool | None = None
        self._stage = f"poller_stage_{zlib.crc32(repr((table, self.columns)).encode()):08x}"
        self._stage_ddl = ""
        self._upsert_sql = ""
        self._delete_sql = ""

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        try:
            conn = await asyncpg.connect(self.dsn, password=self._password, timeout=10)
        except Exception as e:
            raise classify(e) from e
        try:
            async with conn.transaction():
                # Several replicas may start at once; CREATE TABLE IF NOT EXISTS races.
                await conn.execute("SELECT pg_advisory_xact_lock(727274)")
                for stmt in ddl.bookkeeping(
                    ddl.POSTGRES,
                    '"',
                    q(self.checkpoints_table),
                    q(self.processed_table),
                    q(self.failures_table) if self.failures_table else None,
                ):
                    await conn.execute(stmt)
                existing = await conn.fetch(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = $1",
                    ddl.LEASES_TABLE,
                )
                for stmt in ddl.added_columns(ddl.POSTGRES, '"', {r[0] for r in existing}):
                    await conn.execute(stmt)
                await conn.execute(
                    f"CREATE INDEX IF NOT EXISTS poller_processed_at "
                    f"ON {q(self.processed_table)} (processed_at)"
                )
                if self.shape.append and self.table:
                    await conn.execute(ddl.append_table(ddl.POSTGRES, q(self.table)))
            if self.table:  # else bookkeeping only
                await self._describe(conn)
        except (TransientError, RecordError):
            raise
        except Exception as e:
            raise classify(e) from e
        finally:
            await conn.close()
        try:
            self.pool = await asyncpg.create_pool(
                self.dsn,
                password=self._password,
                min_size=1,
                max_size=self.pool_size,
                init=self._init_conn,
                timeout=10,
                server_settings=self._settings,
            )
        except Exception as e:
            raise classify(e) from e

    async def _describe(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(
            """SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod) AS full_type, a.atttypmod
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
               WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped""",
            q(self.table),
        )
        if not rows:
            raise TransientError(
                f"table {self.table} does not exist (create it, or drop `columns` for append mode)"
            )
        types = {r["attname"]: (r["typname"], r["full_type"], r["atttypmod"]) for r in rows}
        missing = [c for c in self.columns if c not in types]
        if missing:
            raise TransientError(f"table {self.table} has no column(s) {missing}")
        stage_cols, select_cols, self.converters = [], [], []
        for c in self.columns:
            typname, full, typmod = types[c]
            kind = _KINDS.get(typname)
            if kind is None:
                stage_cols.append(f"{qc(c)} text")
                select_cols.append(f"CAST({qc(c)} AS {full})")
                kind = "json_text" if typname in ("json", "jsonb") else "text"
            else:
                stage_cols.append(f"{qc(c)} {full}")
                select_cols.append(qc(c))
            self.converters.append(column_converter(postgres_column(kind, typname, typmod)))
        self._stage_ddl = (
            f"CREATE TEMP TABLE IF NOT EXISTS {self._stage} ({', '.join(stage_cols)}) ON COMMIT DELETE ROWS"
        )
        cols = ", ".join(qc(c) for c in self.columns)
        keys = ", ".join(qc(k) for k in self.shape.key)
        updates = [f"{qc(c)} = EXCLUDED.{qc(c)}" for c in self.columns if c not in self.shape.key]
        action = "DO NOTHING" if self.shape.append or not updates else "DO UPDATE SET " + ", ".join(updates)
        self._upsert_sql = (
            f"INSERT INTO {q(self.table)} ({cols}) SELECT {', '.join(select_cols)} FROM {self._stage} "
            f"ON CONFLICT ({keys}) {action}"
        )
        where = " AND ".join(f"{qc(k)} = ${i + 1}" for i, k in enumerate(self.shape.key))
        self._delete_sql = f"DELETE FROM {q(self.table)} WHERE {where}"
        self._key_types = [types[k][1] for k in self.shape.key]

    async def _init_conn(self, conn: asyncpg.Connection) -> None:
        if self._stage_ddl:
            await conn.execute(self._stage_ddl)

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, Exception):
                pool.terminate()

    async def ping(self) -> None:
        try:
            assert self.pool is not None
            async with self.pool.acquire(timeout=5) as conn:
                await conn.fetchval("SELECT 1")
        except Exception as e:
            raise classify(e) from e

    # -- transaction parts -----------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        if self.pool is None:
            raise TransientError("postgres sink is not open")
        async with self.pool.acquire(timeout=30) as conn, conn.transaction():
            yield conn

    async def existing_ids(self, conn: Any, stream: str, ids: list[str]) -> set[str]:
        rows = await conn.fetch(
            f"SELECT message_id FROM {q(self.processed_table)} "
            f"WHERE stream = $1 AND message_id = ANY($2::text[])",
            stream,
            ids,
        )
        return {r[0] for r in rows}

    async def insert_ids(self, conn: Any, stream: str, ids: list[str]) -> None:
        if ids:
            await conn.execute(
                f"INSERT INTO {q(self.processed_table)} (stream, message_id) SELECT $1, unnest($2::text[])",
                stream,
                ids,
            )

    async def upsert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        await conn.copy_records_to_table(self._stage, records=rows, columns=self.columns)
        await conn.execute(self._upsert_sql)

    async def delete(self, conn: Any, keys: list[tuple[Any, ...]]) -> None:
        await conn.executemany(self._delete_sql, keys)

    async def insert_failures(self, conn: Any, failures: list[Failure]) -> None:
        assert self.failures_table
        cols = ", ".join(self.FAILURE_COLUMNS)
        ph = ", ".join(f"${i + 1}" for i in range(len(self.FAILURE_COLUMNS)))
        await conn.executemany(
            f"INSERT INTO {q(self.failures_table)} ({cols}) VALUES ({ph})",
            [self.failure_row(f) for f in failures],
        )

    async def save_checkpoints(self, conn: Any, checkpoints: list[Checkpoint]) -> None:
        await conn.executemany(
            f"""INSERT INTO {q(self.checkpoints_table)}
                (stream, shard_id, sequence_number, sub_sequence, state, parent_shard_ids, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, now())
                ON CONFLICT (stream, shard_id) DO UPDATE SET
                  sequence_number = EXCLUDED.sequence_number, sub_sequence = EXCLUDED.sub_sequence,
                  state = EXCLUDED.state, parent_shard_ids = EXCLUDED.parent_shard_ids,
                  updated_at = now()""",
            [checkpoint_row(c) for c in checkpoints],
        )

    async def lease_row(self, conn: Any, stream: str, shard_id: str) -> LeaseRow | None:
        row = await conn.fetchrow(
            f"SELECT owner, lease_counter, lease_token FROM {q(ddl.LEASES_TABLE)} "
            f"WHERE stream = $1 AND shard_id = $2 FOR SHARE",
            stream,
            shard_id,
        )
        return None if row is None else (row[0], int(row[1]), row[2])

    # -- reads outside the batch transaction -------------------------------------------

    async def load_checkpoints(self, stream: str) -> dict[str, Checkpoint]:
        try:
            assert self.pool is not None
            rows = await self.pool.fetch(
                f"SELECT shard_id, sequence_number, sub_sequence, state, parent_shard_ids "
                f"FROM {q(self.checkpoints_table)} WHERE stream = $1",
                stream,
            )
        except Exception as e:
            raise classify(e) from e
        return checkpoints_from_rows(stream, [tuple(r) for r in rows])

    async def delete_checkpoints(self, stream: str, shard_ids: list[str]) -> None:
        try:
            assert self.pool is not None
            await self.pool.execute(
                f"DELETE FROM {q(self.checkpoints_table)} WHERE stream = $1 AND shard_id = ANY($2::text[])",
                stream,
                shard_ids,
            )
        except Exception as e:
            raise classify(e) from e

    async def processed_ids(self, stream: str, ids: list[str]) -> set[str]:
        try:
            assert self.pool is not None
            async with self.pool.acquire(timeout=30) as conn:
                return await self.existing_ids(conn, stream, ids)
        except Exception as e:
            raise classify(e) from e

    async def purge_processed(self, stream: str, older_than_seconds: float) -> int:
        try:
            assert self.pool is not None
            status = await self.pool.execute(
                f"DELETE FROM {q(self.processed_table)} WHERE stream = $1 "
                f"AND processed_at < now() - make_interval(secs => $2) AND message_id NOT LIKE $3 "
                f"AND (message_id NOT LIKE $4 OR processed_at < now() - make_interval(secs => $5))",
                stream,
                float(older_than_seconds),
                FILE_REPLAY_MARK + "%",
                QUEUE_REPLAY_MARK + "%",
                float(max(older_than_seconds, QUEUE_REPLAY_MARK_SECONDS)),
            )
        except Exception as e:
            raise classify(e) from e
        return int(status.split()[-1])

    def classify(self, exc: BaseException) -> Exception:
        return classify(exc)

    def is_integrity_error(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncpg.IntegrityConstraintViolationError)
