"""Tables and columns with `.` and `%` in their names work end to end on the real
PostgreSQL, MariaDB and SQLite: a table `orders%s` (also schema-qualified) with
a column `a.b` receives rows, loses a deleted one, and its failures table
`failed%s` receives a failure row. The rule is in the README's stream-file section."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from poller.config import StreamConfig
from poller.processing.mapping import RowOp
from poller.processing.pipeline import Preparer
from poller.records import KINESIS, Checkpoint, Failure, Record
from poller.sinks import ddl
from poller.sinks.base import Transaction
from poller.sinks.factory import build_sink, failures_table_of
from tests.support import db


def test_a_table_name_is_split_at_its_schema_a_column_name_never() -> None:
    assert ddl.quote_ident("public.orders%s") == '"public"."orders%s"'
    assert ddl.quote_column("a.b") == '"a.b"'
    assert ddl.quote_column('say "hi"') == '"say ""hi"""'
    assert ddl.quote_column("a`b", "`") == "`a``b`"
    assert ddl.percent_escaped(ddl.quote_column("c%s", "`")) == "`c%%s`"


def record(stream: str, seq: int, data: Any, raw: bytes = b"") -> Record:
    return Record(
        source=KINESIS,
        stream=stream,
        shard_id="shardId-000",
        sequence_number=str(seq),
        data=data,
        raw_data=raw or repr(data).encode(),
        partition_key="k",
    )


def create(kind: str, dsn: str, table: str) -> None:
    """`table` (unqualified) with an `id` key, a column `a.b` and a column `c%s`."""
    if kind == "sqlite":
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as conn:
            conn.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, "a.b" TEXT, "c%s" INTEGER)')
        return
    q = '"' if kind == "postgres" else "`"
    db.execute(
        kind, dsn, f"CREATE TABLE {q}{table}{q} (id bigint PRIMARY KEY, {q}a.b{q} text, {q}c%s{q} int)"
    )


def rows(kind: str, dsn: str, sql: str) -> list[tuple[Any, ...]]:
    # No arguments: neither driver then %-formats the statement.
    if kind == "sqlite":
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql).fetchall()
    return db.fetch(kind, dsn, sql)


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    kind = str(request.param)
    if kind == "sqlite":
        return kind, f"sqlite:///{tmp_path / 'identifiers.sqlite'}"
    return kind, str(request.getfixturevalue("pg_dsn" if kind == "postgres" else "mysql_dsn"))


@pytest.mark.integration
@pytest.mark.parametrize("qualified", [False, True], ids=["table", "schema.table"])
async def test_dots_and_percent_signs_in_names_reach_the_database(
    target: tuple[str, str], qualified: bool
) -> None:
    kind, dsn = target
    name = f"orders%s_{uuid.uuid4().hex[:6]}"
    failures = f"failed%s_{uuid.uuid4().hex[:6]}"
    schema = {"postgres": "public", "mysql": "test", "sqlite": "main"}[kind]
    table = f"{schema}.{name}" if qualified else name
    create(kind, dsn, name)
    cfg = StreamConfig.model_validate(
        {
            "name": "identifiers",
            "source": {"type": "kinesis", "stream": "s"},
            "on_failure": {"type": "table", "table": failures},
            "sink": {
                "type": kind,
                "dsn": dsn,
                "table": table,
                "key": ["id"],
                "columns": {"id": "data.id", "a.b": "data.name", "c%s": "data.n"},
            },
        }
    )
    sink = build_sink(cfg, failures_table_of(cfg, True))
    mapped = Preparer(cfg, sink).rows
    now = time.time()
    try:
        await sink.open()
        good = [record(cfg.name, 1, {"id": 1, "name": "one", "n": 1}), record(cfg.name, 2, {"id": 2, "n": 2})]
        bad = record(cfg.name, 3, None, raw=b"100% not JSON")
        await sink.commit(
            Transaction(
                stream=cfg.name,
                ops=[op for r in good for op in mapped(r)],
                checkpoints=[Checkpoint(cfg.name, "shardId-000", "3")],
                failures=[Failure(bad, "decode_error", "DecodeError", "not JSON", 1, now, now)],
            )
        )
        await sink.commit(
            Transaction(
                stream=cfg.name,
                ops=[RowOp(key=(2,), values=None)],
                checkpoints=[Checkpoint(cfg.name, "shardId-000", "4")],
            )
        )
    finally:
        await sink.close()
    q = (lambda n: ddl.quote_column(n, "`")) if kind == "mysql" else ddl.quote_column
    assert rows(kind, dsn, f"SELECT id, {q('a.b')}, {q('c%s')} FROM {q(name)}") == [(1, "one", 1)]
    stored = rows(
        kind, dsn, f"SELECT sequence_number, payload FROM {q(failures)} WHERE stream = 'identifiers'"
    )
    assert stored == [("3", "100% not JSON")]
    if kind != "sqlite":
        db.execute(kind, dsn, f"DROP TABLE {q(name)}", f"DROP TABLE {q(failures)}")
        db.drop_bookkeeping(kind, dsn, cfg.name)
