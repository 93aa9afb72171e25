"""The tables a sink creates for itself, written once for the three dialects."""

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


def bookkeeping(
    t: Types, q: str, checkpoints: str, processed: str, failures: str | None, suffix: str = ""
) -> list[str]:
    """DDL for checkpoints, processed message ids and failures. `q` quotes identifiers."""
    stmts = [
        f"CREATE TABLE IF NOT EXISTS {checkpoints} ("
        f"stream {t.key} NOT NULL, shard_id {t.key} NOT NULL, sequence_number {t.text}, "
        f"sub_sequence {t.bigint} NOT NULL DEFAULT 0, state {t.key} NOT NULL DEFAULT 'RUNNING', "
        f"parent_shard_ids {t.text} NOT NULL DEFAULT '', updated_at {t.ts} NOT NULL DEFAULT {t.now}, "
        f"PRIMARY KEY (stream, shard_id)){suffix}",
        f"CREATE TABLE IF NOT EXISTS {processed} ("
        f"stream {t.key} NOT NULL, message_id {t.key} NOT NULL, "
        f"processed_at {t.ts} NOT NULL DEFAULT {t.now}, PRIMARY KEY (stream, message_id)){suffix}",
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
    """Quote a possibly schema-qualified identifier: `a.b` → `"a"."b"`."""
    return ".".join(quote + part.replace(quote, quote * 2) + quote for part in name.split("."))
