"""Kinesis → PostgreSQL / MariaDB, exactly once and in per-key order, against
moto (the basics) and kinesalite (resharding, iterator expiry), with a real
`poller run` child process. Every write of a row is logged by a trigger in the
same transaction, so a row written twice shows up even where an upsert hides it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import ClientSession, web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from poller.sources.shards import lane_of
from tests.support import db
from tests.support.aws import client
from tests.support.daemon import Daemon, metric, wait_for, with_overrides
from tests.support.fault_proxy import FaultProxy
from tests.support.payloads import aurora_audit_line, cloudwatch_payload, kpl_aggregate
from tests.support.servers import Kinesalite, MotoServer, free_port
from tests.support.tables import create_logged_table
from tests.support.threaded import LoopThread

pytestmark = pytest.mark.integration

PG = "postgres"


@pytest.fixture(scope="module")
def kinesalite() -> Iterator[Kinesalite]:
    with Kinesalite() as server:
        yield server


# --------------------------------------------------------------------------- helpers


def make_table(kind: str, dsn: str, table: str) -> None:
    """A keyed table, and a log of every write.

    `tx` orders commits: PostgreSQL's transaction id (rows of one transaction
    share it: their order inside it is not observable, and a heap does not keep
    it); MariaDB's auto-increment, which its sink assigns in batch order."""
    if kind == "postgres":
        columns = (
            "id text PRIMARY KEY, pk text NOT NULL, n int NOT NULL, "
            "shard text, seq text, tx bigint NOT NULL DEFAULT txid_current()"
        )
        create_logged_table(kind, dsn, table, columns=columns, log_columns="id text", logged=["id"])
    else:
        columns = (
            "id VARCHAR(64) PRIMARY KEY, pk VARCHAR(64) NOT NULL, n INT NOT NULL, "
            "shard VARCHAR(64), seq VARCHAR(64), tx BIGINT AUTO_INCREMENT UNIQUE"
        )
        create_logged_table(kind, dsn, table, columns=columns, log_columns="id VARCHAR(64)", logged=["id"])


