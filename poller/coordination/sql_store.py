"""Leases in the sink's own database: the table `poller_leases`, created by the
sink with its other bookkeeping tables (`sinks/ddl.py`).

The store has its own small connection pool, in autocommit: each lease write
is one conditional statement (`... WHERE lease_counter = %s`) whose row count
says whether it won. Waiting for a row lock is bounded (`LOCK_WAIT_SECONDS`):
a commit checks its lease with a shared lock as its last statement, and a
take that meets that lock gives up for this round rather than stall renewals.

Invariants: every write moves `lease_counter` on and is conditional on it (and
a holder's write also on `owner` and `lease_token`, its tenure's);
`state = 'ended'` is never taken again; no statement compares timestamps
(`updated_at` is for people).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from poller import dsn as dsn_rules
from poller.coordination.lease import Lease
from poller.records import Checkpoint, ShardState, TransientError, describe_error

Dialect = Literal["postgres", "mysql", "sqlite"]

LEASES = "poller_leases"
CHECKPOINTS = "poller_checkpoints"
# How long a lease write waits for a row another transaction holds (a commit's
# fencing check, or a commit stopped half-way); then it is tried next round.
LOCK_WAIT_SECONDS = 1

_NOW = {"postgres": "now()", "mysql": "CURRENT_TIMESTAMP(6)", "sqlite": "CURRENT_TIMESTAMP"}
# Seconds since `updated_at`, by the database's own clock and in the session the
# writes use (MySQL's DATETIME is the session's local time): one clock, for people.
_AGE = {
    "postgres": "EXTRACT(EPOCH FROM now() - updated_at)::float8",
    "mysql": "TIMESTAMPDIFF(MICROSECOND, updated_at, CURRENT_TIMESTAMP(6)) / 1000000",
    "sqlite": "(julianday('now') - julianday(updated_at)) * 86400.0",
}
_COLUMNS = "shard_id, owner, lease_counter, parent_shard_ids, state, lease_token"
_WIDTH = 6  # the columns of `_COLUMNS`


def _lease(row: Any) -> Lease:
    shard_id, owner, counter, parents, state, token = row
    parent_ids = tuple(p for p in (parents or "").split(",") if p)
    return Lease(shard_id, owner, int(counter), parent_ids, state == "ended", token)


class SqlLeaseStore:
    """`LeaseStore` over PostgreSQL, MySQL / MariaDB or SQLite."""

    keeps_checkpoints = False

    def __init__(self, dialect: Dialect, dsn: str):
        self.kind: str = dialect
        self.one_worker = dialect == "sqlite"
        self.dsn = dsn
        self._db: _Driver | None = None
        now = _NOW[dialect]
        if_absent = (
            "ON DUPLICATE KEY UPDATE shard_id = shard_id"
            if dialect == "mysql"
            else "ON CONFLICT (stream, shard_id) DO NOTHING"
        )
        held = "stream = %s AND shard_id = %s AND owner = %s AND lease_token = %s AND lease_counter = %s"
        self._sql = {
            "list": f"SELECT {_COLUMNS} FROM {LEASES} WHERE stream = %s",
            "get": f"SELECT {_COLUMNS} FROM {LEASES} WHERE stream = %s AND shard_id = %s",
            "list_aged": f"SELECT {_COLUMNS}, {_AGE[dialect]} FROM {LEASES} WHERE stream = %s",
            "create": f"INSERT INTO {LEASES} (stream, shard_id, parent_shard_ids) VALUES (%s, %s, %s) "
            + if_absent,
            "take": f"UPDATE {LEASES} SET owner = %s, lease_token = %s, lease_counter = lease_counter + 1, "
            f"updated_at = {now} "
            "WHERE stream = %s AND shard_id = %s AND lease_counter = %s AND state = 'open'",
            "renew": f"UPDATE {LEASES} SET lease_counter = lease_counter + 1, updated_at = {now} "
            f"WHERE {held}",
            "release": f"UPDATE {LEASES} SET owner = NULL, lease_token = NULL, "
            f"lease_counter = lease_counter + 1, updated_at = {now} WHERE {held}",
            "end": f"UPDATE {LEASES} SET owner = NULL, lease_token = NULL, state = 'ended', "
            f"lease_counter = lease_counter + 1, updated_at = {now} WHERE {held}",
            "delete": f"DELETE FROM {LEASES} WHERE stream = %s AND shard_id = %s AND lease_counter = %s",
            "keep_row": f"INSERT INTO {CHECKPOINTS} "
            "(stream, shard_id, sequence_number, sub_sequence, state, parent_shard_ids) "
            "VALUES (%s, %s, %s, %s, %s, %s) " + if_absent,
            "row": f"SELECT sequence_number, sub_sequence, state, parent_shard_ids FROM {CHECKPOINTS} "
            "WHERE stream = %s AND shard_id = %s",
        }

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"the SQLite database {_sqlite_path(self.dsn)}"
        host = dsn_rules.parse(self.dsn).host
        return f"the {'PostgreSQL' if self.kind == 'postgres' else 'MySQL'} database at {host}"

    async def open(self) -> None:
        try:
            if self.kind == "postgres":
                self._db = await _Postgres.connect(self.dsn)
            elif self.kind == "mysql":
                self._db = await _Mysql.connect(self.dsn)
            else:
                self._db = await _Sqlite.connect(self.dsn)
        except TransientError:
            raise
        except Exception as e:
            raise self._transient("opening", e) from e

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    # -- reads -------------------------------------------------------------------------

    async def list_leases(self, stream: str) -> list[Lease]:
        return [_lease(r) for r in await self._fetch("list", (stream,))]

    async def get(self, stream: str, shard_id: str) -> Lease | None:
        rows = await self._fetch("get", (stream, shard_id))
        return _lease(rows[0]) if rows else None

    async def list_aged(self, stream: str) -> list[tuple[Lease, float]]:
        """The stream's leases, each with the seconds since its last write by the
        database's clock (`updated_at`): for people (`poller status`); no worker
        decides anything by it."""
        return [(_lease(r[:_WIDTH]), float(r[_WIDTH])) for r in await self._fetch("list_aged", (stream,))]

    # -- conditional writes ------------------------------------------------------------

    async def create(self, stream: str, shard_id: str, parents: tuple[str, ...]) -> None:
        await self._execute("create", (stream, shard_id, ",".join(parents)))

    async def take(self, stream: str, lease: Lease, owner: str, token: str) -> Lease | None:
        won = await self._execute("take", (owner, token, stream, lease.shard_id, lease.counter))
        return Lease(lease.shard_id, owner, lease.counter + 1, lease.parents, token=token) if won else None

    async def renew(self, stream: str, lease: Lease) -> Lease | None:
        won = await self._execute("renew", self._held(stream, lease))
        return replace(lease, counter=lease.counter + 1) if won else None

    async def release(self, stream: str, lease: Lease) -> bool:
        return await self._execute("release", self._held(stream, lease)) == 1

    async def end(self, stream: str, lease: Lease) -> bool:
        return await self._execute("end", self._held(stream, lease)) == 1

    async def delete(self, stream: str, lease: Lease) -> bool:
        return await self._execute("delete", (stream, lease.shard_id, lease.counter)) == 1

    async def keep_row(self, row: Checkpoint) -> Checkpoint:
        parents = ",".join(row.parent_shard_ids)
        args = (row.stream, row.shard_id, row.sequence_number, row.sub_sequence, str(row.state), parents)
        await self._execute("keep_row", args)
        stored = await self._fetch("row", (row.stream, row.shard_id))
        if not stored:
            raise TransientError(f"checkpoint row {row.shard_id} vanished as it was stored")
        sequence, sub, state, parent_ids = stored[0]
        return Checkpoint(
            row.stream,
            row.shard_id,
            sequence,
            int(sub),
            ShardState(state),
            tuple(p for p in (parent_ids or "").split(",") if p),
        )

    # -- plumbing ----------------------------------------------------------------------

    @staticmethod
    def _held(stream: str, lease: Lease) -> tuple[Any, ...]:
        return (stream, lease.shard_id, lease.owner, lease.token, lease.counter)

    def _transient(self, what: str, e: BaseException) -> TransientError:
        return TransientError(f"lease store ({self.kind}): {what}: {type(e).__name__}: {describe_error(e)}")

    async def _execute(self, name: str, args: tuple[Any, ...]) -> int:
        db = self._open_db()
        try:
            return await db.execute(self._sql[name], args)
        except Exception as e:
            raise self._transient(name, e) from e

    async def _fetch(self, name: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        db = self._open_db()
        try:
            return await db.fetch(self._sql[name], args)
        except Exception as e:
            raise self._transient(name, e) from e

    def _open_db(self) -> _Driver:
        if self._db is None:
            raise TransientError(f"lease store ({self.kind}) is not open")
        return self._db


# --------------------------------------------------------------------------- drivers
# Statements are written with %s placeholders; each driver speaks its own.


class _Driver:
    async def execute(self, sql: str, args: tuple[Any, ...]) -> int:
        """Rows the statement changed."""
        raise NotImplementedError

    async def fetch(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


def _numbered(sql: str) -> str:
    parts = sql.split("%s")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


class _Postgres(_Driver):
    def __init__(self, pool: Any):
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str) -> _Postgres:
        import asyncpg

        # As the sink does: asyncpg gets the DSN without its password, and the password apart.
        parsed = dsn_rules.parse(dsn)
        pool = await asyncpg.create_pool(
            parsed.without_password(),
            password=parsed.password,
            min_size=1,
            max_size=2,
            timeout=10,
            server_settings={"lock_timeout": f"{LOCK_WAIT_SECONDS * 1000}"},
        )
        return cls(pool)

    async def execute(self, sql: str, args: tuple[Any, ...]) -> int:
        status = await self.pool.execute(_numbered(sql), *args, timeout=30)
        return int(str(status).split()[-1])

    async def fetch(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.pool.fetch(_numbered(sql), *args, timeout=30)]

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), 5)
        except Exception:
            self.pool.terminate()


class _Mysql(_Driver):
    def __init__(self, pool: Any):
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str) -> _Mysql:
        import aiomysql

        parsed = dsn_rules.check(dsn, (*dsn_rules.MYSQL_SCHEMES, "mysql+aiomysql"))
        host, port = parsed.host_port(3306)
        rest = urlsplit(parsed.rest)
        charset = {k: v[-1] for k, v in parse_qs(rest.query).items()}.get("charset", "utf8mb4")
        pool = await aiomysql.create_pool(
            minsize=1,
            maxsize=2,
            autocommit=True,
            connect_timeout=10,
            init_command=f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_SECONDS}",
            host=host or "127.0.0.1",
            port=port,
            user=parsed.user or "root",
            password=parsed.password or "",
            db=rest.path.lstrip("/") or None,
            charset=charset,
        )
        return cls(pool)

    async def execute(self, sql: str, args: tuple[Any, ...]) -> int:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            return int(await cur.execute(sql, args) or 0)

    async def fetch(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, args)
            return [tuple(r) for r in await cur.fetchall()]

    async def close(self) -> None:
        self.pool.close()
        try:
            await asyncio.wait_for(self.pool.wait_closed(), 5)
        except Exception:
            self.pool.terminate()


def _sqlite_path(dsn: str) -> str:
    for prefix in ("sqlite:///", "sqlite://", "file:"):
        if dsn.startswith(prefix):
            return dsn[len(prefix) :]
    return dsn


class _Sqlite(_Driver):
    def __init__(self, db: Any):
        self.db = db

    @classmethod
    async def connect(cls, dsn: str) -> _Sqlite:
        import aiosqlite

        db = await aiosqlite.connect(_sqlite_path(dsn), isolation_level=None, timeout=LOCK_WAIT_SECONDS)
        return cls(db)

    async def execute(self, sql: str, args: tuple[Any, ...]) -> int:
        cur = await self.db.execute(sql.replace("%s", "?"), args)
        return int(cur.rowcount or 0)

    async def fetch(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self.db.execute(sql.replace("%s", "?"), args) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def close(self) -> None:
        await self.db.close()
