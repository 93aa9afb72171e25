"""No frozen process stalls another: a replica stopped inside a commit (SIGSTOP,
as `docker pause` does) keeps its connection and its transaction's locks, and
the database must end its session within the sink's `idle_in_transaction_seconds`
so that another replica's work goes on; a commit blocked on a lock becomes a
counted transient error; `/readyz` reports a commit that runs too long.

A daemon is caught inside a commit by a transaction of the test's own that holds
a row the commit needs: once the daemon's session waits for it, the daemon is
stopped and the row released, so the blocked statement completes on the server
and the session sits idle inside its transaction, holding what it wrote.
"""

from __future__ import annotations

import functools
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from poller.config import parse_stream
from poller.sinks.base import SqlSink
from poller.sinks.factory import build_sink
from poller.sinks.handler import EventSink
from tests.handlers import journal
from tests.integration.test_kinesis import create_stream, put_records
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
from tests.support.daemon import Daemon, metric, wait_for
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IDLE = 8  # sink.idle_in_transaction_seconds of the frozen-replica tests: lock waits of 2.67 s
# How long the server may take past IDLE to end a frozen session: it checks on its own
# timer, and a loaded machine delays everything (a bound means "never", not a speed).
SLACK = 60


# --------------------------------------------------------------------------- catching a commit


def session_state(dsn: str, pid: int) -> str | None:
    return db.scalar("postgres", dsn, "SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))


def blocked_by(dsn: str, pid: int) -> list[int]:
    """Sessions waiting for a lock the session `pid` holds."""
    sql = "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
    return [int(r[0]) for r in db.fetch("postgres", dsn, sql, (pid,))]


def settled_state(dsn: str, pid: int) -> str:
    """The session's state once its statement has ended ("gone": no session)."""
    return str(wait_for(lambda: (s := session_state(dsn, pid)) != "active" and (s or "gone"), 30, 0.05))


def freeze_inside_a_commit(d: Daemon, dsn: str, hold: str, then: Any = None, attempts: int = 5) -> int:
    """SIGSTOP `d` while its session is inside a transaction that wrote something:
    `hold` (a statement of the test's own transaction) takes a row the daemon's
    commit needs; `then()` makes the daemon commit. Returns the frozen session's pid.

    The daemon's own lock wait may run out before it is stopped (a loaded machine):
    then it rolled back, and the test lets it go and catches its retry."""
    for _ in range(attempts):
        with db.connect("postgres", dsn) as blocker:
            cur = blocker.cursor()
            cur.execute("BEGIN")
            cur.execute(hold)
            mine = int(cur.execute("SELECT pg_backend_pid()").fetchone()[0])
            if then is not None:
                then()
                then = None
            waiting = wait_for(
                functools.partial(blocked_by, dsn, mine),
                60,
                interval=0.05,
                message="the daemon's commit waiting for the test's row",
            )
            d.signal(signal.SIGSTOP)
            cur.execute("ROLLBACK")  # the daemon's statement goes on; the daemon does not
        if settled_state(dsn, waiting[0]) == "idle in transaction":
            return waiting[0]
        d.signal(signal.SIGCONT)  # its lock wait ran out first: catch the next attempt
    raise AssertionError(f"the daemon was never stopped inside a commit:\n{d.tail()}")


# --------------------------------------------------------------------------- SQS


def test_a_replica_frozen_mid_commit_does_not_stall_the_one_that_gets_its_message_again(
    moto: MotoServer, pg_dsn: str
) -> None:
    """Competing SQS consumers: a replica frozen after writing a message's
    `poller_processed` row holds it; the message comes back to the other replica
    when its visibility runs out, whose commit would wait on that row for ever.
    The database ends the frozen session within IDLE seconds, the other commits."""
    kind, table = "postgres", f"frz_sqs_{uuid.uuid4().hex[:6]}"
    make_table(kind, pg_dsn, table)
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, table, VisibilityTimeout="3")
    cfg = stream(table, kind, pg_dsn, url, moto.url, sink={"idle_in_transaction_seconds": IDLE})
    frozen, other = Daemon([cfg]), Daemon([cfg])
    try:
        frozen.start().wait_ready()
        pid = freeze_inside_a_commit(
            frozen,
            pg_dsn,
            f"INSERT INTO {table} (order_id, note) VALUES (1, 'the test holds it')",
            then=lambda: send_all(sqs, url, [body(1)]),
        )
        wrote = "SELECT backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = %s"
        assert db.scalar(kind, pg_dsn, wrote, (pid,)), "the frozen transaction holds what it wrote"
        other.start()
        # Ended by the server (not by the other replica, which only waits and retries).
        wait_for(lambda: session_state(pg_dsn, pid) is None, IDLE + SLACK, message="frozen session ended")
        wait_for(lambda: count(kind, pg_dsn, table) == 1, SLACK, message="the other replica's commit")
        wait_for(lambda: queue_depth(sqs, url) == 0, SLACK, message="message deleted by the other replica")
        assert db.scalar(kind, pg_dsn, f"SELECT note FROM {table} WHERE order_id = 1") == "ok"
        processed = "SELECT count(*) FROM poller_processed WHERE stream = %s"
        assert db.scalar(kind, pg_dsn, processed, (table,)) == 1
        frozen.signal(signal.SIGCONT)  # wakes to a closed connection, sees the message processed
        assert other.stop() == 0, other.tail()
        assert frozen.stop() == 0, frozen.tail()
    finally:
        for d in (frozen, other):
            if d.proc is not None and d.proc.poll() is None:
                d.signal(signal.SIGCONT)
                d.stop()
    assert_written_once(kind, pg_dsn, table, 1)
    assert queue_depth(sqs, url) == 0


