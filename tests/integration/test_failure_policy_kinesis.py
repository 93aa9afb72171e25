"""The failure policy on a Kinesis shard: a bad record is bisected out and
parked in `poller_failures` with its payload, and the shard goes on; a record
no decoder can read goes to the destination, never crashes the stream."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
import zlib
from typing import Any

import pytest

from tests.integration.test_kinesis import (
    assert_written_once,
    count,
    create_stream,
    make_table,
    metric,
    put_records,
    stream_cfg,
    wait_rows,
)
from tests.support import db
from tests.support.aws import client
from tests.support.daemon import Daemon, wait_for
from tests.support.payloads import aurora_audit_line, cloudwatch_payload, kpl_aggregate
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration


def failures(dsn: str, stream: str) -> list[tuple[Any, ...]]:
    return db.fetch(
        "postgres",
        dsn,
        "SELECT reason, error_class, error_message, payload, payload_encoding, attempts, sequence_number "
        "FROM poller_failures WHERE stream = %s ORDER BY id",
        (stream,),
    )


def test_three_constraint_violations_in_a_thousand_records(moto: MotoServer, pg_dsn: str) -> None:
    kind, table = "postgres", "fpk_constraint"
    make_table(kind, pg_dsn, table)
    db.execute(kind, pg_dsn, f"ALTER TABLE {table} ADD CONSTRAINT {table}_n_positive CHECK (n >= 0)")
    kinesis = client("kinesis", moto.url)
    name = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, name, 1)
    bad = {137, 500, 862}
    records = [
        {
            "Data": json.dumps({"id": f"r{i}", "n": -1 if i in bad else i}).encode(),
            "PartitionKey": f"k{i % 10}",
        }
        for i in range(1000)
    ]
    for start in range(0, 1000, 250):
        put_records(kinesis, name, records[start : start + 250])
    cfg = stream_cfg(table, kind, pg_dsn, name, moto.url, batch={"size": 100, "window_seconds": 0.1})
    with Daemon([cfg]) as d:
        wait_rows(kind, pg_dsn, table, 997, d)
        wait_for(lambda: len(failures(pg_dsn, table)) == 3, 60, message="3 failure rows")
        bisections = metric(d, "poller_bisections_total", stream=table)
        failed = metric(
            d, "poller_failed_records_total", stream=table, destination="table", reason="constraint_violation"
        )
        assert d.stop() == 0
    print(f"bisections for 3 bad records in 1,000: {bisections:.0f}")
    assert 1 <= bisections <= 40, bisections
    assert failed == 3
    assert_written_once(kind, pg_dsn, table, 997)
    rows = failures(pg_dsn, table)
    assert sorted(json.loads(r[3])["id"] for r in rows) == [f"r{i}" for i in sorted(bad)]
    for reason, error_class, message, _payload, encoding, attempts, _seq in rows:
        assert reason == "constraint_violation" and error_class == "RecordError"
        assert "23514" in message and f"{table}_n_positive" in message
        assert encoding == "utf-8" and attempts == 3
    # The shard went on past the failures: its checkpoint is at the last record.
    last = kinesis.get_records(
        ShardIterator=kinesis.get_shard_iterator(
            StreamName=name, ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"],
        Limit=10000,
    )["Records"][-1]["SequenceNumber"]
    (seq,) = db.fetch(
        kind, pg_dsn, "SELECT sequence_number FROM poller_checkpoints WHERE stream = %s", (table,)
    )[0]
    assert int(seq) == int(last)


BAD_INPUTS: dict[str, tuple[list[str], bytes, bytes]] = {
    # decoder chain: (good record, bad record)
    "json": (["json"], b'{"id": "ok"}', b"{not json"),
    "text": (["text"], b"plain text", b"\xff\xfe broken utf-8"),
    "kpl": (["kpl", "json"], b"", b"\xf3\x89\x9a\xc2" + b"\x0a\x05trunc"),
    "gzip": (["cloudwatch_logs", "mysql_audit"], b"", b"\x1f\x8b\x08\x00" + b"not really gzip"),
    "audit": (
        ["text", "mysql_audit"],
        aurora_audit_line("SELECT 1").encode(),
        b"1503595956000000,host,user,'unterminated",
    ),
}


def good_payload(kind: str) -> bytes:
    if kind == "kpl":
        (blob,) = kpl_aggregate([("a", b'{"id": "u1"}'), ("b", b'{"id": "u2"}')])
        return blob
    if kind == "gzip":
        return cloudwatch_payload([aurora_audit_line("SELECT 2")])
    return BAD_INPUTS[kind][1]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_malformed_record_goes_to_the_destination(moto: MotoServer, pg_dsn: str, case: str) -> None:
    table = f"fpk_bad_{case}"
    db.execute("postgres", pg_dsn, f"DROP TABLE IF EXISTS {table}")
    db.drop_bookkeeping("postgres", pg_dsn, table)
    kinesis = client("kinesis", moto.url)
    name = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, name, 1)
    decoders, _, bad = BAD_INPUTS[case]
    good = good_payload(case)
    put_records(
        kinesis,
        name,
        [
            {"Data": good, "PartitionKey": "p"},
            {"Data": bad, "PartitionKey": "p"},
            {"Data": good, "PartitionKey": "p"},
        ],
    )
    cfg = stream_cfg(table, "postgres", pg_dsn, name, moto.url, decode=decoders)
    del cfg["sink"]["key"], cfg["sink"]["columns"]  # append mode: the whole decoded record
    expected_rows = 4 if case == "kpl" else 2
    with Daemon([cfg]) as d:
        wait_for(lambda: len(failures(pg_dsn, table)) == 1, 60, message="the bad record in poller_failures")
        wait_for(
            lambda: db.scalar("postgres", pg_dsn, f"SELECT count(*) FROM {table}") == expected_rows,
            60,
            message="the good records around it",
        )
        d.check_alive()
        assert d.stop() == 0
    ((reason, error_class, message, payload, encoding, attempts, _),) = failures(pg_dsn, table)
    assert (reason, error_class) == ("decode_error", "DecodeError")
    assert message
    stored = payload.encode() if encoding == "utf-8" else base64.b64decode(payload)
    assert stored == bad
    assert attempts == 1
    assert count("postgres", pg_dsn, table) == expected_rows
    if case == "gzip":
        with pytest.raises((OSError, zlib.error)):
            gzip.decompress(bad)
