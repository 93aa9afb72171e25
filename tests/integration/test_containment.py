"""One bad value never blocks a stream, through `poller run` as a user runs it.

200 good records with a bad one every ~15 (the catalogue in
`tests/support/bad_values.py`: a word, a 10-digit number and a
million-digit exponent in an `int`, `1e999999` and `NaN` in a `numeric`,
`1e20` as a timestamp, NUL in text and as a raw byte, invalid UTF-8, a lone
surrogate, JSON nested 1000 deep, a 2**70 id) go from Kinesis and from SQS
into PostgreSQL and MariaDB. What a user checks must hold:

- every good row lands, exactly once, with its values;
- each bad record is one failure row (with its error, and the payload it was
  sent with) — or, where the database holds the value (MariaDB's text holds a
  NUL, PostgreSQL's numeric a NaN), a row: exactly one of the two;
- the shard goes on (its checkpoint reaches the last record) and the queue
  drains; `poller_records_total{outcome="failed"}` counts the failure rows;
- `/healthz`, probed every ~100 ms in a thread while the daemon works,
  always answers, and never in 1 s or more (a held event loop). How fast it
  answers is measured by `bench/containment.py`, not asserted: on shared
  cores one probe now and then waits for a core.

And an `sqs` failure destination whose queue takes 1,024 bytes at most: a
failure record larger than that reaches it truncated, carrying the payload's
size and SHA-256 and naming the fallback file, which holds it whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_kinesis import create_stream
from tests.support import db
from tests.support.aws import client, queue_depth, send_all
from tests.support.bad_values import BadRecord, failure_payload_bytes, json_object
from tests.support.containment import (
    GOOD,
    HealthProbe,
    good,
    make_table,
    put_all,
    run_kinesis,
    slowest,
    stream_cfg,
    wait_http,
    workload,
)
from tests.support.daemon import Daemon, metric, wait_for
from tests.support.payloads import kpl_aggregate
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration

FROZEN = 1.0  # seconds: a probe answered this late means the event loop was held


def assert_never_held(probe: HealthProbe, contained_from: float) -> None:
    """Every probe sent while records were contained answered, and none in FROZEN
    or more: what a held event loop breaks. How fast it answers (p50, p99, the
    share over 100 ms) is a figure, not a pass mark: `bench/containment.py`
    measures it (bench/RESULTS.md), since on shared cores any one probe may wait
    for a core. Start-up (before ready) is not this test's: importing and
    opening the sinks may take a loaded core's second."""
    during = probe.since(contained_from)
    # From ready (the records are sent then) to a second after the last one is done:
    # with nothing blocking the loop that is a few seconds of probes, 10 a second.
    assert len(during) >= 10, f"only {len(during)} probes"
    failed = [p.error for p in during if p.error]
    assert not failed, f"{len(failed)} of {len(during)} probes failed: {failed[:3]}"
    print(f"/healthz: {len(during)} probes while records were contained, slowest {slowest(during)}")
    assert max(p.latency for p in during) < FROZEN, (
        f"/healthz answered in {slowest(during)}: the loop was held"
    )


def failure_rows(kind: str, dsn: str, stream: str) -> list[tuple[Any, ...]]:
    return db.fetch(
        kind,
        dsn,
        "SELECT reason, error_class, error_message, payload, payload_encoding, attempts "
        "FROM poller_failures WHERE stream = %s ORDER BY id",
        (stream,),
    )