def stream_cfg(name: str, kind: str, dsn: str, stream: str, endpoint: str, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "source": {
            "type": "kinesis",
            "stream": stream,
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "idle_poll_seconds": 0.2,
            "shard_discovery_seconds": 0.5,
        },
        "batch": {"size": 500, "window_seconds": 0.1},
        "retry": {"max_attempts": 3, "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.5},
        "sink": {
            "type": kind,
            "dsn": dsn,
            "table": name,
            "key": ["id"],
            "columns": {
                "id": "data.id",
                "pk": "partition_key",
                "n": "data.n",
                "shard": "shard_id",
                "seq": "sequence_number",
            },
        },
    }
    return with_overrides(cfg, over)


def create_stream(kinesis: Any, name: str, shards: int) -> None:
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    wait_active(kinesis, name)


def wait_active(kinesis: Any, name: str) -> None:
    def active() -> bool:
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        return bool(summary["StreamStatus"] == "ACTIVE")

    wait_for(active, 30, 0.05, message=f"stream {name} ACTIVE")


class Producer:
    """Numbered records over a fixed set of partition keys; each key's `n` counts up
    from 0, so per-key order can be checked on the rows."""

    def __init__(self, keys: int, prefix: str = "k"):
        self.keys = [f"{prefix}{i}" for i in range(keys)]
        self.next_n: dict[str, int] = defaultdict(int)
        self.sent = 0
        self.sequence: dict[str, tuple[str, str]] = {}  # id → (shard, sequence number)

    def records(self, count: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(count):
            key = self.keys[self.sent % len(self.keys)]
            n = self.next_n[key]
            self.next_n[key] = n + 1
            self.sent += 1
            out.append({"Data": json.dumps({"id": f"{key}:{n}", "n": n}).encode(), "PartitionKey": key})
        return out

    def put(self, kinesis: Any, stream: str, count: int, chunk: int = 500) -> None:
        for start in range(0, count, chunk):
            batch = self.records(min(chunk, count - start))
            put_records(kinesis, stream, batch, self.sequence)


def put_records(
    kinesis: Any, stream: str, records: list[dict[str, Any]], where: dict[str, tuple[str, str]] | None = None
) -> None:
    pending = records
    while pending:
        resp = kinesis.put_records(StreamName=stream, Records=pending)
        retry = []
        for rec, result in zip(pending, resp["Records"], strict=True):
            if "ErrorCode" in result:
                retry.append(rec)
            elif where is not None:
                where[json.loads(rec["Data"])["id"]] = (result["ShardId"], result["SequenceNumber"])
        pending = retry


def count(kind: str, dsn: str, table: str) -> int:
    return int(db.scalar(kind, dsn, f"SELECT count(*) FROM {table}"))


def assert_written_once(kind: str, dsn: str, table: str, expected: int) -> None:
    twice = db.fetch(
        kind, dsn, f"SELECT id, count(*) FROM {table}_writes GROUP BY id HAVING count(*) > 1 ORDER BY id"
    )
    assert twice == [], f"rows written more than once: {twice[:10]}"
    assert int(db.scalar(kind, dsn, f"SELECT count(*) FROM {table}_writes")) == expected
    assert count(kind, dsn, table) == expected


def assert_key_order(kind: str, dsn: str, table: str) -> None:
    """No key's row was committed before a row produced ahead of it."""
    last: dict[str, tuple[int, int]] = {}
    for pk, n, tx in db.fetch(kind, dsn, f"SELECT pk, n, tx FROM {table} ORDER BY pk, n"):
        if pk in last:
            prev_n, prev_tx = last[pk]
            assert n == prev_n + 1, f"key {pk}: row {prev_n + 1} is missing"
            assert tx >= prev_tx, f"key {pk}: row {n} committed before row {prev_n}"
        else:
            assert n == 0, f"key {pk}: rows before {n} are missing"
        last[pk] = (n, tx)


def checkpoints(kind: str, dsn: str, stream: str) -> dict[str, tuple[str | None, int, str]]:
    rows = db.fetch(
        kind,
        dsn,
        "SELECT shard_id, sequence_number, sub_sequence, state FROM poller_checkpoints WHERE stream = %s",
        (stream,),
    )
    return {r[0]: (r[1], int(r[2]), r[3]) for r in rows}


def wait_rows(kind: str, dsn: str, table: str, expected: int, d: Daemon, timeout: float = 120) -> None:
    def done() -> bool:
        d.check_alive()
        return count(kind, dsn, table) >= expected

    try:
        wait_for(done, timeout, message=f"{expected} rows in {table}")
    except AssertionError:
        print(d.tail(40))
        raise


# --------------------------------------------------------------------------- moto: the basics


def test_four_shards_exactly_once_in_key_order(moto: MotoServer, database: tuple[str, str]) -> None:
    kind, dsn = database
    table = f"kin_main_{kind}"
    make_table(kind, dsn, table)
    kinesis = client("kinesis", moto.url)
    stream = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, stream, 4)
    producer = Producer(keys=200)
    producer.put(kinesis, stream, 20_000)
    with Daemon([stream_cfg(table, kind, dsn, stream, moto.url)]) as d:
        d.wait_ready()
        wait_rows(kind, dsn, table, 20_000, d)
        labels = {"stream": table}
        wait_for(
            lambda: metric(d, "poller_records_total", outcome="written", **labels) == 20_000,
            10,
            message="written counter",
        )
        assert metric(d, "poller_records_total", outcome="received", **labels) == 20_000
        assert metric(d, "poller_records_total", outcome="failed", **labels) == 0
        assert metric(d, "poller_shards", state="reading", **labels) == 4
        shards = {shard for shard, _ in producer.sequence.values()}
        for shard in shards:
            assert metric(d, "poller_get_records_calls_total", shard=shard, **labels) >= 1
        assert d.stop() == 0
    assert_written_once(kind, dsn, table, 20_000)
    assert_key_order(kind, dsn, table)
    # Each shard's checkpoint is its last record.
    last: dict[str, int] = {}
    for shard, seq in producer.sequence.values():
        last[shard] = max(last.get(shard, 0), int(seq))
    stored = checkpoints(kind, dsn, table)
    assert {s: (int(v[0] or 0), v[1], v[2]) for s, v in stored.items()} == {
        s: (seq, 0, "RUNNING") for s, seq in last.items()
    }


def test_sigkill_three_times_gives_exactly_once(moto: MotoServer, pg_dsn: str) -> None:
    table = "kin_kill"
    make_table(PG, pg_dsn, table)
    kinesis = client("kinesis", moto.url)
    stream = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, stream, 3)
    producer = Producer(keys=60)
    total = 9_000
    cfg = stream_cfg(table, PG, pg_dsn, stream, moto.url, batch={"size": 100, "window_seconds": 0.05})

    def produce() -> None:
        for _ in range(total // 500):
            producer.put(kinesis, stream, 500)
            time.sleep(0.1)

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        for target in (1_500, 3_500, 6_000):
            d = Daemon([cfg]).start()
            d.wait_ready()
            wait_rows(PG, pg_dsn, table, target, d)
            d.kill()
    finally:
        thread.join(120)
    with Daemon([cfg]) as d:
        wait_rows(PG, pg_dsn, table, total, d)
        assert d.stop() == 0
    assert_written_once(PG, pg_dsn, table, total)
    assert_key_order(PG, pg_dsn, table)


def test_at_timestamp_starts_at_the_right_record_and_latest_skips_the_backlog(
    moto: MotoServer, pg_dsn: str
) -> None:
    kinesis = client("kinesis", moto.url)
    stream = f"kin-start-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, stream, 2)
    before, after, latest = Producer(20, "before"), Producer(20, "after"), Producer(20, "latest")
    before.put(kinesis, stream, 200)
    time.sleep(1.2)
    boundary = datetime.now(UTC)
    time.sleep(0.3)
    after.put(kinesis, stream, 200)

    at_ts, at_latest = "kin_at_ts", "kin_latest"
    make_table(PG, pg_dsn, at_ts)
    make_table(PG, pg_dsn, at_latest)
    ts_cfg = stream_cfg(
        at_ts,
        PG,
        pg_dsn,
        stream,
        moto.url,
        source={"starting_position": "AT_TIMESTAMP", "starting_timestamp": boundary.isoformat()},
    )
    latest_cfg = stream_cfg(at_latest, PG, pg_dsn, stream, moto.url, source={"starting_position": "LATEST"})
    with Daemon([ts_cfg, latest_cfg]) as d:
        d.wait_ready()
        shards = {shard for shard, _ in after.sequence.values()}
        # LATEST is fixed when the iterator opens; after a first read it surely is.
        wait_for(
            lambda: all(
                metric(d, "poller_get_records_calls_total", stream=at_latest, shard=s) >= 1 for s in shards
            ),
            30,
            message="LATEST iterators open",
        )
        latest.put(kinesis, stream, 100)
        wait_rows(PG, pg_dsn, at_ts, 300, d)
        wait_rows(PG, pg_dsn, at_latest, 100, d)
        assert d.stop() == 0
    ts_keys = {r[0] for r in db.fetch(PG, pg_dsn, f"SELECT DISTINCT substr(pk, 1, 5) FROM {at_ts}")}
    assert ts_keys == {"after", "lates"}
    assert count(PG, pg_dsn, at_ts) == 300
    latest_keys = {r[0] for r in db.fetch(PG, pg_dsn, f"SELECT DISTINCT substr(pk, 1, 5) FROM {at_latest}")}
    assert latest_keys == {"lates"}
    assert_written_once(PG, pg_dsn, at_latest, 100)


def keys_on_shard(kinesis: Any, stream: str, shard_id: str, prefix: str, count: int) -> list[str]:
    """Partition keys that Kinesis routes to `shard_id` (MD5 of the key in its hash range)."""
    shard = next(s for s in kinesis.list_shards(StreamName=stream)["Shards"] if s["ShardId"] == shard_id)
    low, high = int(shard["HashKeyRange"]["StartingHashKey"]), int(shard["HashKeyRange"]["EndingHashKey"])
    keys = (f"{prefix}{i}" for i in range(10_000))
    return [k for k in keys if low <= int(hashlib.md5(k.encode()).hexdigest(), 16) <= high][:count]


def test_latest_holds_after_a_restart_for_a_shard_that_had_committed_nothing(
    moto: MotoServer, pg_dsn: str
) -> None:
    """A LATEST stream commits on one shard; the other is quiet when the daemon
    is killed. After the restart the quiet shard is read from the first start,
    not from its oldest record: the backlog from before the start stays out."""
    table = "kin_latest_restart"
    make_table(PG, pg_dsn, table)
    kinesis = client("kinesis", moto.url)
    stream = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, stream, 2)
    old = Producer(40, "old")
    old.put(kinesis, stream, 200)
    shards = sorted({shard for shard, _ in old.sequence.values()})
    assert len(shards) == 2
    time.sleep(1.5)  # the backlog is older than the start, margin included
    latest = {"starting_position": "LATEST", "latest_margin_seconds": 0.5}
    cfg = stream_cfg(table, PG, pg_dsn, stream, moto.url, source=latest)
    first = Daemon([cfg]).start()
    first.wait_ready()
    calls = "poller_get_records_calls_total"
    wait_for(
        lambda: all(metric(first, calls, stream=table, shard=s) >= 1 for s in shards),
        30,
        message="LATEST iterators open",
    )
    live = Producer(0, "live")
    live.keys = keys_on_shard(kinesis, stream, shards[0], "live", 10)
    live.put(kinesis, stream, 50)
    wait_rows(PG, pg_dsn, table, 50, first)
    stored = checkpoints(PG, pg_dsn, table)
    assert set(stored) == {"#start", shards[0]}
    first.kill()
    down = Producer(40, "down")
    down.put(kinesis, stream, 100)
    assert {shard for shard, _ in down.sequence.values()} == set(shards)
    with Daemon([cfg]) as d:
        wait_rows(PG, pg_dsn, table, 150, d)
        assert d.stop() == 0
    prefixes = {r[0] for r in db.fetch(PG, pg_dsn, f"SELECT DISTINCT substr(pk, 1, 4) FROM {table}")}
    assert prefixes == {"live", "down"}
    assert_written_once(PG, pg_dsn, table, 150)


