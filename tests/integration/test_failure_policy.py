"""The failure policy against real servers: database outages, a connection
dropped inside a transaction, throttling and 5xx from AWS, record age, and the
three on-failure destinations."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_sqs_to_database import (
    assert_written_once,
    body,
    count,
    make_table,
    new_queue,
    stream,
)
from tests.support import db
from tests.support.aws import client, queue_depth, send_all
from tests.support.daemon import Daemon, wait_for
from tests.support.fault_proxy import FaultProxy
from tests.support.servers import MotoServer
from tests.support.tcp_proxy import TcpProxy
from tests.support.threaded import LoopThread

pytestmark = pytest.mark.integration


def proxied_dsn(kind: str, dsn: str, port: int) -> str:
    host = "127.0.0.1:5432" if kind == "postgres" else "127.0.0.1:3306"
    assert host in dsn, dsn
    return dsn.replace(host, f"127.0.0.1:{port}")


def failures(kind: str, dsn: str, stream_name: str) -> list[tuple[Any, ...]]:
    return db.fetch(
        kind,
        dsn,
        "SELECT reason, error_class, error_message, payload, attempts FROM poller_failures "
        "WHERE stream = %s ORDER BY id",
        (stream_name,),
    )


def test_postgres_outage_loses_nothing_and_reports_not_ready(moto: MotoServer, pg_dsn: str) -> None:
    kind, table = "postgres", "fp_pg_outage"
    make_table(kind, pg_dsn, table)
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"{table}-{uuid.uuid4().hex[:6]}", VisibilityTimeout="10")
    proxy = TcpProxy("127.0.0.1", 5432)
    n = 300
    cfg = stream(
        table,
        kind,
        proxied_dsn(kind, pg_dsn, proxy.port),
        url,
        moto.url,
        on_failure={"type": "table", "table": "poller_failures"},
        retry={"max_attempts": 2, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 2},
    )

    def produce() -> None:  # a steady trickle, so batches keep arriving during the outage
        for start in range(0, n, 10):
            send_all(sqs, url, [body(i) for i in range(start, start + 10)])
            time.sleep(0.15)

    try:
        with Daemon([cfg]) as d:
            d.wait_ready()
            producer = threading.Thread(target=produce)
            producer.start()
            wait_for(lambda: count(kind, pg_dsn, table) >= 50, 60, message="rows before the outage")
            proxy.cut()
            wait_for(lambda: not d.ready(), 20, message="readiness false during the outage")
            not_ready = 0
            for _ in range(15):  # a second apart, the database still down
                not_ready += 0 if d.ready() else 1
                d.check_alive()
                time.sleep(1)
            assert not_ready >= 14, "readiness came back while the database was still down"
            proxy.restore()
            producer.join(120)
            wait_for(lambda: count(kind, pg_dsn, table) == n, 120, message="every row after the outage")
            wait_for(d.ready, 30, message="ready again")
            wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
            m = d.metrics()
            assert m[f'poller_retries_total{{error_class="transient",stream="{table}"}}'] > 0
            assert d.stop() == 0
    finally:
        proxy.close()
    assert failures(kind, pg_dsn, table) == []
    assert_written_once(kind, pg_dsn, table, n)


def test_mysql_connection_dropped_inside_a_transaction(moto: MotoServer, mysql_dsn: str) -> None:
    kind, table = "mysql", "fp_my_drop"
    make_table(kind, mysql_dsn, table)
    db.execute(
        kind,
        mysql_dsn,
        f"DROP TABLE IF EXISTS {table}_gate",
        f"CREATE TABLE {table}_gate (x INT)",
        f"INSERT INTO {table}_gate VALUES (1)",
        # Row 13 waits inside the open transaction while the gate is closed.
        f"CREATE TRIGGER {table}_slow BEFORE INSERT ON {table} FOR EACH ROW "
        f"BEGIN IF NEW.order_id = 13 AND (SELECT count(*) FROM {table}_gate) > 0 "
        f"THEN DO SLEEP(10); END IF; END",
    )
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"{table}-{uuid.uuid4().hex[:6]}", VisibilityTimeout="30")
    send_all(sqs, url, [body(i) for i in range(30)])
    proxy = TcpProxy("127.0.0.1", 3306)
    cfg = stream(
        table,
        kind,
        proxied_dsn(kind, mysql_dsn, proxy.port),
        url,
        moto.url,
        source={"max_concurrency": 1},
        batch={"size": 30, "window_seconds": 10},
    )
    try:
        with Daemon([cfg]) as d:
            d.wait_ready()

            def sleeping_in_trigger() -> bool:
                rows = db.fetch(
                    kind,
                    mysql_dsn,
                    "SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s",
                    (f"%INSERT INTO `{table}`%",),
                )
                return bool(rows[0][0])

            wait_for(sleeping_in_trigger, 30, interval=0.05, message="batch inside its transaction")
            assert count(kind, mysql_dsn, table) == 0
            proxy.cut()
            db.execute(kind, mysql_dsn, f"DELETE FROM {table}_gate")
            time.sleep(1)
            assert count(kind, mysql_dsn, table) == 0, "a partial batch became visible"
            proxy.restore()
            wait_for(
                lambda: count(kind, mysql_dsn, table) == 30, 60, message="the whole batch after the drop"
            )
            wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
            assert d.stop() == 0
    finally:
        proxy.close()
    assert_written_once(kind, mysql_dsn, table, 30)


def test_records_older_than_max_age_go_to_the_destination(moto: MotoServer, pg_dsn: str) -> None:
    kind, table = "postgres", "fp_age"
    make_table(kind, pg_dsn, table)
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"{table}-{uuid.uuid4().hex[:6]}")
    send_all(sqs, url, [body(i) for i in range(5)])
    time.sleep(2.5)
    cfg = stream(
        table,
        kind,
        pg_dsn,
        url,
        moto.url,
        retry={"max_attempts": 2, "max_record_age_seconds": 1},
        on_failure={"type": "table", "table": "poller_failures"},
    )
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: len(failures(kind, pg_dsn, table)) == 5, 60, message="5 failure rows")
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
        m = d.metrics()
        assert (
            m[f'poller_failed_records_total{{destination="table",reason="record_age",stream="{table}"}}'] == 5
        )
        assert d.stop() == 0
    rows = failures(kind, pg_dsn, table)
    assert {r[0] for r in rows} == {"record_age"}
    assert sorted(json.loads(r[3])["id"] for r in rows) == [0, 1, 2, 3, 4]
    assert count(kind, pg_dsn, table) == 0


def test_sqs_throttling_and_5xx_lose_nothing(moto: MotoServer, pg_dsn: str) -> None:
    kind, table = "postgres", "fp_sqs_faults"
    make_table(kind, pg_dsn, table)
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"{table}-{uuid.uuid4().hex[:6]}", VisibilityTimeout="5")
    loop = LoopThread()
    proxy = FaultProxy(moto.url, seed=7)
    proxy_url = loop.run(proxy.start())
    n = 200
    try:
        loop.call(proxy.set_faults, throttle=0.15, server_error=0.15)
        with Daemon([stream(table, kind, pg_dsn, url, proxy_url)]) as d:
            d.wait_ready(60)
            send_all(sqs, url, [body(i) for i in range(n)])
            wait_for(lambda: count(kind, pg_dsn, table) == n, 180, message="every row under faults")
            wait_for(lambda: queue_depth(sqs, url) == 0, 120, message="queue drained under faults")
            assert d.stop() == 0
        assert proxy.injected["throttle"] > 5 and proxy.injected["server_error"] > 5
    finally:
        loop.run(proxy.stop())
        loop.close()
    assert_written_once(kind, pg_dsn, table, n)


@pytest.mark.parametrize("destination", ["sqs", "file"])
def test_failure_destinations_carry_payload_and_error(
    moto: MotoServer, pg_dsn: str, tmp_path: Path, destination: str
) -> None:
    kind, table = "postgres", f"fp_dest_{destination}"
    make_table(kind, pg_dsn, table)
    sqs = client("sqs", moto.url)
    suffix = uuid.uuid4().hex[:6]
    url = new_queue(sqs, f"{table}-{suffix}")
    bodies = [body(i) for i in range(10)]
    bodies[4] = "{not json"
    send_all(sqs, url, bodies)
    if destination == "sqs":
        fail_url = new_queue(sqs, f"{table}-failures-{suffix}")
        on_failure: dict[str, Any] = {
            "type": "sqs",
            "queue_url": fail_url,
            "endpoint_url": moto.url,
            "region": "us-east-1",
        }
    else:
        path = tmp_path / "failures.jsonl"
        on_failure = {"type": "file", "path": str(path)}
    with Daemon([stream(table, kind, pg_dsn, url, moto.url, on_failure=on_failure)]) as d:
        d.wait_ready()
        wait_for(lambda: count(kind, pg_dsn, table) == 9, 60, message="the good rows")
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
        assert d.stop() == 0
    if destination == "sqs":
        got = sqs.receive_message(QueueUrl=fail_url, MaxNumberOfMessages=10)["Messages"]
        records = [json.loads(m["Body"]) for m in got]
    else:
        records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 1
    (r,) = records
    assert r["payload"] == "{not json"
    assert r["reason"] == "decode_error" and r["error_class"] == "DecodeError"
    assert "JSON" in r["error_message"] or "json" in r["error_message"]
    assert r["stream"] == table and r["message_id"] and r["attempts"] >= 1
    assert r["first_failure_at"] <= r["last_failure_at"]


def test_an_unreachable_destination_makes_the_stream_wait(moto: MotoServer, pg_dsn: str) -> None:
    """Nothing is skipped while the failure queue is missing; once it exists the
    bad record lands there and the batch commits."""
    kind, table = "postgres", "fp_dest_down"
    make_table(kind, pg_dsn, table)
    sqs = client("sqs", moto.url)
    suffix = uuid.uuid4().hex[:6]
    url = new_queue(sqs, f"{table}-{suffix}")
    fail_name = f"{table}-failures-{suffix}"
    fail_url = url.rsplit("/", 1)[0] + "/" + fail_name
    bodies = [body(i) for i in range(10)]
    bodies[3] = "{not json"
    send_all(sqs, url, bodies)
    on_failure = {"type": "sqs", "queue_url": fail_url, "endpoint_url": moto.url, "region": "us-east-1"}
    # One lane, so the bad message and the good ones share a batch.
    cfg = stream(table, kind, pg_dsn, url, moto.url, on_failure=on_failure, source={"max_concurrency": 1})
    with Daemon([cfg]) as d:
        retries = f'poller_retries_total{{error_class="transient",stream="{table}"}}'
        wait_for(lambda: d.metric(retries) >= 2, 30, message="retrying the destination")
        time.sleep(3)
        assert d.get("/readyz")[0] == 503
        assert count(kind, pg_dsn, table) == 0, "the batch committed past an undelivered failure"
        assert queue_depth(sqs, url) == 10
        sqs.create_queue(QueueName=fail_name)
        wait_for(lambda: count(kind, pg_dsn, table) == 9, 60, message="the good rows once it is back")
        wait_for(d.ready, 30, message="ready again")
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
        assert d.stop() == 0
    (msg,) = sqs.receive_message(QueueUrl=fail_url, MaxNumberOfMessages=10)["Messages"]
    assert json.loads(msg["Body"])["payload"] == "{not json"