def test_a_commit_blocked_on_a_row_lock_is_a_counted_transient_error(
    moto: MotoServer, database: tuple[str, str]
) -> None:
    """A transaction of someone else's holds the row: the commit gives up after the
    lock-wait bound (a third of idle_in_transaction_seconds: 2 s here), counts it,
    logs it, reports the stream not ready, and retries until the row is free."""
    kind, dsn = database
    table = f"frz_lock_{uuid.uuid4().hex[:6]}"
    make_table(kind, dsn, table)
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, table, VisibilityTimeout="30")
    cfg = stream(table, kind, dsn, url, moto.url, sink={"idle_in_transaction_seconds": 6})
    with Daemon([cfg]) as d, db.connect(kind, dsn) as blocker:
        d.wait_ready()
        cur = blocker.cursor()
        cur.execute("BEGIN")
        cur.execute(f"INSERT INTO {table} (order_id, note) VALUES (7, 'held')")
        send_all(sqs, url, [body(7)])
        lock_waits = f'poller_lock_waits_total{{stream="{table}"}}'
        wait_for(lambda: d.metric(lock_waits) >= 2, 60, message="lock waits counted")
        assert metric(d, "poller_retries_total", error_class="transient", stream=table) >= 2
        status, text = d.get("/readyz")
        assert status == 503 and "transient" in json.loads(text)["reasons"][table]
        assert "gave up waiting for a lock" in d.tail(400)
        assert count(kind, dsn, table) == 0
        cur.execute("ROLLBACK")
        wait_for(lambda: count(kind, dsn, table) == 1, 60, message="committed once the row is free")
        wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="message deleted")
        wait_for(d.ready, 30, message="ready again")
        assert d.stop() == 0
    assert_written_once(kind, dsn, table, 1)