def test_kpl_aggregate_resumes_at_the_first_uncommitted_user_record(moto: MotoServer, pg_dsn: str) -> None:
    """300 user records in one aggregate, committed 50 at a time; the 151st row is
    refused (a transient error) until the daemon is killed. The restart must write
    user records 150..299 only."""
    table = "kin_kpl"
    columns = "seq text, sub int, pk text, n int, PRIMARY KEY (seq, sub)"
    create_logged_table(PG, pg_dsn, table, columns=columns, log_columns="sub int", logged=["sub"])
    db.execute(
        PG,
        pg_dsn,
        # 40001 (serialization failure) is transient: the batch is retried, never failed.
        f"CREATE OR REPLACE FUNCTION {table}_block() RETURNS trigger AS $$ BEGIN "
        f"IF NEW.sub = 150 THEN RAISE EXCEPTION 'held by the test' USING ERRCODE = '40001'; END IF; "
        f"RETURN NEW; END $$ LANGUAGE plpgsql",
        f"CREATE TRIGGER {table}_block BEFORE INSERT ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_block()",
    )
    kinesis = client("kinesis", moto.url)
    stream = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, stream, 1)
    blobs = kpl_aggregate([(f"user-{i % 7}", json.dumps({"n": i}).encode()) for i in range(300)])
    assert len(blobs) == 1
    seq = kinesis.put_record(StreamName=stream, Data=blobs[0], PartitionKey="aggregate")["SequenceNumber"]
    cfg = stream_cfg(
        table,
        PG,
        pg_dsn,
        stream,
        moto.url,
        batch={"size": 50},
        decode=["kpl", "json"],
        sink={
            "key": ["seq", "sub"],
            "columns": {
                "seq": "sequence_number",
                "sub": "sub_sequence",
                "pk": "partition_key",
                "n": "data.n",
            },
        },
    )
    d = Daemon([cfg]).start()
    try:
        d.wait_ready()
        wait_for(
            lambda: checkpoints(PG, pg_dsn, table).get("shardId-000000000000") == (seq, 149, "RUNNING"),
            60,
            message="checkpoint at user record 150",
        )
        assert count(PG, pg_dsn, table) == 150
    finally:
        d.kill()
    db.execute(PG, pg_dsn, f"DROP TRIGGER {table}_block ON {table}")
    with Daemon([cfg]) as d:
        wait_rows(PG, pg_dsn, table, 300, d)
        wait_for(
            lambda: checkpoints(PG, pg_dsn, table).get("shardId-000000000000") == (seq, 299, "RUNNING"),
            30,
            message="checkpoint at the last user record",
        )
        assert metric(d, "poller_records_total", stream=table, outcome="duplicate") == 150
        assert metric(d, "poller_records_total", stream=table, outcome="written") == 150
        assert d.stop() == 0
    twice = db.fetch(PG, pg_dsn, f"SELECT sub FROM {table}_writes GROUP BY sub HAVING count(*) > 1")
    assert twice == []
    assert db.fetch(PG, pg_dsn, f"SELECT min(sub), max(sub), count(*) FROM {table}_writes") == [(0, 299, 300)]
    rows = db.fetch(PG, pg_dsn, f"SELECT sub, pk, n FROM {table} ORDER BY sub")
    assert rows == [(i, f"user-{i % 7}", i) for i in range(300)]


