"""The record path as the sources run it, in process, for the fuzz test:
records built as the Kinesis and SQS sources build them, `Preparer` (decode,
filter, map, coerce), `FailurePolicy` over the real sink with the table
destination, then what a user can see checked against what was sent.

`run_batch` returns the invariants a batch broke, as sentences naming the
payload (`describe` keeps a 1 MiB payload readable); an empty list means every
record ended as exactly one row, failure record or filtered record.

Names carry the process id: several people may run the suite against one
database at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from poller.config import StreamConfig, parse_stream
from poller.destinations import Destination, build_destination
from poller.processing.failures import FailurePolicy, Unit
from poller.processing.pipeline import Preparer
from poller.records import KINESIS, Checkpoint, Record
from poller.sinks.base import MessageWrite, Sink, Transaction
from poller.sinks.factory import build_sink, failures_table_of
from poller.sources.sqs import to_record
from tests.support import db
from tests.support.bad_values import describe, failure_payload_bytes

CPU_BOUND = 1.0  # seconds of CPU to prepare one record: only catches "unbounded"
REMEASURE = 0.05  # a record over this is timed twice
COMMIT_CPU_BOUND = 10.0  # seconds of CPU to commit one batch, bisection and retries included
COMMIT_TIMEOUT = 120.0
TRANSIENT_LIMIT = 4  # a healthy database is never unavailable this many times in a row

# Names of this process's own: several people may run the suite against one database.
RUN = f"{os.getpid()}"
TABLE = f"fuzz_record_path_{RUN}"
STREAMS = {"kinesis": f"fuzz_kinesis_{RUN}", "sqs": f"fuzz_sqs_{RUN}"}
SHARD = "shardId-000000000000"

# A column of every type the sinks support, with the same names everywhere.
_COMMON = [
    "c_int",
    "c_bigint",
    "c_smallint",
    "c_numeric",
    "c_float",
    "c_real",
    "c_text",
    "c_varchar",
    "c_bool",
    "c_tstz",
    "c_ts",
    "c_date",
    "c_uuid",
    "c_bytea",
    "c_json",
]
TYPES: dict[str, dict[str, str]] = {
    "postgres": {
        "id": "bigint PRIMARY KEY",
        "c_int": "int",
        "c_bigint": "bigint",
        "c_smallint": "smallint",
        "c_numeric": "numeric(12,2)",
        "c_float": "double precision",
        "c_real": "real",
        "c_text": "text",
        "c_varchar": "varchar(16)",
        "c_bool": "boolean",
        "c_tstz": "timestamptz",
        "c_ts": "timestamp",
        "c_date": "date",
        "c_uuid": "uuid",
        "c_bytea": "bytea",
        "c_json": "json",
        "c_jsonb": "jsonb",
    },
    "mysql": {
        "id": "BIGINT PRIMARY KEY",
        "c_int": "INT",
        "c_bigint": "BIGINT",
        "c_smallint": "SMALLINT",
        "c_numeric": "DECIMAL(12,2)",
        "c_float": "DOUBLE",
        "c_real": "FLOAT",
        "c_text": "TEXT",
        "c_varchar": "VARCHAR(16)",
        "c_bool": "BOOLEAN",
        "c_tstz": "TIMESTAMP(6) NULL",
        "c_ts": "DATETIME(6)",
        "c_date": "DATE",
        "c_uuid": "UUID",
        "c_bytea": "BLOB",
        "c_json": "JSON",
    },
    "sqlite": {
        "id": "BIGINT PRIMARY KEY NOT NULL",
        "c_int": "INTEGER",
        "c_bigint": "BIGINT",
        "c_smallint": "SMALLINT",
        "c_numeric": "NUMERIC(12,2)",
        "c_float": "DOUBLE",
        "c_real": "REAL",
        "c_text": "TEXT",
        "c_varchar": "VARCHAR(16)",
        "c_bool": "BOOLEAN",
        "c_tstz": "TIMESTAMPTZ",
        "c_ts": "DATETIME",
        "c_date": "DATE",
        "c_uuid": "UUID",
        "c_bytea": "BLOB",
        "c_json": "JSON",
    },
}
assert all(set(_COMMON) <= set(t) for t in TYPES.values())


def columns_of(kind: str) -> dict[str, str]:
    """`columns` for the sink: dotted paths, and one JMESPath expression proper."""
    return {c: ('data."c_varchar"' if c == "c_varchar" else f"data.{c}") for c in TYPES[kind]}


# --------------------------------------------------------------------------- what is sent


@dataclass(frozen=True)
class Sent:
    """One payload and what the harness knows it must become."""

    payload: bytes
    label: str
    record_id: int | None = None  # the key a row of it would have; None: it cannot be a row
    clean: bool = False  # only values every database stores: must be a row (or filtered)
    drop: bool = False  # carries the key the filter drops on
    expect: tuple[tuple[str, Any], ...] = ()  # (column, value) a row of it must read back

    def short(self) -> str:
        return f"{self.label} id={self.record_id} {describe(self.payload)}"


@dataclass(frozen=True)
class Batch:
    source: str  # kinesis | sqs
    filtering: bool
    sent: tuple[Sent, ...]


# --------------------------------------------------------------------------- the harness


class Blocked(Exception):
    """The failure policy treated a record's error as transient: with the
    database up, the shard would wait on it forever."""


class Target:
    """One database's sink, destination and preparers, and what was observed on it.
    (A plain class: hypothesis prints a dataclass argument field by field.)"""

    def __init__(
        self,
        kind: str,
        dsn: str,
        sink: Sink,
        destination: Destination,
        configs: dict[tuple[str, bool], StreamConfig],
        fallback: Path,
        reader: Reader,
    ):
        self.kind = kind
        self.dsn = dsn
        self.sink = sink
        self.destination = destination
        self.configs = configs
        self.preparers = {k: Preparer(cfg, sink) for k, cfg in configs.items()}
        self.fallback = fallback
        self.reader = reader
        self.max_prepare_cpu = 0.0
        self.max_prepare_label = ""
        self.max_commit_cpu = 0.0
        self.examples = 0
        self.records = 0
        self.outcomes = {"row": 0, "failure": 0, "fallback": 0, "filtered": 0}
        self.reasons: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Target({self.kind})"


def stream_config(kind: str, dsn: str, source: str, filtering: bool, fallback: Path) -> StreamConfig:
    src: dict[str, Any] = (
        {"type": "kinesis", "stream": "fuzz"}
        if source == "kinesis"
        else {"type": "sqs", "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/fuzz"}
    )
    where = "data" if source == "kinesis" else "body"
    return parse_stream(
        {
            "name": STREAMS[source],
            "source": src,
            "decode": "json",
            "filters": [{where: {"drop": [{"exists": False}]}}] if filtering else [],
            "retry": {"max_attempts": 2, "backoff_initial_seconds": 0.001, "backoff_max_seconds": 0.01},
            "on_failure": {"type": "table", "table": "poller_failures", "fallback_path": str(fallback)},
            "sink": {"type": kind, "dsn": dsn, "table": TABLE, "key": ["id"], "columns": columns_of(kind)},
        },
        "fuzz",
    )


def create_table(kind: str, dsn: str) -> None:
    cols = ", ".join(f"{c} {t}" for c, t in TYPES[kind].items())
    suffix = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if kind == "mysql" else ""
    statements = [f"DROP TABLE IF EXISTS {TABLE}", f"CREATE TABLE {TABLE} ({cols}){suffix}"]
    if kind == "sqlite":
        with sqlite3.connect(dsn) as conn:
            for s in statements:
                conn.execute(s)
    else:
        db.execute(kind, dsn, *statements)


class Reader:
    """Queries on a connection of our own, in autocommit (each sees the latest commit)."""

    def __init__(self, kind: str, dsn: str):
        self.sqlite = kind == "sqlite"
        self.conn = (
            sqlite3.connect(dsn, isolation_level=None, timeout=30) if self.sqlite else db.connect(kind, dsn)
        )

    def __call__(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor()
        cur.execute(sql.replace("%s", "?") if self.sqlite else sql, params)
        return list(cur.fetchall()) if cur.description else []

    def close(self) -> None:
        self.conn.close()


async def open_target(kind: str, dsn: str, folder: Path) -> Target:
    """The table, a sink and a table destination on `dsn`, and a preparer per
    (source, filter on/off)."""
    create_table(kind, dsn)
    fallback = folder / "fallback.jsonl"
    configs = {
        (source, filtering): stream_config(kind, dsn, source, filtering, fallback)
        for source in ("kinesis", "sqs")
        for filtering in (False, True)
    }
    first = configs[("kinesis", False)]
    sink = build_sink(first, failures_table_of(first, default=True))
    await sink.open()
    destination = build_destination(first.on_failure, default_table=True)
    await destination.open()
    return Target(kind, dsn, sink, destination, configs, fallback, Reader(kind, dsn))


async def close_target(t: Target) -> None:
    """Close, and leave nothing behind in the database."""
    await t.destination.close()
    await t.sink.close()
    for name in STREAMS.values():
        for table in ("poller_failures", "poller_checkpoints", "poller_processed"):
            t.reader(f"DELETE FROM {table} WHERE stream = %s", (name,))
    t.reader(f"DROP TABLE {TABLE}", ())
    t.reader.close()


def observations(t: Target) -> dict[str, Any]:
    return {
        "database": t.kind,
        "examples": t.examples,
        "records": t.records,
        "max_prepare_cpu_seconds": round(t.max_prepare_cpu, 4),
        "slowest_record": t.max_prepare_label[:200],
        "max_commit_cpu_seconds": round(t.max_commit_cpu, 4),
        "outcomes": t.outcomes,
        "failure_reasons": dict(sorted(t.reasons.items())),
    }


_sequence = iter(range(10**12, 10**13))


def _kinesis_record(stream: str, payload: bytes) -> Record:
    seq = str(next(_sequence))
    now = datetime.now(UTC)
    raw = {"SequenceNumber": seq, "ApproximateArrivalTimestamp": now, "Data": payload, "PartitionKey": "p"}
    return Record(
        KINESIS,
        stream,
        SHARD,
        seq,
        payload,
        payload,
        0,
        "p",
        now.timestamp(),
        {},
        raw,
        "arn:aws:kinesis:us-east-1:123456789012:stream/fuzz",
        "us-east-1",
    )


def _sqs_record(stream: str, payload: bytes) -> Record:
    body = payload.decode("utf-8")
    msg = {
        "MessageId": str(uuid.uuid4()),
        "ReceiptHandle": "handle",
        "MD5OfBody": hashlib.md5(payload).hexdigest(),
        "Body": body,
        "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000))},
    }
    return to_record(msg, stream, "arn:aws:sqs:us-east-1:123456789012:fuzz", "us-east-1")


def _filtered(stream: str) -> float:
    return REGISTRY.get_sample_value("poller_records_total", {"stream": stream, "outcome": "filtered"}) or 0.0


def _transaction(stream: str, source: str, units: list[Unit], in_tx: bool) -> Transaction:
    """What the sources commit: rows and failure rows, with the shard's checkpoint
    (Kinesis) or the processed message ids (SQS)."""
    tx = Transaction(stream=stream)
    for u in units:
        if u.failure is not None and in_tx:
            tx.failures.append(u.failure)
        if source == "sqs":
            tx.messages.append(MessageWrite(u.source.sequence_number, u.ops if u.failure is None else []))
        elif u.failure is None:
            tx.ops.extend(u.ops)
    if source == "kinesis":
        last = units[-1].source
        tx.checkpoints.append(Checkpoint(stream, SHARD, last.sequence_number, last.sub_sequence))
    return tx


async def run_batch(t: Target, batch: Batch) -> list[str]:
    """Send one batch down the record path; returns the invariants it broke."""
    cfg = t.configs[(batch.source, batch.filtering)]
    preparer = t.preparers[(batch.source, batch.filtering)]
    stream = cfg.name
    problems: list[str] = []
    t.reader(f"DELETE FROM {TABLE}", ())
    t.reader("DELETE FROM poller_failures WHERE stream = %s", (stream,))
    t.fallback.unlink(missing_ok=True)
    filtered_before = _filtered(stream)

    records: list[Record] = []
    units: list[Unit] = []
    for s in batch.sent:
        r = (
            _kinesis_record(stream, s.payload)
            if batch.source == "kinesis"
            else _sqs_record(stream, s.payload)
        )
        records.append(r)
        started = time.process_time()
        try:
            if batch.source == "kinesis":
                units.extend(preparer.stream_units([r]))
            else:
                units.append(preparer.message_unit(r, None, 0))
        except BaseException as e:  # a lane would die of it
            problems.append(f"prepare raised {type(e).__name__}: {str(e)[:300]} for {s.short()}")
            return problems
        spent = time.process_time() - started
        if spent > REMEASURE:
            # Once more on a copy, keeping the lesser: a garbage collection is not the record's work.
            again = (
                _kinesis_record(stream, s.payload)
                if batch.source == "kinesis"
                else _sqs_record(stream, s.payload)
            )
            started = time.process_time()
            _ = (
                preparer.stream_units([again])
                if batch.source == "kinesis"
                else preparer.message_unit(again, None, 0)
            )
            spent = min(spent, time.process_time() - started)
        if spent > t.max_prepare_cpu:
            t.max_prepare_cpu, t.max_prepare_label = spent, s.short()
        if spent > CPU_BOUND:
            problems.append(f"preparing one record took {spent:.2f} s of CPU: {s.short()}")
    for i, u in enumerate(units):
        u.index = i
    t.records += len(records)

    transient = 0

    def on_health(ok: bool) -> None:
        nonlocal transient
        transient = 0 if ok else transient + 1
        if transient >= TRANSIENT_LIMIT:
            raise Blocked()

    max_attempts = cfg.retry.max_attempts
    policy = FailurePolicy(
        stream,
        cfg.retry,
        t.sink,
        t.destination,
        build_tx=lambda active: _transaction(stream, batch.source, active, t.destination.in_transaction),
        decide=lambda u, _e: "fail" if u.attempts >= max_attempts else "retry",
        on_health=on_health,
        shard=SHARD,
        ordered=batch.source == "kinesis",
    )
    started = time.process_time()
    try:
        await asyncio.wait_for(policy.commit(units), COMMIT_TIMEOUT)
    except Blocked as e:
        cause = e.__context__
        problems.append(
            f"a record error was treated as transient (the shard would wait forever): "
            f"{type(cause).__name__}: {str(cause)[:400]}"
        )
        return problems
    except BaseException as e:
        problems.append(f"FailurePolicy.commit raised {type(e).__name__}: {str(e)[:400]}")
        return problems
    spent = time.process_time() - started
    t.max_commit_cpu = max(t.max_commit_cpu, spent)
    if spent > COMMIT_CPU_BOUND:
        problems.append(f"committing the batch took {spent:.1f} s of CPU")

    problems += _check(t, batch, records, stream, _filtered(stream) - filtered_before)
    return problems


def _check(t: Target, batch: Batch, records: list[Record], stream: str, filtered: float) -> list[str]:
    problems: list[str] = []
    rows = {r[0]: r for r in t.reader(f"SELECT id, c_int, c_text, c_bool FROM {TABLE}", ())}
    failures: dict[str, list[tuple[str, bytes]]] = {}
    for seq, reason, error_class, message, payload, encoding in t.reader(
        "SELECT sequence_number, reason, error_class, error_message, payload, payload_encoding "
        "FROM poller_failures WHERE stream = %s",
        (stream,),
    ):
        if not (reason and error_class and message):
            problems.append(f"failure row {seq} without its error: {reason!r} {error_class!r} {message!r}")
        t.reasons[reason] = t.reasons.get(reason, 0) + 1
        failures.setdefault(seq, []).append(("table", failure_payload_bytes(payload, encoding)))
    if t.fallback.exists():
        for line in t.fallback.read_text().splitlines():
            doc = json.loads(line)
            if doc.get("stream") == stream:
                payload = failure_payload_bytes(doc["payload"], doc["payload_encoding"])
                failures.setdefault(doc["sequence_number"], []).append(("fallback", payload))
    columns = ("c_int", "c_text", "c_bool")
    seen_rows: set[int] = set()
    nowhere = 0
    for s, r in zip(batch.sent, records, strict=True):
        row = rows.get(s.record_id) if s.record_id is not None else None
        where = failures.pop(r.sequence_number, [])
        if row is not None:
            seen_rows.add(row[0])
        if row is not None and where:
            problems.append(f"both a row and a failure record: {s.short()}")
        if len(where) > 1:
            problems.append(f"{len(where)} failure records ({[w for w, _ in where]}): {s.short()}")
        for _, payload in where:
            if payload != s.payload:
                problems.append(f"failure payload differs ({len(payload)} B stored): {s.short()}")
        if row is None and not where:
            nowhere += 1
            t.outcomes["filtered"] += 1
            if not (batch.filtering and (s.drop or s.label == "payload")):
                problems.append(f"neither a row nor a failure record: {s.short()}")
        elif row is not None:
            t.outcomes["row"] += 1
            for column, value in s.expect:
                got = row[1 + columns.index(column)]
                if column == "c_bool" or isinstance(got, bool):
                    got = int(got)
                if got != value:
                    problems.append(f"{column} reads back {got!r}, sent {value!r}: {s.short()}")
        else:
            t.outcomes[where[0][0] if where[0][0] == "fallback" else "failure"] += 1
        dropped = batch.filtering and s.drop
        if s.clean and row is None and not dropped:
            problems.append(f"a clean record is not a row: {s.short()}")
        if dropped and row is not None:
            problems.append(f"a record the filter drops is a row: {s.short()}")
        if dropped and where and (s.clean or s.label == "object"):
            problems.append(f"a record the filter drops is a failure: {s.short()}")
    if nowhere != filtered:
        problems.append(
            f"{nowhere} records are neither rows nor failures, but {filtered:g} were counted filtered"
        )
    if failures:
        problems.append(f"failure records for sequence numbers never sent: {sorted(failures)[:5]}")
    stray = sorted(set(rows) - seen_rows)
    if stray:
        problems.append(f"rows with ids no record was sent with: {stray[:5]}")
    # The source goes on: the shard's checkpoint is at the last record; every message
    # is recorded as processed (so each would be deleted, failed or not).
    if batch.source == "kinesis":
        got = t.reader(
            "SELECT sequence_number FROM poller_checkpoints WHERE stream = %s AND shard_id = %s",
            (stream, SHARD),
        )
        if got != [(records[-1].sequence_number,)]:
            problems.append(f"checkpoint {got}, last record {records[-1].sequence_number}")
    else:
        ids = {r.sequence_number for r in records}
        done = {
            r[0] for r in t.reader("SELECT message_id FROM poller_processed WHERE stream = %s", (stream,))
        }
        if ids - done:
            problems.append(f"{len(ids - done)} of {len(ids)} messages not recorded as processed")
    return problems


def report(batch: Batch, problems: list[str]) -> str:
    sent = "\n".join(f"  - {s.short()}" for s in batch.sent)
    return f"{batch.source}, filter {'on' if batch.filtering else 'off'}:\n{sent}\n" + "\n".join(
        f"* {p}" for p in problems
    )