def test_readyz_reports_a_commit_running_longer_than_the_idle_bound(moto: MotoServer, pg_dsn: str) -> None:
    """A commit that waits on no lock but does not end (here a trigger that waits
    for the test; in life a database or a network that stopped answering) is not
    a frozen peer: past idle_in_transaction_seconds, /readyz says so."""
    kind, table = "postgres", f"frz_long_{uuid.uuid4().hex[:6]}"
    make_table(kind, pg_dsn, table)
    db.execute(
        kind,
        pg_dsn,
        f"CREATE TABLE {table}_hold (held boolean)",
        f"INSERT INTO {table}_hold VALUES (true)",
        # Each statement of a PL/pgSQL loop sees the rows committed since: the DELETE ends it.
        f"CREATE FUNCTION {table}_wait() RETURNS trigger AS $$ BEGIN "
        f"WHILE EXISTS (SELECT 1 FROM {table}_hold) LOOP PERFORM pg_sleep(0.1); END LOOP; "
        f"RETURN NEW; END $$ LANGUAGE plpgsql",
        f"CREATE TRIGGER {table}_slow BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_wait()",
    )
    sqs = client("sqs", moto.url)
    url = new_queue(sqs, table, VisibilityTimeout="30")
    cfg = stream(table, kind, pg_dsn, url, moto.url, sink={"idle_in_transaction_seconds": 5})
    try:
        with Daemon([cfg]) as d:
            d.wait_ready()
            send_all(sqs, url, [body(3)])

            def reason() -> str | None:
                status, text = d.get("/readyz")
                return json.loads(text).get("reasons", {}).get(table) if status == 503 else None

            why = wait_for(reason, 60, message="/readyz reports the long commit")
            assert "a commit has been running for" in why and "more than 5 s" in why
            assert d.metric(f'poller_stream_ready{{stream="{table}"}}') == 0
            db.execute(kind, pg_dsn, f"DELETE FROM {table}_hold")
            wait_for(lambda: count(kind, pg_dsn, table) == 1, 60, message="the commit ends")
            wait_for(d.ready, 30, message="ready again")
            assert d.stop() == 0
    finally:
        db.execute(kind, pg_dsn, f"DROP TABLE IF EXISTS {table}_hold")


# --------------------------------------------------------------------------- leases


def handled_sequences(log: Path) -> list[str]:
    return [r["kinesis"]["sequenceNumber"] for e in journal.read(log) for r in e["event"]["Records"]]


def test_a_handler_replica_frozen_mid_commit_gives_its_shard_up_to_another(
    moto: MotoServer, pg_dsn: str, tmp_path: Path
) -> None:
    """A handler sink whose checkpoints and leases live in PostgreSQL: a replica
    frozen after writing its checkpoint holds that row; the other replica takes
    the lease when it runs out, delivers the records again (at least once), and
    its checkpoint commit goes through once the database has ended the frozen
    session — within IDLE seconds, not never."""
    name = f"frz_h_{uuid.uuid4().hex[:6]}"
    kinesis = client("kinesis", moto.url)
    create_stream(kinesis, name, 1)
    db.drop_bookkeeping("postgres", pg_dsn, name)

    def cfg(worker: str) -> dict[str, Any]:
        return {
            "name": name,
            "source": {
                "type": "kinesis",
                "stream": name,
                "endpoint_url": moto.url,
                "region": "us-east-1",
                "idle_poll_seconds": 0.2,
                "shard_discovery_seconds": 0.5,
            },
            "batch": {"size": 10, "window_seconds": 0.05},
            "sink": {
                "type": "handler",
                "handler": "tests.handlers.recorder:lambda_handler",
                "code_path": str(ROOT),
                "checkpoint_dsn": pg_dsn,
                "idle_in_transaction_seconds": IDLE,
            },
            "coordination": {"lease_seconds": 6, "worker_id": worker},
        }

    logs = {w: tmp_path / f"{w}.jsonl" for w in ("a", "b")}
    daemons = {w: Daemon([cfg(w)], env={"HANDLER_LOG": str(logs[w])}) for w in ("a", "b")}
    frozen, other = daemons["a"], daemons["b"]

    def put(i: int) -> str:
        where: dict[int, tuple[str, str]] = {}
        put_records(kinesis, name, [{"Data": json.dumps({"id": i}).encode(), "PartitionKey": "k"}], where)
        return where[i][1]

    def checkpoint() -> str | None:
        return db.scalar(
            "postgres",
            pg_dsn,
            "SELECT sequence_number FROM poller_checkpoints WHERE stream = %s AND shard_id NOT LIKE '#%%'",
            (name,),
        )

    try:
        frozen.start()
        first = put(0)
        wait_for(lambda: checkpoint() == first, 60, message="the first record's checkpoint")
        second_seq: list[str] = []
        pid = freeze_inside_a_commit(
            frozen,
            pg_dsn,
            f"SELECT 1 FROM poller_checkpoints WHERE stream = '{name}' FOR UPDATE",
            then=lambda: second_seq.append(put(1)),
        )
        second = second_seq[0]
        assert second in handled_sequences(logs["a"])
        assert checkpoint() == first  # written by the frozen session, not committed
        other.start()
        wait_for(lambda: session_state(pg_dsn, pid) is None, IDLE + SLACK, message="frozen session ended")
        wait_for(lambda: checkpoint() == second, SLACK, message="the other replica's checkpoint")
        owner = db.scalar("postgres", pg_dsn, "SELECT owner FROM poller_leases WHERE stream = %s", (name,))
        assert owner == "b"
        assert second in handled_sequences(logs["b"])  # delivered again: the commit was lost
        third = put(2)  # and the shard goes on
        wait_for(lambda: checkpoint() == third, 60, message="the next record's checkpoint")
        frozen.signal(signal.SIGCONT)
        assert other.stop() == 0, other.tail()
        assert frozen.stop() == 0, frozen.tail()
    finally:
        for d in daemons.values():
            if d.proc is not None and d.proc.poll() is None:
                d.signal(signal.SIGCONT)
                d.stop()