def test_cloudwatch_aurora_audit_lines_give_exact_sql(moto: MotoServer, pg_dsn: str) -> None:
    table = "kin_audit"
    db.execute(
        PG,
        pg_dsn,
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE TABLE {table} (seq text, sub int, sql text, operation text, query_id bigint, "
        f"PRIMARY KEY (seq, sub))",
    )
    db.drop_bookkeeping(PG, pg_dsn, table)
    statements = [f"SELECT {i} FROM t WHERE a = 'x,{i}'" for i in range(47)]
    statements += [
        "INSERT INTO notes (body) VALUES ('it''s, \"quoted\", with \\\\ backslash')",
        "UPDATE t\nSET a = 1,\n    b = 'two, three'\nWHERE id = 7",
        "SELECT 'a' ',' \"b\"",
    ]
    lines = [aurora_audit_line(sql, query_id=i) for i, sql in enumerate(statements)]
    kinesis = client("kinesis", moto.url)
    stream = f"kin-audit-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, stream, 1)
    kinesis.put_record(StreamName=stream, Data=cloudwatch_payload([], control=True), PartitionKey="cwl")
    seq = kinesis.put_record(StreamName=stream, Data=cloudwatch_payload(lines), PartitionKey="cwl")[
        "SequenceNumber"
    ]
    cfg = stream_cfg(
        table,
        PG,
        pg_dsn,
        stream,
        moto.url,
        decode=["cloudwatch_logs", "mysql_audit"],
        sink={
            "key": ["seq", "sub"],
            "columns": {
                "seq": "sequence_number",
                "sub": "sub_sequence",
                "sql": "data.sql",
                "operation": "data.operation",
                "query_id": "data.query_id",
            },
        },
    )
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_rows(PG, pg_dsn, table, 50, d)
        wait_for(
            lambda: checkpoints(PG, pg_dsn, table).get("shardId-000000000000") == (seq, 49, "RUNNING"),
            30,
            message="checkpoint at the last log event",
        )
        assert d.stop() == 0
    rows = db.fetch(PG, pg_dsn, f"SELECT seq, sub, sql, operation, query_id FROM {table} ORDER BY sub")
    assert rows == [(seq, i, sql, "QUERY", i) for i, sql in enumerate(statements)]


def test_parallelization_keeps_key_order_and_checkpoint_behind_uncommitted(
    moto: MotoServer, pg_dsn: str
) -> None:
    """Four lanes on one shard; one record of one key is refused (transiently) while
    the other lanes run ahead. The shard checkpoint must stay below it; a SIGKILL
    and restart then writes every row exactly once (the lanes' own checkpoints
    cover what they committed ahead of the shard's)."""
    table = "kin_lanes"
    make_table(PG, pg_dsn, table)
    held = "k3:10"
    db.execute(
        PG,
        pg_dsn,
        f"CREATE TABLE IF NOT EXISTS {table}_hold (id text)",
        f"DELETE FROM {table}_hold",
        f"INSERT INTO {table}_hold VALUES ('{held}')",
        f"CREATE OR REPLACE FUNCTION {table}_block() RETURNS trigger AS $$ BEGIN "
        f"IF EXISTS (SELECT 1 FROM {table}_hold h WHERE h.id = NEW.id) THEN "
        f"RAISE EXCEPTION 'held by the test' USING ERRCODE = '40001'; END IF; RETURN NEW; END $$ "
        f"LANGUAGE plpgsql",
        f"CREATE TRIGGER {table}_block BEFORE INSERT ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_block()",
    )
    kinesis = client("kinesis", moto.url)
    stream = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, stream, 1)
    producer = Producer(keys=20)
    total = 2_000
    producer.put(kinesis, stream, total)
    held_seq = int(producer.sequence[held][1])
    blocked_lane = lane_of("k3", 4)
    ahead = [k for k in producer.keys if lane_of(k, 4) != blocked_lane]
    assert ahead, "every key hashed to the blocked lane"
    cfg = stream_cfg(
        table, PG, pg_dsn, stream, moto.url, batch={"size": 20}, source={"parallelization_factor": 4}
    )
    shard = "shardId-000000000000"

    def others_done() -> bool:
        done = db.scalar(PG, pg_dsn, f"SELECT count(*) FROM {table} WHERE pk = ANY(%s)", (ahead,))
        return int(done) == 100 * len(ahead)

    d = Daemon([cfg]).start()
    try:
        d.wait_ready()
        # The checkpoint is sampled while the other lanes commit: it never passes the held record.
        deadline = time.monotonic() + 120
        while not others_done():
            assert time.monotonic() < deadline, "the other lanes did not finish"
            d.check_alive()
            at = checkpoints(PG, pg_dsn, table).get(shard)
            assert at is None or int(at[0] or 0) < held_seq, f"checkpoint {at} passed {held_seq}"
            time.sleep(0.1)
        stored = checkpoints(PG, pg_dsn, table)
        assert shard not in stored or int(stored[shard][0] or 0) < held_seq
        assert any("#lane-" in cid for cid in stored), stored
        assert count(PG, pg_dsn, table) < total
    finally:
        d.kill()
    db.execute(PG, pg_dsn, f"DELETE FROM {table}_hold")
    with Daemon([cfg]) as d:
        wait_rows(PG, pg_dsn, table, total, d)
        wait_for(
            lambda: (
                int(checkpoints(PG, pg_dsn, table).get(shard, ("0", 0, ""))[0] or 0)
                == max(int(s) for _, s in producer.sequence.values())
            ),
            30,
            message="checkpoint at the last record",
        )
        assert d.stop() == 0
    assert_written_once(PG, pg_dsn, table, total)
    assert_key_order(PG, pg_dsn, table)