def assert_contained(
    kind: str, dsn: str, table: str, bad: dict[bytes, BadRecord], failed_metric: float
) -> None:
    """Each good record a row with its values, exactly once; each bad one a row
    (where the database holds its value) or one failure row carrying it."""
    rows = {r[0]: r for r in db.fetch(kind, dsn, f"SELECT id, n, name FROM {table}")}
    for i in range(1, GOOD + 1):
        assert rows.get(i) == (i, i, f"name-{i}"), f"good record {i}: row {rows.get(i)!r}"
    twice = db.fetch(kind, dsn, f"SELECT id, count(*) FROM {table}_writes GROUP BY id HAVING count(*) > 1")
    assert twice == [], f"rows written more than once: {twice[:5]}"
    stored: dict[bytes, list[tuple[Any, ...]]] = {}
    for reason, error_class, message, payload, encoding, attempts in failure_rows(kind, dsn, table):
        assert reason and error_class and message and attempts >= 1, (reason, error_class, message, attempts)
        stored.setdefault(failure_payload_bytes(payload, encoding), []).append((reason, error_class, message))
    unexpected = [p[:80] for p in stored if p not in bad]
    assert not unexpected, f"failure rows for records that are not bad: {unexpected}"
    outcome = {}
    for p, b in bad.items():
        as_row = _id(p) in rows
        failures = stored.get(p, [])
        assert len(failures) <= 1, f"{b.label}: {len(failures)} failure rows"
        assert as_row != bool(failures), f"{b.label}: row {as_row}, failure rows {len(failures)}"
        assert failures or kind in b.row_ok, f"{b.label}: a row in {kind}, where it should fail"
        outcome[b.label] = "row" if as_row else f"failed: {failures[0][0]}: {failures[0][2][:80]}"
    assert set(rows) - set(range(1, GOOD + 1)) == {
        _id(p) for p, b in bad.items() if outcome[b.label] == "row"
    }
    assert failed_metric == len(stored), f"failed metric {failed_metric}, failure rows {len(stored)}"
    print("\n".join(f"  {k}: {v}" for k, v in outcome.items()))


def _id(payload: bytes) -> int:
    """The id a catalogue payload starts with (some are not JSON a test can parse)."""
    m = re.match(rb'\{"id": (\d+)', payload)
    assert m, payload[:40]
    return int(m.group(1))


# --------------------------------------------------------------------------- the tests


@pytest.mark.timing
def test_kinesis_bad_values_never_block_the_shard(
    moto: MotoServer, database: tuple[str, str], tmp_path: Path
) -> None:
    kind, dsn = database
    table = f"contain_kin_{kind}"
    make_table(kind, dsn, table)
    kinesis = client("kinesis", moto.url)
    name = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, name, 1)
    run = run_kinesis(kinesis, moto.url, kind, dsn, table, name, tmp_path / "fallback.jsonl")
    assert_never_held(run.probe, run.contained_from)
    assert_contained(kind, dsn, table, run.bad, run.failed_metric)


@pytest.mark.timing
def test_sqs_bad_values_never_block_the_queue(
    moto: MotoServer, database: tuple[str, str], tmp_path: Path
) -> None:
    kind, dsn = database
    table = f"contain_sqs_{kind}"
    make_table(kind, dsn, table)
    sqs = client("sqs", moto.url)
    url = str(
        sqs.create_queue(QueueName=f"{table}-{uuid.uuid4().hex[:6]}", Attributes={"VisibilityTimeout": "10"})[
            "QueueUrl"
        ]
    )
    payloads, bad = workload(for_sqs=True)
    source = {
        "type": "sqs",
        "queue_url": url,
        "endpoint_url": moto.url,
        "region": "us-east-1",
        "wait_seconds": 1,
        "max_concurrency": 2,
    }
    cfg = stream_cfg(table, kind, dsn, source, tmp_path / "fallback.jsonl")
    with Daemon([cfg]) as d:
        wait_http(d)
        with HealthProbe(d.port).running() as probe:
            d.wait_ready()
            contained_from = time.time()
            send_all(sqs, url, [p.decode() for p in payloads])
            try:
                wait_for(lambda: d.check_alive() or queue_depth(sqs, url) == 0, 90, message="queue drained")
            finally:
                print(d.tail(20))
            time.sleep(1)  # and a while after, idle
            failed = metric(d, "poller_records_total", stream=table, outcome="failed")
            d.check_alive()
        assert d.stop() == 0
    assert_never_held(probe, contained_from)
    assert_contained(kind, dsn, table, bad, failed)