# --------------------------------------------------------------------------- the settings


async def test_every_session_several_processes_share_bounds_idling_and_lock_waits(
    database: tuple[str, str],
) -> None:
    """Read back from inside the sink's own transaction: database sinks on SQS (no
    coordination), handler checkpoint stores with coordination or on SQS, and a
    bound given in the stream file; a single Kinesis worker keeps the defaults."""
    kind, dsn = database
    table = f"frz_set_{kind}"
    db.execute(
        kind, dsn, f"DROP TABLE IF EXISTS {table}", f"CREATE TABLE {table} (id VARCHAR(20) PRIMARY KEY)"
    )
    rows = {"type": kind, "dsn": dsn, "table": table, "key": ["id"], "columns": {"id": "data.id"}}
    handler = {"type": "handler", "handler": "tests.handlers.recorder:lambda_handler", "checkpoint_dsn": dsn}
    kinesis = {"type": "kinesis", "stream": "s"}
    sqs = {"type": "sqs", "queue_url": "https://sqs.us-east-1.amazonaws.com/1/q"}

    async def settings(source: dict[str, Any], sink: dict[str, Any], **more: Any) -> dict[str, float]:
        data = {"name": "frz", "source": source, "sink": sink, **more}
        built = build_sink(parse_stream(data, "frz.yaml", env={}), None)
        store = built.store if isinstance(built, EventSink) else built
        assert isinstance(store, SqlSink)
        await store.open()
        try:
            async with store.transaction() as conn:
                if kind == "postgres":
                    got = await conn.fetch(
                        "SELECT name, setting FROM pg_settings "
                        "WHERE name IN ('idle_in_transaction_session_timeout', 'lock_timeout')"
                    )
                    values = {r[0]: int(r[1]) / 1000 for r in got}
                    return {
                        "idle": values["idle_in_transaction_session_timeout"],
                        "lock": values["lock_timeout"],
                    }
                names = ("idle_transaction_timeout", "innodb_lock_wait_timeout", "wait_timeout")
                await conn.execute("SHOW SESSION VARIABLES WHERE Variable_name IN (%s, %s, %s)", names)
                values = {r[0]: float(r[1]) for r in await conn.fetchall()}
                idle = values["idle_transaction_timeout"]
                if idle:  # MySQL 8 has no idle_transaction_timeout: wait_timeout bounds the session there
                    assert values["wait_timeout"] == idle
                return {"idle": idle, "lock": values["innodb_lock_wait_timeout"]}
        finally:
            await store.close()

    lease = {"lease_seconds": 6}
    assert await settings(sqs, rows) == {"idle": 30, "lock": 5}
    assert await settings(sqs, handler) == {"idle": 30, "lock": 5}
    assert await settings(kinesis, handler, coordination=lease) == {"idle": 30, "lock": 2}
    assert await settings(kinesis, rows, coordination={"lease_seconds": 20}) == {"idle": 60, "lock": 5}
    assert await settings(kinesis, {**rows, "idle_in_transaction_seconds": 12}) == {"idle": 12, "lock": 4}
    single = await settings(kinesis, rows)
    assert single["idle"] == 0  # one worker: nobody waits on it
