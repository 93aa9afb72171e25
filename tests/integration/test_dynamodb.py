"""DynamoDB table → PostgreSQL / MariaDB through DynamoDB Streams.

Table-sync tests run against moto's DynamoDB and DynamoDB Streams (one shard,
no lineage) and the real databases: after puts, updates and deletes the
target table must equal a full scan of the source table, column by column.
Lineage, trimming, expired iterators and vanished shards need a stream that
moto cannot play, so those run against `FakeDynamoDBStreams` (the service's
JSON protocol over HTTP, scripted by the test).

A trigger logs every row write (id, version) in the same transaction as the
write, so a change applied twice, or applied out of order, shows up even
where the final upsert would hide it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer

from tests.support import db
from tests.support.aws import client
from tests.support.daemon import Daemon, metric, wait_for, with_overrides
from tests.support.fake_ddb_streams import FakeDynamoDBStreams
from tests.support.servers import MotoServer
from tests.support.tables import create_logged_table

pytestmark = pytest.mark.integration

COLUMNS = {
    "id": "keys.id",
    "name": "data.name",
    "score": "data.score",
    "qty": "data.qty",
    "tags": "data.tags",
    "active": "data.active",
    "avatar": "data.avatar",
    "profile": "data.profile",
    "version": "data.version",
}

_SER = TypeSerializer()
_DESER = TypeDeserializer()

# -- the target tables ------------------------------------------------------------------


_MADE: list[tuple[str, str, str]] = []


def make_target(kind: str, dsn: str, base: str) -> str:
    """The synced table, and a log of every row write made by a trigger; returns its name.

    The name (also the stream's, which keys its checkpoints) is unique per call,
    so two runs of the suite against the same databases cannot mix their rows.
    """
    table = f"{base}_{uuid.uuid4().hex[:6]}"
    _MADE.append((kind, dsn, table))
    if kind == "postgres":
        columns = (
            "id bigint PRIMARY KEY, name text, score double precision, qty bigint, "
            "tags jsonb, active boolean, avatar bytea, profile jsonb, version int"
        )
        log_columns = "id bigint, version int, ord bigserial"
    else:
        columns = (
            "id BIGINT PRIMARY KEY, name VARCHAR(255), score DOUBLE, qty BIGINT, "
            "tags JSON, active BOOLEAN, avatar VARBINARY(64), profile JSON, version INT"
        )
        log_columns = "id BIGINT, version INT, ord BIGINT AUTO_INCREMENT PRIMARY KEY"
    create_logged_table(kind, dsn, table, columns=columns, log_columns=log_columns, logged=["id", "version"])
    return table


@pytest.fixture(autouse=True)
def _drop_targets() -> Iterator[None]:
    yield
    while _MADE:
        kind, dsn, table = _MADE.pop()
        drops = [f"DROP TABLE IF EXISTS {table}", f"DROP TABLE IF EXISTS {table}_writes"]
        if kind == "postgres":
            drops.append(f"DROP FUNCTION IF EXISTS {table}_log()")
        db.execute(kind, dsn, *drops)
        db.drop_bookkeeping(kind, dsn, table)


def target_rows(kind: str, dsn: str, table: str) -> dict[int, dict[str, Any]]:
    """The target table as {id: row}, in the same plain form as `canonical`."""
    out: dict[int, dict[str, Any]] = {}
    for r in db.fetch(kind, dsn, f"SELECT {', '.join(COLUMNS)} FROM {table}"):
        id_, name, score, qty, tags, active, avatar, profile, version = r
        if kind == "mysql":
            tags = json.loads(tags) if tags is not None else None
            profile = json.loads(profile) if profile is not None else None
            active = bool(active) if active is not None else None
        out[int(id_)] = {
            "name": name,
            "score": float(score) if score is not None else None,
            "qty": qty,
            "tags": tags,
            "active": active,
            "avatar": bytes(avatar) if avatar is not None else None,
            "profile": profile,
            "version": version,
        }
    return out


def write_log(kind: str, dsn: str, table: str) -> dict[int, list[int]]:
    """Versions written per id, in commit order."""
    log: dict[int, list[int]] = {}
    for id_, version in db.fetch(kind, dsn, f"SELECT id, version FROM {table}_writes ORDER BY ord"):
        log.setdefault(int(id_), []).append(int(version))
    return log


def assert_each_change_written_once_in_order(kind: str, dsn: str, table: str) -> None:
    for id_, versions in write_log(kind, dsn, table).items():
        assert versions == sorted(set(versions)), f"id {id_}: versions written {versions}"


# -- the source ----------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, set | frozenset):
        return sorted(_plain(x) for x in v)
    if isinstance(v, Binary):
        return bytes(v.value)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def canonical(item: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB item (Python values) as the row it must become."""
    p = _plain(item)
    return {c: p.get(c) for c in COLUMNS if c != "id"}


def item(i: int, version: int) -> dict[str, Any]:
    return {
        "id": i,
        "name": f"user-{i}-v{version}",
        "score": Decimal(i % 97) / 4,
        "qty": i * 10**12 + version,  # past 32 bits, exact in a bigint
        "tags": {f"t{i % 5}", f"v{version}"},
        "active": i % 2 == 0,
        "avatar": bytes([i % 256, version % 256, 0]),
        "profile": {"city": f"c{i % 13}", "zip": i % 1000, "list": [1, "two", None, True]},
        "version": version,
    }


def typed(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _SER.serialize(v) for k, v in values.items()}


def make_source(ddb: Any, table: str, view: str = "NEW_AND_OLD_IMAGES") -> str:
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "N"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": view},
    )
    return str(ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"])


def scan(ddb: Any, table: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": table}
    while True:
        resp = ddb.scan(**kwargs)
        for raw in resp["Items"]:
            it = {k: _DESER.deserialize(v) for k, v in raw.items()}
            out[int(it["id"])] = canonical(it)
        if "LastEvaluatedKey" not in resp:
            return out
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def _batch_write(ddb: Any, table: str, requests: list[dict[str, Any]]) -> None:
    for start in range(0, len(requests), 25):
        pending: dict[str, Any] = {table: requests[start : start + 25]}
        while pending:
            pending = ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}


def put_items(ddb: Any, table: str, items: list[dict[str, Any]]) -> None:
    _batch_write(ddb, table, [{"PutRequest": {"Item": typed(it)}} for it in items])


def delete_items(ddb: Any, table: str, ids: list[int]) -> None:
    _batch_write(ddb, table, [{"DeleteRequest": {"Key": {"id": {"N": str(i)}}}} for i in ids])


def update_items(ddb: Any, table: str, ids: list[int], version: int) -> None:
    """UpdateItem: SET fields, ADD to a set, REMOVE an attribute (the column becomes null)."""
    for i in ids:
        ddb.update_item(
            TableName=table,
            Key={"id": {"N": str(i)}},
            UpdateExpression="SET #n = :n, score = :s, version = :v ADD tags :t REMOVE #b",
            ExpressionAttributeNames={"#n": "name", "#b": "avatar"},
            ExpressionAttributeValues=typed(
                {":n": f"user-{i}-v{version}", ":s": Decimal(i) / 8, ":v": version, ":t": {"updated"}}
            ),
        )


def workload(ddb: Any, table: str) -> int:
    """3,050 puts, 1,000 updates and 500 deletes; returns the change count.

    Updates touch some keys twice; some deleted keys are put back afterwards.
    One writer: moto numbers a stream record `len(records)` before appending it,
    so two concurrent requests can give two records one sequence number (AWS
    never does), and a reader then takes the second for a repeat of the first.
    """
    put_items(ddb, table, [item(i, 1) for i in range(3000)])
    update_items(ddb, table, list(range(500)), 2)
    put_items(ddb, table, [item(i, 3) for i in range(250, 750)])
    delete_items(ddb, table, list(range(2500, 3000)))
    put_items(ddb, table, [item(i, 10) for i in range(2900, 2950)])
    return 3000 + 500 + 500 + 500 + 50


# -- streams ----------------------------------------------------------------------------


def stream_cfg(name: str, kind: str, dsn: str, source: dict[str, Any], **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "source": {
            "type": "dynamodb",
            "region": "us-east-1",
            "idle_poll_seconds": 0.1,
            "shard_discovery_seconds": 1,
            **source,
        },
        "batch": {"size": 500, "window_seconds": 0.1},
        "retry": {"max_attempts": 2, "backoff_initial_seconds": 0.1, "backoff_max_seconds": 1},
        "sink": {"type": kind, "dsn": dsn, "table": name, "key": ["id"], "columns": COLUMNS},
    }
    return with_overrides(cfg, over)


def until_equal(kind: str, dsn: str, table: str, expected: dict[int, dict[str, Any]], timeout: float) -> None:
    def diff() -> str:
        rows = target_rows(kind, dsn, table)
        wrong = [i for i in sorted(set(rows) | set(expected)) if rows.get(i) != expected.get(i)]
        return f"{len(wrong)} ids differ, e.g. (id, target, source): " + repr(
            [(i, rows.get(i), expected.get(i)) for i in wrong[:2]]
        )

    try:
        wait_for(lambda: target_rows(kind, dsn, table) == expected, timeout, interval=0.5)
    except AssertionError:
        raise AssertionError(f"after {timeout}s the target does not equal the source: {diff()}") from None


@pytest.fixture
def ddb(moto: MotoServer) -> Any:
    return client("dynamodb", moto.url)


# -- table sync against moto -------------------------------------------------------------


def test_table_sync_equals_a_full_scan(moto: MotoServer, ddb: Any, database: tuple[str, str]) -> None:
    kind, dsn = database
    name = table = make_target(kind, dsn, f"ddb_sync_{kind}")
    make_source(ddb, table)
    with Daemon([stream_cfg(name, kind, dsn, {"table": table, "endpoint_url": moto.url})]) as d:
        d.wait_ready()
        changes = workload(ddb, table)
        expected = scan(ddb, table)
        assert len(expected) == 2550
        until_equal(kind, dsn, name, expected, 120)
        wait_for(
            lambda: metric(d, "poller_records_total", stream=name, outcome="written") == changes,
            10,
            message="every change counted as written",
        )
        assert metric(d, "poller_records_total", stream=name, outcome="received") == changes
        assert metric(d, "poller_records_total", stream=name, outcome="failed") == 0
        assert metric(d, "poller_shards", stream=name, state="reading") == 1
        assert d.stop() == 0
    assert_each_change_written_once_in_order(kind, dsn, name)


def test_a_filter_passing_inserts_and_modifies_keeps_deleted_rows(
    moto: MotoServer, ddb: Any, pg_dsn: str
) -> None:
    kind = "postgres"
    name = table = make_target(kind, pg_dsn, "ddb_filtered")
    make_source(ddb, table)
    cfg = stream_cfg(
        name,
        kind,
        pg_dsn,
        {"table": table, "endpoint_url": moto.url},
        filters=[{"eventName": ["INSERT", "MODIFY"]}],
    )
    with Daemon([cfg]) as d:
        d.wait_ready()
        put_items(ddb, table, [item(i, 1) for i in range(200)])
        update_items(ddb, table, list(range(0, 200, 2)), 2)
        before_deletes = scan(ddb, table)
        delete_items(ddb, table, list(range(0, 200, 4)))
        wait_for(
            lambda: metric(d, "poller_records_total", stream=name, outcome="filtered") == 50,
            60,
            message="the 50 REMOVE records filtered out",
        )
        until_equal(kind, pg_dsn, name, before_deletes, 30)
        assert len(scan(ddb, table)) == 150
        assert d.stop() == 0


def test_sigkill_and_restart_leave_the_target_equal_to_the_source(
    moto: MotoServer, ddb: Any, pg_dsn: str
) -> None:
    kind = "postgres"
    name = table = make_target(kind, pg_dsn, "ddb_kill")
    make_source(ddb, table)
    # Small batches: many commits, so the kills land between and inside them.
    cfg = stream_cfg(name, kind, pg_dsn, {"table": table, "endpoint_url": moto.url}, batch={"size": 50})
    producer = threading.Thread(target=workload, args=(ddb, table))
    producer.start()
    writes = f"SELECT count(*) FROM {name}_writes"
    for target in (800, 2000):
        d = Daemon([cfg]).start()
        d.wait_ready()
        wait_for(lambda t=target: db.scalar(kind, pg_dsn, writes) >= t, 120, message=f"{target} row writes")
        d.kill()
    producer.join(120)
    assert not producer.is_alive(), "the writer did not finish"
    with Daemon([cfg]) as d:
        until_equal(kind, pg_dsn, name, scan(ddb, table), 120)
        assert d.stop() == 0
    assert_each_change_written_once_in_order(kind, pg_dsn, name)


def test_latest_is_kept_across_a_crash_before_the_first_commit(
    moto: MotoServer, ddb: Any, pg_dsn: str
) -> None:
    """A LATEST stream dies before it has written anything. Items written while
    it is down are synced after the restart; items older than its first start
    are not (before, the restart took LATEST again and lost the new ones)."""
    kind = "postgres"
    name = table = make_target(kind, pg_dsn, "ddb_latest")
    make_source(ddb, table)
    put_items(ddb, table, [item(i, 1) for i in range(20)])
    time.sleep(2.5)  # creation times are whole seconds: these are older than the start, margin included
    source = {"table": table, "endpoint_url": moto.url, "starting_position": "LATEST"}
    cfg = stream_cfg(name, kind, pg_dsn, {**source, "latest_margin_seconds": 0.5})
    stored = f"SELECT shard_id FROM poller_checkpoints WHERE stream = '{name}'"
    first = Daemon([cfg]).start()
    first.wait_ready()
    wait_for(lambda: db.fetch(kind, pg_dsn, stored) == [("#start",)], 30, message="the start position stored")

    def reads() -> float:
        return sum(v for k, v in first.metrics().items() if k.startswith("poller_get_records_calls_total"))

    wait_for(lambda: reads() >= 1, 30, message="the shard read at LATEST")
    first.kill()
    put_items(ddb, table, [item(i, 2) for i in range(100, 130)])
    with Daemon([cfg]) as d:
        until_equal(kind, pg_dsn, name, {i: v for i, v in scan(ddb, table).items() if i >= 100}, 60)
        assert d.stop() == 0
    assert_each_change_written_once_in_order(kind, pg_dsn, name)


# -- lineage and the stream's failure modes, against the fake ------------------------------


@pytest.fixture
def fake() -> Iterator[FakeDynamoDBStreams]:
    with FakeDynamoDBStreams(f"fake-{uuid.uuid4().hex[:6]}", describe_page_size=2) as f:
        yield f


def fake_cfg(name: str, dsn: str, fake: FakeDynamoDBStreams, **over: Any) -> dict[str, Any]:
    source = {"stream_arn": fake.arn, "endpoint_url": fake.url, **over.pop("source", {})}
    return stream_cfg(name, "postgres", dsn, source, batch={"size": 7}, **over)


class Model:
    """What the target must hold after a scripted sequence of changes."""

    def __init__(self, fake: FakeDynamoDBStreams):
        self.fake = fake
        self.items: dict[int, dict[str, Any]] = {}
        self.version: dict[int, int] = {}

    def put(self, shard: str, i: int) -> None:
        old = self.items.get(i)
        v = self.version.get(i, 0) + 1
        new = item(i, v)
        self.fake.put(shard, "MODIFY" if old else "INSERT", {"id": i}, new, old)
        self.items[i], self.version[i] = new, v

    def remove(self, shard: str, i: int) -> None:
        self.fake.put(shard, "REMOVE", {"id": i}, None, self.items.pop(i))

    def expected(self) -> dict[int, dict[str, Any]]:
        return {i: canonical(it) for i, it in self.items.items()}


def test_lineage_parents_before_children(fake: FakeDynamoDBStreams, pg_dsn: str) -> None:
    """root splits into a and b; b splits again into b1 and b2; later a rolls
    over into a1 while the daemon runs. Each key's changes move from shard to
    shard, so reading a child before its parent would apply them out of order."""
    kind = "postgres"
    name = make_target(kind, pg_dsn, "ddb_lineage")
    fake.get_records_delay = 0.005  # calls overlap if two readers ever share a shard
    m = Model(fake)
    keys = range(40)
    root = fake.add_shard()
    for i in keys:
        m.put(root, i)
    a, b = fake.split(root)
    for i in keys:
        m.put(a if i % 2 == 0 else b, i)
    b1, b2 = fake.split(b)
    for i in keys:
        if i % 2:
            m.put(b1 if i % 4 == 1 else b2, i)
    with Daemon([fake_cfg(name, pg_dsn, fake)]) as d:
        d.wait_ready()
        until_equal(kind, pg_dsn, name, m.expected(), 60)
        # Live: more changes, a rollover of `a`, deletes in the children.
        for i in keys:
            if i % 2 == 0:
                m.put(a, i)
        (a1,) = fake.split(a, 1)
        for i in keys:
            if i % 2 == 0:
                m.put(a1, i)
            if i % 8 == 0:
                m.remove(a1, i)
            if i % 4 == 1 and i % 3 == 0:
                m.remove(b1, i)
        until_equal(kind, pg_dsn, name, m.expected(), 60)
        assert metric(d, "poller_records_total", stream=name, outcome="failed") == 0
        # Shards that ended leave no series behind (a worker ends just after its children start).
        wait_for(
            lambda: not [s for s in d.metrics() if any(f'shard="{e}"' in s for e in (root, a, b))],
            10,
            message="series of ended shards removed",
        )
        assert d.stop() == 0
    assert_each_change_written_once_in_order(kind, pg_dsn, name)
    assert set(fake.max_concurrent_reads) == {root, a, b, b1, b2, a1}
    assert max(fake.max_concurrent_reads.values()) == 1, fake.max_concurrent_reads
    assert fake.calls["DescribeStream"] >= 2  # paged: 2 shards a page


def test_parallelization_keeps_each_items_changes_in_order(fake: FakeDynamoDBStreams, pg_dsn: str) -> None:
    """Four lanes per shard: records go to lanes by their item key, so the
    changes of one item are still applied one after another."""
    kind = "postgres"
    name = make_target(kind, pg_dsn, "ddb_parallel")
    m = Model(fake)
    shard = fake.add_shard()
    for rnd in range(8):
        for i in range(25):
            if rnd == 5 and i % 5 == 0:
                m.remove(shard, i)
            else:
                m.put(shard, i)
    with Daemon([fake_cfg(name, pg_dsn, fake, source={"parallelization_factor": 4})]) as d:
        until_equal(kind, pg_dsn, name, m.expected(), 60)
        assert d.stop() == 0
    assert_each_change_written_once_in_order(kind, pg_dsn, name)
    assert len(write_log(kind, pg_dsn, name)) == 25


def test_expired_iterators_are_reopened_where_reading_stopped(fake: FakeDynamoDBStreams, pg_dsn: str) -> None:
    kind = "postgres"
    name = make_target(kind, pg_dsn, "ddb_expired")
    m = Model(fake)
    shard = fake.add_shard()
    for i in range(20):
        m.put(shard, i)
    with Daemon([fake_cfg(name, pg_dsn, fake)]) as d:
        d.wait_ready()
        until_equal(kind, pg_dsn, name, m.expected(), 30)
        assert fake.expire_iterators() >= 1
        for i in range(10, 30):
            m.put(shard, i)
        until_equal(kind, pg_dsn, name, m.expected(), 30)
        assert "shard iterator expired" in d.tail(400)
        assert d.stop() == 0
    assert_each_change_written_once_in_order(kind, pg_dsn, name)


def test_a_read_that_finds_its_position_trimmed_goes_on_without_rereading(
    fake: FakeDynamoDBStreams, pg_dsn: str
) -> None:
    """GetRecords answers TrimmedDataAccessException mid-run: the shard is
    reopened at TRIM_HORIZON, and nothing already applied is applied again."""
    kind = "postgres"
    name = make_target(kind, pg_dsn, "ddb_trim_read")
    m = Model(fake)
    shard = fake.add_shard()
    for i in range(15):
        m.put(shard, i)
    with Daemon([fake_cfg(name, pg_dsn, fake)]) as d:
        until_equal(kind, pg_dsn, name, m.expected(), 30)
        fake.fail("GetRecords", "TrimmedDataAccessException", shard_id=shard)
        for i in range(5, 20):
            m.put(shard, i)
        until_equal(kind, pg_dsn, name, m.expected(), 30)
        assert metric(d, "poller_trimmed_reads_total", stream=name, shard=shard) == 1
        assert d.stop() == 0
    assert_each_change_written_once_in_order(kind, pg_dsn, name)
    assert sum(len(v) for v in write_log(kind, pg_dsn, name).values()) == 30


def _trimmed_while_stopped(
    fake: FakeDynamoDBStreams, pg_dsn: str, base: str, **over: Any
) -> tuple[str, Model, Daemon]:
    """10 rows synced, the daemon stopped, 10 more changes, then the first 15 records trimmed:
    the checkpoint (record 10) is past the retention when the daemon comes back."""
    kind = "postgres"
    name = make_target(kind, pg_dsn, base)
    m = Model(fake)
    shard = fake.add_shard()
    for i in range(10):
        m.put(shard, i)
    with Daemon([fake_cfg(name, pg_dsn, fake, **over)]) as d:
        until_equal(kind, pg_dsn, name, m.expected(), 30)
        assert d.stop() == 0
    for i in range(10, 20):
        m.put(shard, i)
    fake.trim(shard, 15)
    return name, m, Daemon([fake_cfg(name, pg_dsn, fake, **over)])


def test_trimmed_records_are_reported_and_reading_goes_on(fake: FakeDynamoDBStreams, pg_dsn: str) -> None:
    kind = "postgres"
    name, m, daemon = _trimmed_while_stopped(fake, pg_dsn, "ddb_trimmed")
    lost = {10, 11, 12, 13, 14}
    with daemon as d:
        expected = {i: row for i, row in m.expected().items() if i not in lost}
        until_equal(kind, pg_dsn, name, expected, 30)
        shard = fake.shards()[0]
        assert metric(d, "poller_trimmed_reads_total", stream=name, shard=shard) == 1
        line = next(json.loads(x) for x in d.tail(400).splitlines() if "trimmed before they were read" in x)
        assert line["level"] == "error" and line["shard"] == shard and "TRIM_HORIZON" in line["event"]
        assert d.stop() == 0


def test_on_trimmed_stop_stops_the_stream(fake: FakeDynamoDBStreams, pg_dsn: str) -> None:
    kind = "postgres"
    name, _, daemon = _trimmed_while_stopped(fake, pg_dsn, "ddb_trim_stop", source={"on_trimmed": "stop"})
    with daemon as d:
        assert d.wait(30) == 0  # its only stream stopped: the daemon exits by itself
    assert "stopping the stream as configured (on_trimmed: stop)" in d.log.read_text()
    assert set(target_rows(kind, pg_dsn, name)) == set(range(10))


def test_a_closed_shard_that_no_longer_exists_has_ended(fake: FakeDynamoDBStreams, pg_dsn: str) -> None:
    kind = "postgres"
    name = make_target(kind, pg_dsn, "ddb_gone")
    m = Model(fake)
    root = fake.add_shard()
    for i in range(5):
        m.put(root, i)
    (child,) = fake.split(root, 1)
    m.items.clear()  # root's records are never read: it is gone when the daemon asks
    for i in range(5, 10):
        m.put(child, i)
    fake.fail("GetShardIterator", "ResourceNotFoundException", times=1000, shard_id=root)
    with Daemon([fake_cfg(name, pg_dsn, fake)]) as d:
        until_equal(kind, pg_dsn, name, m.expected(), 30)
        assert "closed shard no longer exists" in d.tail(400)
        assert d.stop() == 0


def test_a_mapping_the_view_type_cannot_feed_stops_the_stream_at_start(pg_dsn: str) -> None:
    with FakeDynamoDBStreams("keys-only", view_type="KEYS_ONLY") as fake:
        fake.add_shard()
        name = make_target("postgres", pg_dsn, "ddb_keys_only")
        cfg = fake_cfg(name, pg_dsn, fake)
        cfg["sink"]["columns"] = {"id": "keys.id", "name": "new.name", "version": "data.version"}
        d = Daemon([cfg]).start()
        try:
            assert d.wait(30) == 2
        finally:
            d.stop()
        line = next(json.loads(x) for x in d.log.read_text().splitlines() if "does not fit its source" in x)
        assert line["stream"] == name
        problems = line["problems"]
        assert [p.split(": ", 1)[1].split(":")[0] for p in problems] == [
            "sink.columns.name",
            "sink.columns.version",
        ]
        assert all(f"stream '{name}' ({fake.arn}, StreamViewType KEYS_ONLY)" in p for p in problems)
        assert fake.calls["GetRecords"] == 0
