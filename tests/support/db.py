"""Plain synchronous access to the test databases, for assertions and set-up."""

from __future__ import annotations

from typing import Any

import psycopg
import pymysql

from poller.sinks.mysql import parse_dsn


def connect(kind: str, dsn: str) -> Any:
    if kind == "postgres":
        return psycopg.connect(dsn, autocommit=True)
    args = parse_dsn(dsn)
    return pymysql.connect(
        host=args["host"],
        port=args["port"],
        user=args["user"],
        password=args["password"],
        database=args["db"],
        autocommit=True,
        charset="utf8mb4",
    )


def execute(kind: str, dsn: str, *statements: str) -> None:
    with connect(kind, dsn) as conn:
        cur = conn.cursor()
        for s in statements:
            cur.execute(s)


def fetch(kind: str, dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with connect(kind, dsn) as conn:
        cur = conn.cursor()
        cur.execute(sql, params)
        return list(cur.fetchall())


def scalar(kind: str, dsn: str, sql: str, params: Any = None) -> Any:
    rows = fetch(kind, dsn, sql, params)
    return rows[0][0] if rows else None


def drop_bookkeeping(kind: str, dsn: str, stream: str) -> None:
    """Forget a stream's checkpoints, processed ids and leases (tables are shared by tests)."""
    for table in ("poller_checkpoints", "poller_processed", "poller_failures", "poller_leases"):
        try:
            execute(kind, dsn, f"DELETE FROM {table} WHERE stream = '{stream}'")
        except Exception:
            pass  # not created yet
