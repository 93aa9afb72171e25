"""MySQL / MariaDB through aiomysql: one multi-row `INSERT ... ON DUPLICATE KEY
UPDATE col = VALUES(col)` per batch (PyMySQL's executemany folds the rows into
one statement). `VALUES(col)` rather than MySQL 8's `AS new` alias, which
MariaDB 10.11 lacks.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiomysql
import pymysql

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
from poller.sinks.coercion import Converter, column_converter
from poller.sinks.column_types import mariadb_json_columns, mysql_column
from poller.sinks.session_bounds import SessionBounds

_KINDS = {
    "tinyint": "int",
    "smallint": "int",
    "mediumint": "int",
    "int": "int",
    "bigint": "int",
    "float": "float",
    "double": "float",
    "decimal": "decimal",
    "char": "text",
    "varchar": "text",
    "text": "text",
    "tinytext": "text",
    "mediumtext": "text",
    "longtext": "text",
    "json": "json_text",
    "datetime": "timestamp",
    "timestamp": "timestamp",
    "date": "date",
    "uuid": "uuid",  # MariaDB ≥ 10.7
    "tinyblob": "bytes",
    "blob": "bytes",
    "longblob": "bytes",
    "mediumblob": "bytes",
    "varbinary": "bytes",
    "binary": "bytes",
}

# Error codes by what they mean (the table with names is in docs/architecture.md).
# Transient: connections and the server's state, not the rows.
_TRANSIENT_CODES = {
    0,  # PyMySQL: the connection is closed
    1021,  # disk full
    1030,  # storage engine error
    1037,  # out of memory
    1038,  # out of sort memory
    1040,  # too many connections
    1041,  # out of memory
    1047,  # unknown command (server starting or shutting down)
    1053,  # server shutdown in progress
    1114,  # table is full
    1158,  # network read error
    1159,  # network read timeout
    1160,  # network write error
    1161,  # network write timeout
    1180,  # error during commit
    1181,  # error during rollback
    1205,  # lock wait timeout
    1213,  # deadlock
    1290,  # --read-only
    1317,  # query interrupted
    1792,  # read-only transaction
    1836,  # read-only mode
    1927,  # connection killed (MariaDB)
    1969,  # max_statement_time exceeded (MariaDB)
    2002,  # cannot connect (socket)
    2003,  # cannot connect (TCP)
    2005,  # unknown host
    2006,  # server has gone away
    2013,  # lost connection during query
    2014,  # commands out of sync (the connection's state)
    2026,  # SSL connection error
    2055,  # lost connection
    3024,  # max_execution_time exceeded (MySQL)
    4031,  # disconnected for inactivity (MySQL 8)
}
_LOCK_WAIT_TIMEOUT = 1205  # innodb_lock_wait_timeout (session_bounds.py)
_CONSTRAINT_CODES = {
    1048,  # column cannot be null
    1062,  # duplicate entry
    1364,  # a NOT NULL column without a default was given no value
    1216,  # foreign key: no parent
    1217,  # foreign key: has children
    1451,  # foreign key: has children
    1452,  # foreign key: no parent
    1644,  # SIGNAL raised by a trigger
    3819,  # check constraint violated (MySQL 8)
    4025,  # constraint failed (MariaDB; also its JSON columns' JSON_VALID check)
}
_DATA_CODES = {
    1118,  # row size too large
    1153,  # packet larger than max_allowed_packet (bisection makes it smaller)
    1264,  # out of range
    1265,  # data truncated
    1292,  # incorrect datetime / truncated incorrect value
    1300,  # invalid character string
    1365,  # division by zero
    1366,  # incorrect string or integer value (e.g. 4-byte UTF-8 into utf8mb3)
    1367,  # illegal double value
    1406,  # data too long
    1411,  # incorrect value for a function
    1416,  # cannot get geometry object
    1441,  # datetime function overflow
    1690,  # value out of range
    3140,  # invalid JSON text (MySQL 8 JSON columns)
    3141,  # invalid JSON text in argument
    3146,  # invalid data type for JSON
    3156,  # invalid JSON value for CAST
    4036,  # character disallowed in JSON (MariaDB)
    4037,  # unexpected end of JSON text (MariaDB)
    4038,  # syntax error in JSON text (MariaDB)
    4040,  # JSON nesting too deep (MariaDB)
    4078,  # illegal parameter data types for an operation (e.g. a double cast to INET6)
}
_RECORD_CODES = _CONSTRAINT_CODES | _DATA_CODES


def classify(exc: BaseException) -> Exception:
    if isinstance(exc, TransientError | RecordError):
        return exc
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
        text = f"mysql {code}: {describe_error(exc.args[1] if len(exc.args) > 1 else exc)}"
        if code in _RECORD_CODES:
            reason = "constraint_violation" if code in _CONSTRAINT_CODES else "data_error"
            return errors.record_error(text, reason)
        if code == _LOCK_WAIT_TIMEOUT:
            return LockWaitTimeout(text)
        if code in _TRANSIENT_CODES:
            return TransientError(text)
        return errors.needs_attention(text)
    # No server code: PyMySQL refused to escape a value ("inf can not be used
    # with MySQL"), or a Python error while encoding; or the socket failed.
    return errors.by_python_type(exc, "mysql")


def q(name: str) -> str:
    return ddl.quote_ident(name, "`")


def qc(name: str) -> str:
    return ddl.quote_column(name, "`")


def qa(name: str, column: bool = False) -> str:
    """Quoted for a statement run with arguments, which PyMySQL `%`-formats."""
    return ddl.percent_escaped(qc(name) if column else q(name))


def parse_dsn(dsn: str) -> dict[str, Any]:
    """mysql://user:pass@host:port/db?charset=utf8mb4 → aiomysql connect kwargs.

    Split by `poller.dsn`'s rule (the password runs to the last `@`, unescaped);
    a ValueError never quotes the DSN."""
    parsed = dsn_rules.check(dsn, (*dsn_rules.MYSQL_SCHEMES, "mysql+aiomysql"))
    host, port = parsed.host_port(3306)
    rest = urlsplit(parsed.rest)
    opts = {k: v[-1] for k, v in parse_qs(rest.query).items()}
    return {
        "host": host or "127.0.0.1",
        "port": port,
        "user": parsed.user or "root",
        "password": parsed.password or "",
        "db": rest.path.lstrip("/") or None,
        "charset": opts.get("charset", "utf8mb4"),
    }


def bounds_sql(bounds: SessionBounds) -> str:
    """The session settings of `bounds`, appended to the connection's `SET SESSION`.

    Valid on MySQL 8 and MariaDB 10.11 alike. MariaDB (10.3+) runs what is in
    `/*M!100300 ... */` and has `idle_transaction_timeout`; MySQL 8 reads a comment
    there and has no idle-in-transaction limit at all, so `wait_timeout` (a session
    idle between statements, in a transaction or not) bounds a frozen replica's
    session on both. It is harmless on MariaDB: an idle pooled connection it ends is
    recycled first (`pool_recycle`). InnoDB's lock wait is in whole seconds: rounded
    up, never to 0."""
    idle = bounds.idle_in_transaction
    lock_wait = max(1, math.ceil(bounds.lock_wait))
    return (
        f", innodb_lock_wait_timeout = {lock_wait}, wait_timeout = {idle}"
        f" /*M!100300 , idle_transaction_timeout = {idle} */"
    )


class MysqlSink(SqlSink):
    kind = "mysql"

    def __init__(self, dsn: str, shape: RowShape, table: str, pool_size: int = 2, **kw: Any):
        super().__init__(shape, table, **kw)
        self._bounds_sql = "" if self.bounds is None else bounds_sql(self.bounds)
        # A pooled connection idle past `wait_timeout` was ended by the server: dropped
        # at the next acquire (aiomysql counts from its last use) instead of failing a commit.
        self._recycle = -1 if self.bounds is None else max(1, self.bounds.idle_in_transaction // 2)
        self.connect_args = parse_dsn(dsn)
        self.pool_size = pool_size
        self.pool: aiomysql.Pool | None = None

    async def open(self) -> None:
        try:
            self.pool = await aiomysql.create_pool(
                minsize=1,
                maxsize=self.pool_size,
                autocommit=False,
                connect_timeout=10,
                init_command="SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES'), "
                "time_zone = '+00:00'" + self._bounds_sql,
                pool_recycle=self._recycle,
                **self.connect_args,
            )
            async with self.pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute("SELECT GET_LOCK('poller_ddl', 30)")
                try:
                    for stmt in ddl.bookkeeping(
                        ddl.MYSQL,
                        "`",
                        q(self.checkpoints_table),
                        q(self.processed_table),
                        q(self.failures_table) if self.failures_table else None,
                        suffix=" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
                    ):
                        await cur.execute(stmt)
                    await cur.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = DATABASE() AND table_name = %s",
                        (ddl.LEASES_TABLE,),
                    )
                    existing = {r[0] for r in await cur.fetchall()}
                    for stmt in ddl.added_columns(ddl.MYSQL, "`", existing):
                        await cur.execute(stmt)
                    if self.shape.append and self.table:
                        await cur.execute(
                            ddl.append_table(
                                ddl.MYSQL, q(self.table), " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                            )
                        )
                finally:
                    await cur.execute("SELECT RELEASE_LOCK('poller_ddl')")
                if self.table:  # else bookkeeping only
                    await self._describe(cur)
                await conn.commit()
        except (TransientError, RecordError):
            await self.close()
            raise
        except Exception as e:
            await self.close()
            raise classify(e) from e

    async def _describe(self, cur: Any) -> None:
        schema, _, name = self.table.rpartition(".")
        await cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_MAXIMUM_LENGTH, CHARACTER_OCTET_LENGTH, "
            "NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = COALESCE(NULLIF(%s, ''), DATABASE()) AND TABLE_NAME = %s",
            (schema, name),
        )
        types = {r[0]: r for r in await cur.fetchall()}
        if not types:
            raise TransientError(
                f"table {self.table} does not exist (create it, or drop `columns` for append mode)"
            )
        missing = [c for c in self.columns if c not in types]
        if missing:
            raise TransientError(f"table {self.table} has no column(s) {missing}")
        self.converters = await self._converters(cur, schema, name, types)
        cols = ", ".join(qa(c, column=True) for c in self.columns)
        ph = ", ".join(["%s"] * len(self.columns))
        # executemany folds this INSERT into one statement: it %-formats the part up to
        # VALUES but sends the ON DUPLICATE KEY part as written, so only the first is escaped.
        updates = [f"{qc(c)} = VALUES({qc(c)})" for c in self.columns if c not in self.shape.key]
        if self.shape.append or not updates:
            # A no-op update rather than INSERT IGNORE, which would also swallow data errors.
            k = qc(self.shape.key[0])
            updates = [f"{k} = {k}"]
        self._upsert_sql = (
            f"INSERT INTO {qa(self.table)} ({cols}) VALUES ({ph}) "
            f"ON DUPLICATE KEY UPDATE {', '.join(updates)}"
        )
        where = " AND ".join(f"{qa(k, column=True)} = %s" for k in self.shape.key)
        self._delete_sql = f"DELETE FROM {qa(self.table)} WHERE {where}"

    async def _converters(self, cur: Any, schema: str, name: str, types: dict[str, Any]) -> list[Converter]:
        """One converter per column, with the limits of its type in this server."""
        await cur.execute("SELECT VERSION()")
        mariadb = "mariadb" in str((await cur.fetchone())[0]).lower()
        json_columns: set[str] = set()
        if mariadb:  # MariaDB's JSON is LONGTEXT with a json_valid() check
            try:
                await cur.execute(
                    "SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                    "WHERE CONSTRAINT_SCHEMA = COALESCE(NULLIF(%s, ''), DATABASE()) AND TABLE_NAME = %s "
                    "AND LEVEL = 'Column'",
                    (schema, name),
                )
                json_columns = mariadb_json_columns([(r[0], r[1]) for r in await cur.fetchall()])
            except pymysql.err.MySQLError:
                pass  # before 10.2 there are no CHECK constraints, so no JSON columns either
        out = []
        for c in self.columns:
            _, data_type, column_type, char_max, octet_max, precision, scale, fsp = types[c]
            data_type = data_type.lower()
            kind = "json_text" if c in json_columns else _KINDS.get(data_type, "other")
            col = mysql_column(
                kind,
                data_type,
                column_type,
                char_max=char_max,
                octet_max=octet_max,
                precision=precision,
                scale=scale,
                fsp=fsp,
                mariadb=mariadb,
            )
            out.append(column_converter(col))
        return out

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.close()
            try:
                await asyncio.wait_for(pool.wait_closed(), 5)
            except (TimeoutError, Exception):
                pool.terminate()

    async def ping(self) -> None:
        try:
            async with self.transaction() as cur:
                await cur.execute("SELECT 1")
        except Exception as e:
            raise classify(e) from e

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        if self.pool is None:
            raise TransientError("mysql sink is not open")
        async with self.pool.acquire() as conn:
            try:
                await conn.begin()
                async with conn.cursor() as cur:
                    yield cur
                await conn.commit()
            except BaseException:
                try:
                    await asyncio.wait_for(conn.rollback(), 5)
                except Exception:
                    conn.close()  # a connection in an unknown state must not go back to the pool
                raise

    async def existing_ids(self, conn: Any, stream: str, ids: list[str]) -> set[str]:
        ph = ", ".join(["%s"] * len(ids))
        await conn.execute(
            f"SELECT message_id FROM {q(self.processed_table)} WHERE stream = %s AND message_id IN ({ph})",
            (stream, *ids),
        )
        return {r[0] for r in await conn.fetchall()}

    async def insert_ids(self, conn: Any, stream: str, ids: list[str]) -> None:
        if ids:
            await conn.executemany(
                f"INSERT INTO {q(self.processed_table)} (stream, message_id) VALUES (%s, %s)",
                [(stream, i) for i in ids],
            )

    async def upsert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        await conn.executemany(self._upsert_sql, rows)

    async def delete(self, conn: Any, keys: list[tuple[Any, ...]]) -> None:
        await conn.executemany(self._delete_sql, keys)

    async def insert_failures(self, conn: Any, failures: list[Failure]) -> None:
        assert self.failures_table
        cols = ", ".join(self.FAILURE_COLUMNS)
        ph = ", ".join(["%s"] * len(self.FAILURE_COLUMNS))
        rows = [
            tuple(v.replace(tzinfo=None) if hasattr(v, "tzinfo") else v for v in self.failure_row(f))
            for f in failures
        ]
        await conn.executemany(f"INSERT INTO {qa(self.failures_table)} ({cols}) VALUES ({ph})", rows)

    async def save_checkpoints(self, conn: Any, checkpoints: list[Checkpoint]) -> None:
        await conn.executemany(
            f"""INSERT INTO {q(self.checkpoints_table)}
                (stream, shard_id, sequence_number, sub_sequence, state, parent_shard_ids)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON DUPLICATE KEY UPDATE sequence_number = VALUES(sequence_number),
                  sub_sequence = VALUES(sub_sequence), state = VALUES(state),
                  parent_shard_ids = VALUES(parent_shard_ids), updated_at = CURRENT_TIMESTAMP(6)""",
            [checkpoint_row(c) for c in checkpoints],
        )

    async def lease_row(self, conn: Any, stream: str, shard_id: str) -> LeaseRow | None:
        # LOCK IN SHARE MODE (MariaDB and MySQL 8 alike) reads the latest committed row.
        await conn.execute(
            f"SELECT owner, lease_counter, lease_token FROM {q(ddl.LEASES_TABLE)} "
            f"WHERE stream = %s AND shard_id = %s LOCK IN SHARE MODE",
            (stream, shard_id),
        )
        row = await conn.fetchone()
        return None if row is None else (row[0], int(row[1]), row[2])

    async def load_checkpoints(self, stream: str) -> dict[str, Checkpoint]:
        try:
            async with self.transaction() as cur:
                await cur.execute(
                    f"SELECT shard_id, sequence_number, sub_sequence, state, parent_shard_ids "
                    f"FROM {q(self.checkpoints_table)} WHERE stream = %s",
                    (stream,),
                )
                rows = await cur.fetchall()
        except Exception as e:
            raise classify(e) from e
        return checkpoints_from_rows(stream, rows)

    async def delete_checkpoints(self, stream: str, shard_ids: list[str]) -> None:
        if not shard_ids:
            return
        try:
            async with self.transaction() as cur:
                ph = ", ".join(["%s"] * len(shard_ids))
                await cur.execute(
                    f"DELETE FROM {q(self.checkpoints_table)} WHERE stream = %s AND shard_id IN ({ph})",
                    (stream, *shard_ids),
                )
        except Exception as e:
            raise classify(e) from e

    async def processed_ids(self, stream: str, ids: list[str]) -> set[str]:
        try:
            async with self.transaction() as cur:
                return await self.existing_ids(cur, stream, ids)
        except Exception as e:
            raise classify(e) from e

    async def purge_processed(self, stream: str, older_than_seconds: float) -> int:
        try:
            async with self.transaction() as cur:
                n = await cur.execute(
                    f"DELETE FROM {q(self.processed_table)} WHERE stream = %s "
                    f"AND processed_at < CURRENT_TIMESTAMP(6) - INTERVAL %s SECOND "
                    f"AND message_id NOT LIKE %s AND (message_id NOT LIKE %s "
                    f"OR processed_at < CURRENT_TIMESTAMP(6) - INTERVAL %s SECOND)",
                    (
                        stream,
                        int(older_than_seconds),
                        FILE_REPLAY_MARK + "%",
                        QUEUE_REPLAY_MARK + "%",
                        int(max(older_than_seconds, QUEUE_REPLAY_MARK_SECONDS)),
                    ),
                )
        except Exception as e:
            raise classify(e) from e
        return int(n or 0)

    def classify(self, exc: BaseException) -> Exception:
        return classify(exc)

    def is_integrity_error(self, exc: BaseException) -> bool:
        return isinstance(exc, pymysql.err.IntegrityError)
