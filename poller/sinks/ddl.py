"""The tables a sink creates for itself, written once for the three dialects,
and how identifiers are quoted.

Identifier rule (README, "A stream file"): a table is `name` or `schema.name`
(SQLite: `main.name`), so its one `.` separates the schema; a column is one
identifier whatever it holds (`a.b` is the column named `a.b`). Any other
character, `%` and quotes included, is quoted and kept. A MySQL statement run
with arguments goes through PyMySQL's `%` formatting, so `%` in the
identifiers of such a statement is written `%%` (`percent_escaped`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Types:
    text: str
    key: str  # a text column that is part of a primary key (MySQL needs a length)
    bigint: str
    ts: str
    now: str
    serial_pk: str
    json: str
    long_text: str


POSTGRES = Types(
    text="text",
    key="text",
    bigint="bigint",
    ts="timestamptz",
    now="now()",
    serial_pk="bigserial PRIMARY KEY",
    json="jsonb",
    long_text="text",
)
MYSQL = Types(
    text="VARCHAR(1024)",
    key="VARCHAR(255)",
    bigint="BIGINT",
    ts="DATETIME(6)",
    now="CURRENT_TIMESTAMP(6)",
    serial_pk="BIGINT AUTO_INCREMENT PRIMARY KEY",
    json="LONGTEXT",
    long_text="LONGTEXT",
)
SQLITE = Types(
    text="TEXT",
    key="TEXT",
    bigint="INTEGER",
    ts="TEXT",
    now="CURRENT_TIMESTAMP",
    serial_pk="INTEGER PRIMARY KEY AUTOINCREMENT",
    json="TEXT",
    long_text="TEXT",
)


# Shard leases, when several replicas share a stream (`coordination:`). One row
# per (stream, shard): `owner` NULL when free; every write is conditional on
# `lease_counter` and moves it on; `state` is `open` or `ended` (read to its end:
# never taken again). `lease_token` is the holding tenure's token: a holder's
# writes and every fencing check compare it, never `owner` alone (a readable
# name two processes may share). `updated_at` is for people: no worker compares
# wall clocks.
LEASES_TABLE = "poller_leases"

# The daemons running a stream: one row per (stream, host, pid), renewed by the
# daemon with the database's clock and deleted when it stops (`sinks/daemons.py`).
DAEMONS_TABLE = "poller_daemons"


def lease_columns_added(t: Types) -> dict[str, str]:
    """Columns of `poller_leases` that tables created by an older poller lack:
    each is added in place at start (additive, safe to run twice)."""
    return {"lease_token": t.key}


def added_columns(t: Types, q: str, existing: set[str]) -> list[str]:
    """ALTER statements for the lease columns `existing` lacks (column names as the
    database lists them). Written without IF NOT EXISTS, which MySQL 8 lacks."""
    leases = quote_ident(LEASES_TABLE, q)
    return [
        f"ALTER TABLE {leases} ADD COLUMN {name} {kind}"
        for name, kind in lease_columns_added(t).items()
        if name not in {c.lower() for c in existing}
    ]


def bookkeeping(
    t: Types, q: str, checkpoints: str, processed: str, failures: str | None, suffix: str = ""
) -> list[str]:
    """DDL for checkpoints, processed message ids, failures, shard leases and running
    daemons. `q` quotes identifiers."""
    leases = quote_ident(LEASES_TABLE, q)
    daemons = quote_ident(DAEMONS_TABLE, q)
    stmts = [
        f"CREATE TABLE IF NOT EXISTS {checkpoints} ("
        f"stream {t.key} NOT NULL, shard_id {t.key} NOT NULL, sequence_number {t.text}, "
        f"sub_sequence {t.bigint} NOT NULL DEFAULT 0, state {t.key} NOT NULL DEFAULT 'RUNNING', "
        f"parent_shard_ids {t.text} NOT NULL DEFAULT '', updated_at {t.ts} NOT NULL DEFAULT {t.now}, "
        f"PRIMARY KEY (stream, shard_id)){suffix}",
        f"CREATE TABLE IF NOT EXISTS {processed} ("
        f"stream {t.key} NOT NULL, message_id {t.key} NOT NULL, "
        f"processed_at {t.ts} NOT NULL DEFAULT {t.now}, PRIMARY KEY (stream, message_id)){suffix}",
        f"CREATE TABLE IF NOT EXISTS {leases} ("
        f"stream {t.key} NOT NULL, shard_id {t.key} NOT NULL, owner {t.key}, "
        f"lease_counter {t.bigint} NOT NULL DEFAULT 0, parent_shard_ids {t.text} NOT NULL DEFAULT '', "
        f"state {t.key} NOT NULL DEFAULT 'open', updated_at {t.ts} NOT NULL DEFAULT {t.now}, "
        f"lease_token {t.key}, PRIMARY KEY (stream, shard_id)){suffix}",
        f"CREATE TABLE IF NOT EXISTS {daemons} ("
        f"stream {t.key} NOT NULL, host {t.key} NOT NULL, pid {t.bigint} NOT NULL, "
        f"started_at {t.ts} NOT NULL DEFAULT {t.now}, renewed_at {t.ts} NOT NULL DEFAULT {t.now}, "
        f"PRIMARY KEY (stream, host, pid)){suffix}",
    ]
    if failures:
        stmts.append(
            f"CREATE TABLE IF NOT EXISTS {failures} ("
            f"id {t.serial_pk}, stream {t.key} NOT NULL, shard_id {t.key}, sequence_number {t.text}, "
            f"sub_sequence {t.bigint}, message_id {t.key}, reason {t.key} NOT NULL, "
            f"error_class {t.key}, error_message {t.long_text}, payload {t.long_text}, "
            f"payload_encoding {t.key}, attempts {t.bigint}, first_failure_at {t.ts}, "
            f"last_failure_at {t.ts}, created_at {t.ts} NOT NULL DEFAULT {t.now}){suffix}"
        )
    return stmts


def append_table(t: Types, table: str, suffix: str = "") -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        f"stream {t.key} NOT NULL, shard_id {t.key} NOT NULL, sequence_number {t.key} NOT NULL, "
        f"sub_sequence {t.bigint} NOT NULL DEFAULT 0, partition_key {t.text}, arrival_time {t.ts}, "
        f"data {t.json}, PRIMARY KEY (shard_id, sequence_number, sub_sequence)){suffix}"
    )


def quote_ident(name: str, quote: str = '"') -> str:
    """Quote a possibly schema-qualified table name: `a.b` → `"a"."b"`."""
    return ".".join(quote_column(part, quote) for part in name.split("."))


def quote_column(name: str, quote: str = '"') -> str:
    """Quote one identifier whole: the column `a.b` → `"a.b"`."""
    return quote + name.replace(quote, quote * 2) + quote


def percent_escaped(sql: str) -> str:
    """A piece of a MySQL statement that PyMySQL will `%`-format with arguments."""
    return sql.replace("%", "%%")


def identifier_problem(
    name: str, *, table: bool, max_bytes: int | None = None, max_chars: int | None = None
) -> str | None:
    """Why `name` cannot be used as a table (`table=True`) or column name, or None."""
    if not name:
        return "an empty name"
    if "\x00" in name:
        return "a name cannot hold a NUL character"
    parts = name.split(".") if table else [name]
    if len(parts) > 2:
        return "a table is `name` or `schema.name`: at most one `.`"
    if not all(parts):
        return "an empty name before or after the `.`"
    if max_bytes is not None and any(len(p.encode()) > max_bytes for p in parts):
        return f"longer than {max_bytes} bytes, the database's limit for a name"
    if max_chars is not None and any(len(p) > max_chars for p in parts):
        return f"longer than {max_chars} characters, the database's limit for a name"
    return None