def test_a_failure_record_larger_than_the_failure_queue_takes(
    moto: MotoServer, pg_dsn: str, tmp_path: Path
) -> None:
    kind, table = "postgres", "contain_dlq_size"
    make_table(kind, pg_dsn, table)
    sqs = client("sqs", moto.url)
    suffix = uuid.uuid4().hex[:6]
    url = str(
        sqs.create_queue(QueueName=f"{table}-{suffix}", Attributes={"VisibilityTimeout": "5"})["QueueUrl"]
    )
    dlq = str(
        sqs.create_queue(QueueName=f"{table}-dlq-{suffix}", Attributes={"MaximumMessageSize": "1024"})[
            "QueueUrl"
        ]
    )
    large = json_object([("id", b"100001"), ("n", b'"abc"'), ("name", json.dumps("x" * 3000).encode())])
    nul = json_object([("id", b"100002"), ("name", b'"a\\u0000b"')])  # PostgreSQL's text refuses NUL
    payloads = [good(i) for i in range(1, 21)]
    payloads[5:5] = [large]
    payloads[12:12] = [nul]
    send_all(sqs, url, [p.decode() for p in payloads])
    fallback = tmp_path / "fallback.jsonl"
    source = {
        "type": "sqs",
        "queue_url": url,
        "endpoint_url": moto.url,
        "region": "us-east-1",
        "wait_seconds": 1,
    }
    on_failure = {
        "type": "sqs",
        "queue_url": dlq,
        "endpoint_url": moto.url,
        "region": "us-east-1",
        "fallback_path": str(fallback),
    }
    cfg = stream_cfg(table, kind, pg_dsn, source, fallback)
    cfg["on_failure"] = on_failure
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: d.check_alive() or queue_depth(sqs, url) == 0, 60, message="queue drained")
        failed = metric(d, "poller_records_total", stream=table, outcome="failed")
        assert d.stop() == 0
    assert sorted(r[0] for r in db.fetch(kind, pg_dsn, f"SELECT id FROM {table}")) == list(range(1, 21))
    assert failed == 2
    got = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert len(got) == 2, got
    docs = {}
    for m in got:
        assert len(m["Body"].encode()) <= 1024
        doc = json.loads(m["Body"])  # a truncated record is still a JSON document
        docs[doc["message_id"]] = doc
    kept = [json.loads(line) for line in fallback.read_text().splitlines()] if fallback.exists() else []
    by_payload = {}
    for doc in docs.values():
        if doc.get("payload_truncated"):
            by_payload[doc["payload_sha256"]] = doc
        else:
            by_payload[
                hashlib.sha256(failure_payload_bytes(doc["payload"], doc["payload_encoding"])).hexdigest()
            ] = doc
    assert set(by_payload) == {hashlib.sha256(large).hexdigest(), hashlib.sha256(nul).hexdigest()}, docs
    for doc in docs.values():
        assert doc["reason"] and doc["error_class"] and doc["error_message"], doc
    truncated = by_payload[hashlib.sha256(large).hexdigest()]
    assert truncated["payload_truncated"] is True and truncated["payload_bytes"] == len(large), truncated
    assert truncated["payload_stored_at"] == str(fallback), truncated
    kept = [json.loads(line) for line in fallback.read_text().splitlines()] if fallback.exists() else []
    whole = [k for k in kept if k["message_id"] == truncated["message_id"]]
    assert len(whole) == 1, f"the fallback file holds {len(whole)} copies of the truncated record"
    assert failure_payload_bytes(whole[0]["payload"], whole[0]["payload_encoding"]) == large
    assert not by_payload[hashlib.sha256(nul).hexdigest()].get("payload_truncated")


