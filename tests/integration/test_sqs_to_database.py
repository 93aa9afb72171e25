"""SQS → PostgreSQL / MariaDB, exactly once, against moto's server over HTTP
and the real databases. Every write of a row is logged by a trigger in the
same transaction, so a duplicate write shows up even where an upsert would
hide it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest

from tests.support import db
from tests.support.aws import client, queue_depth, send_all
from tests.support.daemon import Daemon, wait_for, with_overrides
from tests.support.fault_proxy import FaultProxy
from tests.support.servers import MotoServer
from tests.support.tables import create_logged_table
from tests.support.threaded import LoopThread

pytestmark = pytest.mark.integration


def make_table(kind: str, dsn: str, table: str) -> None:
    if kind == "postgres":
        columns = (
            "order_id bigint PRIMARY KEY, grp text, seq int, amount numeric(12,2), "
            "note text NOT NULL, ord bigserial"
        )
        # The writing transaction's id: commit order, which row order within
        # one INSERT ... SELECT is not.
        log_columns = "order_id bigint, tx bigint DEFAULT txid_current()"
    else:
        columns = (
            "order_id BIGINT PRIMARY KEY, grp VARCHAR(64), seq INT, amount DECIMAL(12,2), "
            "note VARCHAR(255) NOT NULL, ord BIGINT AUTO_INCREMENT UNIQUE"
        )
        log_columns = "order_id BIGINT"
    create_logged_table(kind, dsn, table, columns=columns, log_columns=log_columns, logged=["order_id"])


def stream(name: str, kind: str, dsn: str, queue_url: str, endpoint: str, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "source": {
            "type": "sqs",
            "queue_url": queue_url,
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "wait_seconds": 1,
            "max_concurrency": 2,
        },
        "batch": {"size": 50, "window_seconds": 0.2},
        "retry": {"max_attempts": 2, "backoff_initial_seconds": 0.1, "backoff_max_seconds": 1},
        "sink": {
            "type": kind,
            "dsn": dsn,
            "table": name,
            "key": ["order_id"],
            "columns": {
                "order_id": "data.id",
                "grp": "data.group",
                "seq": "data.seq",
                "amount": "data.amount",
                "note": "data.note",
            },
        },
    }
    return with_overrides(cfg, over)


def body(i: int, group: str = "g", seq: int = 0, note: str | None = "ok") -> str:
    d: dict[str, Any] = {"id": i, "group": group, "seq": seq, "amount": round(i * 1.25, 2)}
    if note is not None:
        d["note"] = note
    return json.dumps(d)


def count(kind: str, dsn: str, table: str) -> int:
    return int(db.scalar(kind, dsn, f"SELECT count(*) FROM {table}"))


def assert_written_once(kind: str, dsn: str, table: str, expected: int) -> None:
    writes = db.fetch(
        kind,
        dsn,
        f"SELECT order_id, count(*) FROM {table}_writes GROUP BY order_id HAVING count(*) > 1",
    )
    assert writes == [], f"rows written more than once: {writes[:10]}"
    assert int(db.scalar(kind, dsn, f"SELECT count(*) FROM {table}_writes")) == expected


def new_queue(sqs: Any, name: str, **attrs: str) -> str:
    return str(sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"])


def test_standard_queue_exactly_once(moto: MotoServer, database: tuple[str, str]) -> None:
    kind, dsn = database
    table = f"sqs_std_{kind}"
    make_table(kind, dsn, table)
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"{table}-{uuid.uuid4().hex[:6]}", VisibilityTimeout="30")
    n = 1000
    with Daemon([stream(table, kind, dsn, url, moto.url)]) as d:
        d.wait_ready()
        # Produce while the daemon drains, so the queue stays shallow (moto slows with depth).
        producer = threading.Thread(target=send_all, args=(sqs, url, [body(i) for i in range(n)]))
        producer.start()
        producer.join(300)
        wait_for(lambda: count(kind, dsn, table) == n, 240, message="all rows written")
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
        m = wait_for(
            lambda: (
                (mm := d.metrics()).get(f'poller_records_total{{outcome="written",stream="{table}"}}') == n
                and mm
            ),
            10,
            message="written counter",
        )
        assert m[f'poller_records_total{{outcome="received",stream="{table}"}}'] >= n
        assert m.get(f'poller_records_total{{outcome="failed",stream="{table}"}}', 0) == 0
        assert m[f'poller_stream_ready{{stream="{table}"}}'] == 1
        assert d.stop() == 0
    assert_written_once(kind, dsn, table, n)
    total = db.scalar(kind, dsn, f"SELECT sum(amount) FROM {table}")
    assert float(total) == pytest.approx(sum(round(i * 1.25, 2) for i in range(n)))


def test_redelivered_message_is_written_once(moto: MotoServer, pg_dsn: str) -> None:
    """The delete is lost (the proxy drops it), the visibility expires, SQS
    delivers the message again: it is recognised as processed and deleted."""
    kind, table = "postgres", "sqs_redeliver"
    make_table(kind, pg_dsn, table)
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"{table}-{uuid.uuid4().hex[:6]}", VisibilityTimeout="2")
    loop = LoopThread()
    proxy = FaultProxy(moto.url)
    proxy_url = loop.run(proxy.start())
    try:
        loop.call(proxy.set_faults, drop=1.0, only_targets={"DeleteMessageBatch"})
        cfg = stream(table, kind, pg_dsn, url, proxy_url)
        with Daemon([cfg]) as d:
            d.wait_ready()
            send_all(sqs, url, [body(i) for i in range(5)])
            wait_for(lambda: count(kind, pg_dsn, table) == 5, 60, message="rows written")
            dup = f'poller_records_total{{outcome="duplicate",stream="{table}"}}'
            wait_for(lambda: d.metrics().get(dup, 0) >= 5, 60, message="redeliveries recognised")
            loop.call(proxy.set_faults)  # deletes go through again
            wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
            assert d.stop() == 0
        assert proxy.injected["drop"] >= 1
        assert_written_once(kind, pg_dsn, table, 5)
    finally:
        loop.run(proxy.stop())
        loop.close()


def test_fifo_keeps_order_within_each_group(moto: MotoServer, pg_dsn: str) -> None:
    kind, table = "postgres", "sqs_fifo"
    make_table(kind, pg_dsn, table)
    sqs = client("sqs", moto.url)
    url = new_queue(
        sqs,
        f"{table}-{uuid.uuid4().hex[:6]}.fifo",
        FifoQueue="true",
        ContentBasedDeduplication="true",
    )
    groups = ["a", "b", "c"]
    per_group = 40
    bodies = [body(i, groups[i % 3], i // 3) for i in range(per_group * 3)]
    send_all(sqs, url, bodies, group_of=lambda i: groups[i % 3])
    # One poller: moto's receive snapshots the locked groups when a long poll
    # starts, so two concurrent long polls can both take one group (AWS cannot).
    cfg = stream(table, kind, pg_dsn, url, moto.url, batch={"size": 7}, source={"max_concurrency": 1})
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: count(kind, pg_dsn, table) == per_group * 3, 120, message="rows written")
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
        assert d.stop() == 0
    for g in groups:
        rows = db.fetch(
            kind,
            pg_dsn,
            f"SELECT t.seq, w.tx FROM {table} t JOIN {table}_writes w USING (order_id) "
            f"WHERE t.grp = %s ORDER BY t.seq",
            (g,),
        )
        assert [r[0] for r in rows] == list(range(per_group))
        txs = [r[1] for r in rows]
        # A later message of a group never commits before an earlier one.
        assert txs == sorted(txs), f"group {g} committed out of order: {rows}"
    assert_written_once(kind, pg_dsn, table, per_group * 3)


def test_sigkill_and_restart_gives_exactly_one_row_per_message(moto: MotoServer, pg_dsn: str) -> None:
    kind, table = "postgres", "sqs_kill"
    make_table(kind, pg_dsn, table)
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"{table}-{uuid.uuid4().hex[:6]}", VisibilityTimeout="3")
    n = 600
    cfg = stream(table, kind, pg_dsn, url, moto.url, batch={"size": 20, "window_seconds": 0.05})
    producer = threading.Thread(target=send_all, args=(sqs, url, [body(i) for i in range(n)]))
    producer.start()
    for target in (150, 350):
        d = Daemon([cfg]).start()
        d.wait_ready()
        wait_for(lambda t=target: count(kind, pg_dsn, table) >= t, 180, message=f"{target} rows")
        d.kill()
    producer.join(300)
    with Daemon([cfg]) as d:
        wait_for(lambda: count(kind, pg_dsn, table) == n, 240, message="all rows after restarts")
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
        assert d.stop() == 0
    assert_written_once(kind, pg_dsn, table, n)


def test_unwritable_message_goes_to_redrive_and_does_not_block(
    moto: MotoServer, database: tuple[str, str]
) -> None:
    kind, dsn = database
    table = f"sqs_poison_{kind}"
    make_table(kind, dsn, table)
    sqs = client("sqs", moto.url)
    suffix = uuid.uuid4().hex[:6]
    dlq = new_queue(sqs, f"{table}-dlq-{suffix}")
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = new_queue(
        sqs,
        f"{table}-{suffix}",
        VisibilityTimeout="5",
        RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
    )
    bodies = [body(i, note=None if i == 7 else "ok") for i in range(20)]
    send_all(sqs, url, bodies)
    with Daemon([stream(table, kind, dsn, url, moto.url, retry={"max_attempts": 5})]) as d:
        d.wait_ready()
        wait_for(lambda: count(kind, dsn, table) == 19, 60, message="the good rows")
        wait_for(lambda: queue_depth(sqs, dlq) == 1, 60, message="poison message in the DLQ")
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="main queue drained")
        m = d.metrics()
        assert m.get(f'poller_bisections_total{{stream="{table}"}}', 0) >= 1
        assert d.stop() == 0
    dead = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10)["Messages"]
    assert [json.loads(x["Body"])["id"] for x in dead] == [7]
    assert db.scalar(kind, dsn, f"SELECT count(*) FROM {table} WHERE order_id = 7") == 0
    assert_written_once(kind, dsn, table, 19)


@pytest.mark.timing
def test_sigterm_commits_the_inflight_batch_and_exits_zero(moto: MotoServer, pg_dsn: str) -> None:
    kind, table = "postgres", "sqs_sigterm"
    make_table(kind, pg_dsn, table)
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, f"{table}-{uuid.uuid4().hex[:6]}", VisibilityTimeout="60")
    # A window far past the 10 s deadline holds the messages in one open batch
    # when SIGTERM comes: the drain must end it at once and commit it. One poller
    # (and lane): moto's DeleteMessage is not safe against a concurrent one.
    cfg = stream(
        table,
        kind,
        pg_dsn,
        url,
        moto.url,
        source={"max_concurrency": 1},
        batch={"size": 1000, "window_seconds": 60},
    )
    d = Daemon([cfg], shutdown_timeout=10).start()
    try:
        d.wait_ready()
        send_all(sqs, url, [body(i) for i in range(30)])
        gauge = f'poller_sqs_inflight_messages{{stream="{table}"}}'
        wait_for(lambda: d.metrics().get(gauge) == 30, 30, message="30 messages in flight")
        assert count(kind, pg_dsn, table) == 0
        started = time.monotonic()
        d.signal(15)
        code = d.wait(20)
        elapsed = time.monotonic() - started
    finally:
        d.stop()
    assert code == 0, d.tail()
    # The shutdown deadline, not a speed: a drain that waited for the window would
    # take it all (the daemon gives up at 10 s); ending the window at once takes ~1 s.
    assert elapsed < 10, f"took {elapsed:.1f}s, deadline 10s"
    assert count(kind, pg_dsn, table) == 30
    assert queue_depth(sqs, url) == 0
