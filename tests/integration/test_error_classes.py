"""Errors the database raises for what a record contains are record errors,
whatever form they take; a failure record the destination refuses never
blocks the stream. Real PostgreSQL and MariaDB, the real failure policy."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import secrets
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pymysql
import pytest

from poller.config import StreamConfig
from poller.destinations import build_destination
from poller.processing.failures import Decision, FailurePolicy, Unit, count_failures
from poller.processing.pipeline import Preparer
from poller.records import KINESIS, Checkpoint, Record, RecordError, TransientError
from poller.sinks import mysql as mysql_sink
from poller.sinks import postgres as postgres_sink
from poller.sinks.base import Transaction
from poller.sinks.factory import build_sink, failures_table_of
from tests.support import db

pytestmark = pytest.mark.integration


def records(stream: str, payloads: list[bytes], shard: str = "shardId-000") -> list[Record]:
    return [
        Record(
            source=KINESIS,
            stream=stream,
            shard_id=shard,
            sequence_number=str(i + 1),
            data=p,
            raw_data=p,
            partition_key="k",
        )
        for i, p in enumerate(payloads)
    ]


def config(kind: str, dsn: str, table: str, failures: str, fallback: Path) -> StreamConfig:
    return StreamConfig.model_validate(
        {
            "name": table,
            "source": {"type": "kinesis", "stream": "s"},
            "retry": {"max_attempts": 2, "backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.02},
            "on_failure": {"type": "table", "table": failures, "fallback_path": str(fallback)},
            "sink": {
                "type": kind,
                "dsn": dsn,
                "table": table,
                "key": ["id"],
                "columns": {"id": "data.id", "n": "data.n", "name": "data.name"},
            },
        }
    )


async def run_batch(cfg: StreamConfig, batch: list[Record], before_commit: Any = None) -> list[Unit]:
    """What a shard lane does with one batch: units, the policy, a checkpoint."""
    sink = build_sink(cfg, failures_table_of(cfg, True))
    destination = build_destination(cfg.on_failure, True)
    await sink.open()
    try:
        if before_commit is not None:
            before_commit()
        units = Preparer(cfg, sink).stream_units(batch)

        def build_tx(active: list[Unit]) -> Transaction:
            tx = Transaction(stream=cfg.name)
            last = active[-1].token
            for u in active:
                if u.failure is None:
                    tx.ops.extend(u.ops)
                else:
                    tx.failures.append(u.failure)
            tx.checkpoints = [Checkpoint(cfg.name, last.shard_id, last.sequence_number, last.sub_sequence)]
            return tx

        def decide(u: Unit, _: RecordError) -> Decision:
            return "fail" if u.attempts >= cfg.retry.max_attempts else "retry"

        policy = FailurePolicy(cfg.name, cfg.retry, sink, destination, build_tx=build_tx, decide=decide)
        await asyncio.wait_for(policy.commit(units), 60)
        count_failures(cfg.name, destination, units)
    finally:
        await sink.close()
    return units


def make_target(kind: str, dsn: str, table: str) -> None:
    name_type = "text" if kind == "postgres" else "VARCHAR(3000)"
    db.execute(
        kind,
        dsn,
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE TABLE {table} (id bigint PRIMARY KEY, n int, name {name_type})",
    )


def failure_rows(kind: str, dsn: str, failures: str, table: str) -> list[tuple[Any, ...]]:
    return db.fetch(
        kind,
        dsn,
        f"SELECT sequence_number, reason, payload, payload_encoding FROM {failures} "
        f"WHERE stream = %s ORDER BY id",
        (table,),
    )


def payloads(n: int, bad: dict[int, dict[str, Any]]) -> list[bytes]:
    return [json.dumps(bad.get(i, {"id": i, "n": i, "name": f"r{i}"})).encode() for i in range(n)]


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_server_errors_caused_by_a_record_fail_that_record_alone(
    kind: str, pg_dsn: str, mysql_dsn: str, tmp_path: Path
) -> None:
    """A trigger's own exception (PostgreSQL P0001, MySQL SIGNAL 1644) and, on
    PostgreSQL, an index row too large (54000): the record goes to the failure
    table with its payload, every other row lands, the checkpoint reaches the end."""
    dsn = pg_dsn if kind == "postgres" else mysql_dsn
    table = f"ec_{kind}_{uuid.uuid4().hex[:6]}"
    failures = f"{table}_failures"
    make_target(kind, dsn, table)
    if kind == "postgres":
        db.execute(
            kind,
            dsn,
            f"CREATE UNIQUE INDEX {table}_name ON {table} (name)",
            f"CREATE FUNCTION {table}_f() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.n = 13 THEN RAISE EXCEPTION 'thirteen'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER {table}_t BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_f()",
        )
        huge = secrets.token_hex(5000)  # 10,000 random characters: over a btree row even compressed
        bad = {13: {"id": 13, "n": 13, "name": "x"}, 31: {"id": 31, "n": 31, "name": huge}}
    else:
        db.execute(
            kind,
            dsn,
            f"CREATE TRIGGER {table}_t BEFORE INSERT ON {table} FOR EACH ROW "
            f"BEGIN IF NEW.n = 13 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'thirteen'; END IF; END",
        )
        bad = {13: {"id": 13, "n": 13, "name": "x"}}
    batch = records(table, payloads(50, bad))
    cfg = config(kind, dsn, table, failures, tmp_path / "fallback.jsonl")
    asyncio.run(run_batch(cfg, batch))

    ids = {r[0] for r in db.fetch(kind, dsn, f"SELECT id FROM {table}")}
    assert ids == set(range(50)) - set(bad)
    rows = failure_rows(kind, dsn, failures, table)
    assert sorted(int(r[0]) for r in rows) == sorted(i + 1 for i in bad)
    for seq, _reason, payload, encoding in rows:
        assert encoding == "utf-8"
        assert payload.encode() == batch[int(seq) - 1].raw_data
    checkpoint = db.scalar(
        kind, dsn, "SELECT sequence_number FROM poller_checkpoints WHERE stream = %s", (table,)
    )
    assert checkpoint == "50"
    assert not (tmp_path / "fallback.jsonl").exists()


def test_a_failure_row_the_table_refuses_is_stored_in_safe_form(pg_dsn: str, tmp_path: Path) -> None:
    """A trigger on the failure table refuses UTF-8 payloads: the failure is
    stored again with a base64 payload, and the stream goes on."""
    kind, dsn = "postgres", pg_dsn
    table = f"ec_safe_{uuid.uuid4().hex[:6]}"
    failures = f"{table}_failures"
    make_target(kind, dsn, table)
    batch = records(table, [*payloads(20, {}), b'{"id": "not a number"}', b"\x00\xff not json"])
    cfg = config(kind, dsn, table, failures, tmp_path / "fallback.jsonl")

    def refuse_text_payloads() -> None:
        db.execute(
            kind,
            dsn,
            f"CREATE FUNCTION {failures}_f() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.payload_encoding <> 'base64' THEN RAISE EXCEPTION 'no text here'; END IF; "
            f"RETURN NEW; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER {failures}_t BEFORE INSERT ON {failures} "
            f"FOR EACH ROW EXECUTE FUNCTION {failures}_f()",
        )

    asyncio.run(run_batch(cfg, batch, before_commit=refuse_text_payloads))
    assert db.scalar(kind, dsn, f"SELECT count(*) FROM {table}") == 20
    rows = failure_rows(kind, dsn, failures, table)
    assert [(r[0], r[3]) for r in rows] == [("21", "base64"), ("22", "base64")]
    assert [base64.b64decode(r[2]) for r in rows] == [batch[20].raw_data, batch[21].raw_data]
    assert not (tmp_path / "fallback.jsonl").exists()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_failure_the_table_always_refuses_goes_to_the_fallback_file(
    kind: str, pg_dsn: str, mysql_dsn: str, tmp_path: Path
) -> None:
    dsn = pg_dsn if kind == "postgres" else mysql_dsn
    table = f"ec_fb_{kind}_{uuid.uuid4().hex[:6]}"
    failures = f"{table}_failures"
    make_target(kind, dsn, table)
    fallback = tmp_path / "fallback.jsonl"
    batch = records(table, payloads(10, {4: {"id": "four"}}))
    cfg = config(kind, dsn, table, failures, fallback)

    def refuse_everything() -> None:
        if kind == "postgres":
            db.execute(
                kind,
                dsn,
                f"CREATE FUNCTION {failures}_f() RETURNS trigger AS $$ BEGIN "
                f"RAISE EXCEPTION 'full'; END $$ LANGUAGE plpgsql",
                f"CREATE TRIGGER {failures}_t BEFORE INSERT ON {failures} "
                f"FOR EACH ROW EXECUTE FUNCTION {failures}_f()",
            )
        else:
            db.execute(
                kind,
                dsn,
                f"CREATE TRIGGER {failures}_t BEFORE INSERT ON {failures} FOR EACH ROW "
                f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'full'",
            )

    units = asyncio.run(run_batch(cfg, batch, before_commit=refuse_everything))
    assert db.scalar(kind, dsn, f"SELECT count(*) FROM {table}") == 9
    assert db.scalar(kind, dsn, f"SELECT count(*) FROM {failures}") == 0
    (line,) = fallback.read_text().splitlines()
    kept = json.loads(line)
    assert kept["sequence_number"] == "5"
    assert kept["payload_encoding"] == "base64"  # the safe form was refused too
    assert base64.b64decode(kept["payload"]) == batch[4].raw_data
    assert kept["refused_by"] == "table" and "full" in kept["refusal"]
    (failed,) = [u for u in units if u.failure is not None]
    assert failed.failure is not None and failed.failure.stored_at == str(fallback)
    checkpoint = db.scalar(
        kind, dsn, "SELECT sequence_number FROM poller_checkpoints WHERE stream = %s", (table,)
    )
    assert checkpoint == "10"


# -- the classification of what the real drivers raise --------------------------------------


async def _asyncpg_errors(dsn: str) -> dict[str, BaseException]:
    """Errors asyncpg raises while encoding values (no SQLSTATE) and on a closed connection."""
    conn = await asyncpg.connect(dsn)
    seen: dict[str, BaseException] = {}
    try:
        await conn.execute("CREATE TEMP TABLE t (a int4, b int8, n numeric, s text)")
        for name, row in {
            "int4 overflow": (3_000_000_000, None, None, None),
            "int8 overflow": (None, 2**70, None, None),
            "numeric exponent": (None, None, __import__("decimal").Decimal("1e999999"), None),
            "lone surrogate": (None, None, None, "\ud800"),
            "nul in text": (None, None, None, "a\x00b"),
        }.items():
            try:
                await conn.copy_records_to_table("t", records=[row])
            except Exception as e:
                seen[name] = e
    finally:
        await conn.close()
    try:
        await conn.execute("SELECT 1")
    except Exception as e:
        seen["closed connection"] = e
    return seen


def test_postgres_driver_errors_are_classed_by_what_they_mean(pg_dsn: str) -> None:
    seen = asyncio.run(_asyncpg_errors(pg_dsn))
    assert set(seen) == {
        "int4 overflow",
        "int8 overflow",
        "numeric exponent",
        "lone surrogate",
        "nul in text",
        "closed connection",
    }
    for name, error in seen.items():
        classed = postgres_sink.classify(error)
        expected = TransientError if name == "closed connection" else RecordError
        assert isinstance(classed, expected), (name, error, classed)


def test_mysql_driver_errors_are_classed_by_what_they_mean(mysql_dsn: str) -> None:
    seen: dict[str, BaseException] = {}
    conn = db.connect("mysql", mysql_dsn)
    cur = conn.cursor()
    cur.execute("CREATE TEMPORARY TABLE t (a int, j JSON, CHECK (a <> 13))")
    for name, (sql, args) in {
        "infinity": ("INSERT INTO t (a) VALUES (%s)", (math.inf,)),
        "nan": ("INSERT INTO t (a) VALUES (%s)", (math.nan,)),
        "out of range": ("INSERT INTO t (a) VALUES (%s)", (2**40,)),
        "bad json": ("INSERT INTO t (j) VALUES (%s)", ("{not json",)),
        "check": ("INSERT INTO t (a) VALUES (%s)", (13,)),
        "unknown column": ("INSERT INTO t (nope) VALUES (%s)", (1,)),
    }.items():
        try:
            cur.execute(sql, args)
        except Exception as e:
            seen[name] = e
    conn.close()
    try:
        cur.execute("SELECT 1")
    except Exception as e:
        seen["closed connection"] = e
    assert set(seen) == {
        "infinity",
        "nan",
        "out of range",
        "bad json",
        "check",
        "unknown column",
        "closed connection",
    }
    assert isinstance(seen["infinity"], pymysql.err.ProgrammingError)
    for name, error in seen.items():
        classed = mysql_sink.classify(error)
        expected = TransientError if name in ("closed connection", "unknown column") else RecordError
        assert isinstance(classed, expected), (name, error, classed)
    assert "needs attention" in str(mysql_sink.classify(seen["unknown column"]))
