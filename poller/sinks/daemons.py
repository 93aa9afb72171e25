"""Which daemons are running a stream: one row per (stream, host, pid) in the
stream's bookkeeping store (`poller_daemons`: the sink's database, or a
handler or lambda sink's checkpoint store), written by the daemon and read by
the operator commands that must not write under a running daemon (a rewind,
a replay, without `coordination:`).

Invariants:
- Every time in a row is the database's (`now()` at each write), and a row's
  age is read against that same clock in the same kind of session: no host's
  clock is compared with another's.
- A daemon writes its row once its sink is open, renews it every
  `BEAT_SECONDS`, and deletes it when the stream stops (SIGTERM). A row not
  renewed for `STALE_SECONDS` is a daemon gone (SIGKILL, a host lost): it
  blocks nothing after that, so a killed daemon holds off a rewind for at
  most `STALE_SECONDS`.
- A beat that fails (the database down) is logged and tried again at the
  next beat: liveness never stops a stream.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

from poller.observability.logging import get_logger
from poller.sink_api import Sink
from poller.sinks import ddl
from poller.sinks.base import SqlSink
from poller.sinks.plain_sql import PlainSql

log = get_logger()

BEAT_SECONDS = 5.0
# Four beats: a daemon on a loaded host or a slow database misses a few before
# it counts as gone.
STALE_SECONDS = 20.0

_NOW = {"postgres": "now()", "mysql": "CURRENT_TIMESTAMP(6)", "sqlite": "CURRENT_TIMESTAMP"}
_AGE = {
    "postgres": "EXTRACT(EPOCH FROM now() - renewed_at)::float8",
    "mysql": "TIMESTAMPDIFF(MICROSECOND, renewed_at, CURRENT_TIMESTAMP(6)) / 1000000",
    "sqlite": "(julianday('now') - julianday(renewed_at)) * 86400.0",
}


@dataclass(frozen=True, slots=True)
class DaemonRow:
    host: str
    pid: int
    started_at: Any  # as the driver returns it (a datetime, or SQLite's text)
    renewed_ago: float  # seconds, by the database's clock


def this_process() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def bookkeeping_store(sink: Sink) -> SqlSink | None:
    """The SQL store the daemon keeps a stream's bookkeeping in, if it has one."""
    if isinstance(sink, SqlSink):
        return sink
    from poller.sinks.handler import EventSink

    return sink.store if isinstance(sink, EventSink) else None


class Daemons:
    """The `poller_daemons` rows of one store."""

    def __init__(self, store: SqlSink):
        self.store = store
        self.sql = PlainSql(store.kind)
        self.table = self.sql.table(ddl.DAEMONS_TABLE)
        self.now = _NOW.get(store.kind, "CURRENT_TIMESTAMP")

    async def beat(self, stream: str, host: str, pid: int, *, first: bool) -> None:
        """Renew this process's row (the first beat also sets `started_at`)."""
        started = f"started_at = {self.now}, " if first else ""
        set_clause = f"{started}renewed_at = {self.now}"
        if self.store.kind == "mysql":
            upsert = f"ON DUPLICATE KEY UPDATE {set_clause}"
        else:
            upsert = f"ON CONFLICT (stream, host, pid) DO UPDATE SET {set_clause}"
        async with self.store.transaction() as conn:
            await self.sql.execute(
                conn,
                f"INSERT INTO {self.table} (stream, host, pid, started_at, renewed_at) "
                f"VALUES (?, ?, ?, {self.now}, {self.now}) {upsert}",
                stream,
                host,
                pid,
            )

    async def gone(self, stream: str, host: str, pid: int) -> None:
        async with self.store.transaction() as conn:
            await self.sql.execute(
                conn, f"DELETE FROM {self.table} WHERE stream = ? AND host = ? AND pid = ?", stream, host, pid
            )

    async def live(self, conn: Any, stream: str) -> list[DaemonRow]:
        """The stream's daemons renewed within `STALE_SECONDS`, read on `conn` (inside the
        caller's transaction), oldest first."""
        age = _AGE.get(self.store.kind, _AGE["sqlite"])
        rows = await self.sql.fetch(
            conn,
            f"SELECT host, pid, started_at, {age} FROM {self.table} WHERE stream = ? ORDER BY started_at",
            stream,
        )
        return [
            DaemonRow(str(host), int(pid), started, float(ago))
            for host, pid, started, ago in rows
            if float(ago) < STALE_SECONDS
        ]


@asynccontextmanager
async def announced(sink: Sink, stream: str) -> AsyncIterator[None]:
    """This process's row for `stream`, renewed while inside, deleted on the way out."""
    store = bookkeeping_store(sink)
    if store is None:
        yield
        return
    daemons = Daemons(store)
    host, pid = this_process()
    task = asyncio.create_task(_keep_alive(daemons, stream, host, pid), name=f"daemon-row-{stream}")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        try:
            # Bounded: a database that does not answer leaves the row to go stale.
            await asyncio.wait_for(daemons.gone(stream, host, pid), BEAT_SECONDS)
        except Exception as e:
            log.warning("daemon row not deleted; it goes stale", stream=stream, error=str(e))


async def _keep_alive(daemons: Daemons, stream: str, host: str, pid: int) -> None:
    first = True
    while True:
        try:
            await asyncio.wait_for(daemons.beat(stream, host, pid, first=first), BEAT_SECONDS)
            first = False
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("daemon row not renewed", stream=stream, error=f"{type(e).__name__}: {e}")
        await asyncio.sleep(BEAT_SECONDS)