# --------------------------------------------------------------------------- kinesalite: lineage, expiry


def test_split_and_merge_while_producing_lose_nothing_and_keep_key_order(
    kinesalite: Kinesalite, pg_dsn: str
) -> None:
    """Shard 0 splits while the daemon reads; the daemon is SIGKILLed; shards 1
    and 2 merge while it is down, and it restarts onto closed parents with a
    backlog and children with a backlog. Records flow throughout. Every record
    is written once, and each key's records commit in order across parents and
    children."""
    table = "kin_reshard"
    make_table(PG, pg_dsn, table)
    kinesis = client("kinesis", kinesalite.url)
    stream = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, stream, 3)
    parents = kinesis.list_shards(StreamName=stream)["Shards"]
    parent_ids = {p["ShardId"] for p in parents}
    producer = Producer(keys=100)
    producing = threading.Event()
    producing.set()

    def produce() -> None:
        while producing.is_set():
            producer.put(kinesis, stream, 100)
            time.sleep(0.05)

    # Small reads and batches: the restart has many steps to get the order wrong in.
    cfg = stream_cfg(
        table,
        PG,
        pg_dsn,
        stream,
        kinesalite.url,
        batch={"size": 50, "window_seconds": 0.05},
        source={"max_records_per_call": 200},
    )
    thread = threading.Thread(target=produce)
    thread.start()
    d = Daemon([cfg]).start()
    try:
        d.wait_ready()
        wait_rows(PG, pg_dsn, table, 1_000, d)
        first = parents[0]["HashKeyRange"]
        middle = (int(first["StartingHashKey"]) + int(first["EndingHashKey"])) // 2
        kinesis.split_shard(
            StreamName=stream, ShardToSplit=parents[0]["ShardId"], NewStartingHashKey=str(middle)
        )
        wait_active(kinesis, stream)
        time.sleep(1.0)
        d.kill()
        kinesis.merge_shards(
            StreamName=stream, ShardToMerge=parents[1]["ShardId"], AdjacentShardToMerge=parents[2]["ShardId"]
        )
        wait_active(kinesis, stream)
        time.sleep(1.0)
        d = Daemon([cfg]).start()
        time.sleep(1.0)
        producing.clear()
        thread.join(30)
        wait_rows(PG, pg_dsn, table, producer.sent, d)
        children = {s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"]} - parent_ids
        assert len(children) == 3
        # Tombstones go once every child has a checkpoint of its own.
        wait_for(
            lambda: set(checkpoints(PG, pg_dsn, table)) == children,
            30,
            message="parent checkpoints deleted, children checkpointed",
        )
        assert {v[2] for v in checkpoints(PG, pg_dsn, table).values()} == {"RUNNING"}
        assert metric(d, "poller_shards", stream=table, state="ended") == 3
        assert metric(d, "poller_shards", stream=table, state="reading") == 3
        # The ended parents' per-shard series are gone; the children's remain.
        assert not [s for s in d.metrics() if any(f'shard="{p}"' in s for p in parent_ids)]
        assert all(metric(d, "poller_get_records_calls_total", stream=table, shard=c) for c in children)
        assert d.stop() == 0
    finally:
        producing.clear()
        thread.join(30)
        d.stop()
    assert_written_once(PG, pg_dsn, table, producer.sent)
    assert_key_order(PG, pg_dsn, table)
    # Every key that hashed to a parent also reached a child: order was checked across them.
    by_key: dict[str, set[str]] = defaultdict(set)
    for pk, shard in db.fetch(PG, pg_dsn, f"SELECT DISTINCT pk, shard FROM {table}"):
        by_key[pk].add(shard)
    assert all(shards & parent_ids and shards & children for shards in by_key.values())


# kinesalite encrypts its shard iterators with a fixed key (db/index.js); the
# iterator's first field is its creation time in milliseconds.
_ITERATOR_KEY = bytes.fromhex("1133a5a833666b49abf28c8ba302930f0b2fb240dccd43cf4dfbc0ca91f17751")
_ITERATOR_IV = bytes.fromhex("7bf139dbabbea2d9995d6fcae1dff7da")


def age_iterator(iterator: str, seconds: float) -> str:
    """The same kinesalite iterator, created `seconds` earlier."""
    raw = base64.b64decode(iterator)
    head, body = raw[:8], raw[8:]
    cipher = Cipher(algorithms.AES(_ITERATOR_KEY), modes.CBC(_ITERATOR_IV))
    decryptor = cipher.decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    plain = unpadder.update(decryptor.update(body) + decryptor.finalize()) + unpadder.finalize()
    created, rest = plain.decode().split("/", 1)
    aged = f"{int(created) - int(seconds * 1000):014d}/{rest}".encode()
    padder = padding.PKCS7(128).padder()
    encryptor = cipher.encryptor()
    sealed = encryptor.update(padder.update(aged) + padder.finalize()) + encryptor.finalize()
    return base64.b64encode(head + sealed).decode()


class IteratorAger:
    """A pass-through proxy to kinesalite that hands the daemon, in every `every`th
    GetRecords answer (at most `limit` times), a NextShardIterator aged past
    Kinesis's five minutes: what a daemon stalled that long would hold.
    kinesalite itself then refuses it with ExpiredIteratorException."""

    def __init__(self, upstream: str, every: int, limit: int):
        self.upstream = upstream.rstrip("/")
        self.every = every
        self.limit = limit
        self.answers = 0
        self.aged = 0
        self.expired = 0
        self._session: ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        self._session = ClientSession()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")
        }
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as upstream:
            status, payload = upstream.status, await upstream.read()
            content_type = upstream.headers.get("Content-Type", "application/x-amz-json-1.1")
        if request.headers.get("X-Amz-Target", "").endswith(".GetRecords"):
            payload = self._maybe_age(status, payload)
        return web.Response(status=status, body=payload, headers={"Content-Type": content_type})

    def _maybe_age(self, status: int, payload: bytes) -> bytes:
        if status == 400 and b"ExpiredIteratorException" in payload:
            self.expired += 1
            return payload
        if status != 200:
            return payload
        self.answers += 1
        doc = json.loads(payload)
        if self.aged >= self.limit or self.answers % self.every or not doc.get("NextShardIterator"):
            return payload
        doc["NextShardIterator"] = age_iterator(doc["NextShardIterator"], 301)
        self.aged += 1
        return json.dumps(doc).encode()


