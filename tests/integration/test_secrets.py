"""A DSN password made of the awkward characters (`#`, `/`, `?`, `@`, `%`, a
space) connects as written, and is never echoed: not in a sink's errors, not in
anything `poller run` prints while a database refuses it or cannot be reached."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from poller.config import StreamConfig
from poller.processing.pipeline import Preparer
from poller.records import KINESIS, Checkpoint, Record, TransientError
from poller.sinks.base import Transaction
from poller.sinks.factory import build_sink
from tests.support import db
from tests.support.aws import client
from tests.support.daemon import Daemon, wait_for
from tests.support.servers import MotoServer, free_port

pytestmark = pytest.mark.integration

MARK = "Kq7Vw3"
PASSWORD = f"p#1/x?y@z %41 {MARK}"  # `%41` is an escape: the password sent holds `A`


def with_password(dsn: str, password: str) -> str:
    scheme, rest = dsn.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def sink_config(kind: str, dsn: str, table: str) -> StreamConfig:
    return StreamConfig.model_validate(
        {
            "name": table,
            "source": {"type": "kinesis", "stream": "s"},
            "sink": {"type": kind, "dsn": dsn, "table": table, "key": ["id"], "columns": {"id": "data.id"}},
        }
    )


async def test_a_password_with_url_characters_connects_as_written(pg_dsn: str) -> None:
    # The test server trusts local connections: any password is accepted once parsed.
    table = f"pw_{uuid.uuid4().hex[:6]}"
    db.execute("postgres", pg_dsn, f"CREATE TABLE {table} (id bigint PRIMARY KEY)")
    cfg = sink_config("postgres", with_password(pg_dsn, PASSWORD), table)
    sink = build_sink(cfg, None)
    rows = Preparer(cfg, sink).rows
    try:
        await sink.open()
        row = Record(source=KINESIS, stream=table, shard_id="shardId-0", sequence_number="1", data={"id": 7})
        await sink.commit(
            Transaction(stream=table, ops=rows(row), checkpoints=[Checkpoint(table, "shardId-0", "1")])
        )
    finally:
        await sink.close()
    assert db.fetch("postgres", pg_dsn, f"SELECT id FROM {table}") == [(7,)]
    db.execute("postgres", pg_dsn, f"DROP TABLE {table}")
    db.drop_bookkeeping("postgres", pg_dsn, table)


async def test_a_refused_password_is_not_in_the_error(mysql_dsn: str) -> None:
    sink = build_sink(sink_config("mysql", with_password(mysql_dsn, PASSWORD), "pw_refused"), None)
    with pytest.raises(TransientError) as e:
        await sink.open()
    await sink.close()
    text = f"{e.value!r} {e.value.__cause__!r}"
    assert "Access denied" in text and MARK not in text


def test_poller_run_never_prints_the_password(
    moto: MotoServer, pg_dsn: str, mysql_dsn: str, tmp_path: Path
) -> None:
    queue = client("sqs", moto.url).create_queue(QueueName=f"pw-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    closed = with_password(f"postgresql://postgres@127.0.0.1:{free_port()}/test", PASSWORD)

    def stream(name: str, kind: str, dsn: str) -> dict[str, object]:
        return {
            "name": name,
            "source": {"type": "sqs", "queue_url": queue, "endpoint_url": moto.url, "wait_seconds": 1},
            "sink": {"type": kind, "dsn": dsn, "table": name, "key": ["id"], "columns": {"id": "data.id"}},
        }

    streams = [
        stream("pw_unreachable", "postgres", closed),
        stream("pw_refused", "mysql", with_password(mysql_dsn, PASSWORD)),
    ]
    with Daemon(streams, shutdown_timeout=5) as d:
        wait_for(lambda: d.log.read_text().count("sink not reachable") >= 4, 60, message="both sinks retried")
        time.sleep(1)
    log = d.log.read_text()
    assert MARK not in log, log
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    assert {x.get("stream") for x in lines if x["event"] == "sink not reachable, retrying"} == {
        "pw_unreachable",
        "pw_refused",
    }