def test_records_past_the_decoder_limits_fail_alone_through_poller_run(
    moto: MotoServer, database: tuple[str, str], tmp_path: Path
) -> None:
    """`decode: [kpl, json]` with `limits:`: a KPL aggregate of more user records
    than `max_records_per_payload`, and JSON nested deeper than `max_json_depth`,
    each become one failure row carrying the payload as sent; every record around
    them lands, and the shard's checkpoint reaches the last record."""
    kind, dsn = database
    table = f"contain_lim_{kind}"
    make_table(kind, dsn, table)
    kinesis = client("kinesis", moto.url)
    name = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, name, 1)
    source = {"type": "kinesis", "stream": name, "endpoint_url": moto.url, "region": "us-east-1"}
    cfg = stream_cfg(
        table,
        kind,
        dsn,
        source,
        tmp_path / "fallback.jsonl",
        decode=["kpl", "json"],
        limits={"max_records_per_payload": 50, "max_json_depth": 20},
    )
    (first,) = kpl_aggregate([("k", good(i)) for i in range(1, 11)])
    (too_many,) = kpl_aggregate([("k", good(i)) for i in range(1000, 1120)])
    too_deep = b'{"id": 2000, "n": ' + b"[" * 30 + b"]" * 30 + b"}"
    (last,) = kpl_aggregate([("k", good(i)) for i in range(12, 17)])
    payloads = [first, too_many, good(11), too_deep, last]
    sequences = [
        kinesis.put_record(StreamName=name, Data=p, PartitionKey="k")["SequenceNumber"] for p in payloads
    ]

    def checkpoint() -> str | None:
        return db.scalar(
            kind,
            dsn,
            "SELECT sequence_number FROM poller_checkpoints WHERE stream = %s AND shard_id = %s",
            (table, "shardId-000000000000"),
        )

    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: checkpoint() == sequences[-1], 60, message="checkpoint at the last record")
        failed = metric(d, "poller_records_total", stream=table, outcome="failed")
    ids = sorted(r[0] for r in db.fetch(kind, dsn, f"SELECT id FROM {table}"))
    assert ids == list(range(1, 17))
    stored = sorted(
        (reason, failure_payload_bytes(payload, encoding))
        for reason, _, _, payload, encoding, _ in failure_rows(kind, dsn, table)
    )
    assert stored == sorted([("decode_error", too_many), ("decode_error", too_deep)])
    assert failed == 2


def test_an_index_row_too_large_fails_alone_through_poller_run(
    moto: MotoServer, pg_dsn: str, tmp_path: Path
) -> None:
    """SQLSTATE 54000 (a value too large for a btree index: no retry can fix it) is
    the record's failure, not a wait: the rows around it land."""
    table = "contain_idx"
    make_table("postgres", pg_dsn, table)
    db.execute("postgres", pg_dsn, f"CREATE INDEX {table}_name ON {table} (name)")
    kinesis = client("kinesis", moto.url)
    name = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, name, 1)
    source = {"type": "kinesis", "stream": name, "endpoint_url": moto.url, "region": "us-east-1"}
    cfg = stream_cfg(table, "postgres", pg_dsn, source, tmp_path / "fallback.jsonl")
    huge = json.dumps({"id": 500, "n": 1, "name": os.urandom(8000).hex()}).encode()  # incompressible
    last = put_all(kinesis, name, [good(1), good(2), huge, good(3)])
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(
            lambda: (
                db.scalar(
                    "postgres",
                    pg_dsn,
                    "SELECT sequence_number FROM poller_checkpoints WHERE stream = %s AND shard_id = %s",
                    (table, "shardId-000000000000"),
                )
                == last
            ),
            60,
            message="checkpoint at the last record",
        )
    assert sorted(r[0] for r in db.fetch("postgres", pg_dsn, f"SELECT id FROM {table}")) == [1, 2, 3]
    ((reason, error_class, message, payload, encoding, _),) = failure_rows("postgres", pg_dsn, table)
    assert failure_payload_bytes(payload, encoding) == huge
    assert "index row" in message, (reason, error_class, message)