def test_expired_iterators_and_throttling_lose_and_repeat_nothing(
    kinesalite: Kinesalite, pg_dsn: str
) -> None:
    table = "kin_expiry"
    make_table(PG, pg_dsn, table)
    kinesis = client("kinesis", kinesalite.url)
    stream = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, stream, 3)
    loop = LoopThread()
    ager = IteratorAger(kinesalite.url, every=4, limit=5)
    ager_url = loop.run(ager.start())
    proxy = FaultProxy(ager_url, seed=11)
    proxy_url = loop.run(proxy.start())
    try:
        loop.call(proxy.set_faults, throttle=0.3, only_targets={"GetRecords"})
        cfg = stream_cfg(
            table,
            PG,
            pg_dsn,
            stream,
            proxy_url,
            batch={"size": 100, "window_seconds": 0.05},
            source={"max_records_per_call": 100},
        )
        producer = Producer(keys=30)
        with Daemon([cfg]) as d:
            d.wait_ready()
            for _ in range(6):
                producer.put(kinesis, stream, 500)
                time.sleep(0.2)
            wait_rows(PG, pg_dsn, table, producer.sent, d)
            wait_for(lambda: ager.aged == ager.limit, 30, message="iterators aged")
            wait_for(lambda: ager.expired == ager.aged, 30, message="aged iterators refused")
            loop.call(proxy.set_faults)
            throttles = f'poller_throttles_total{{operation="GetRecords",stream="{table}"}}'
            wait_for(
                lambda: d.metrics().get(throttles) == proxy.injected["throttle"],
                10,
                message="every injected throttle counted",
            )
            assert proxy.injected["throttle"] > 0
            assert d.stop() == 0
        reopened = [line for line in d.log.read_text().splitlines() if "shard iterator expired" in line]
        assert len(reopened) == ager.limit
    finally:
        loop.run(proxy.stop())
        loop.run(ager.stop())
        loop.close()
    assert_written_once(PG, pg_dsn, table, producer.sent)
    assert_key_order(PG, pg_dsn, table)
