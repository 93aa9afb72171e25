"""Retention gaps, forged, on both stream sources; each `on_retention_gap`
policy does what it says, with the metric and the error log line that names
what was lost.

- DynamoDB Streams against `FakeDynamoDBStreams`: records trimmed past the
  checkpoint, a shard gone with a running checkpoint, a snapshot whose
  recorded position fell out of the 24-hour retention before switch-over;
  `snapshot` re-syncs the table from the fake's Scan.
- Kinesis against kinesalite: a checkpoint whose record is older than the
  retention (kinesalite drops such records; the forged sequence number is a
  real record's with its time moved back 25 hours).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from poller.config import parse_stream
from poller.records import Checkpoint
from poller.sink_api import Transaction
from poller.sinks.factory import build_sink
from tests.integration.test_dynamodb import (  # noqa: F401  (_drop_targets: autouse clean-up)
    Model,
    _drop_targets,
    canonical,
    fake_cfg,
    item,
    make_target,
    target_rows,
    until_equal,
)
from tests.integration.test_kinesis import Producer, create_stream, make_table, put_records, stream_cfg
from tests.support import db
from tests.support.aws import client
from tests.support.daemon import Daemon, metric, wait_for
from tests.support.fake_ddb_streams import FakeDynamoDBStreams
from tests.support.servers import Kinesalite

pytestmark = pytest.mark.integration

PG = "postgres"


def gaps(d: Daemon, stream: str, shard: str) -> float:
    """poller_retention_gaps_total of one shard; 0 while the daemon is not answering yet."""
    return d.metric(f'poller_retention_gaps_total{{shard="{shard}",stream="{stream}"}}')


def gap_lines(d: Daemon) -> list[dict[str, Any]]:
    return [json.loads(x) for x in d.log.read_text().splitlines() if '"retention_gap": true' in x]


class TableModel(Model):
    """The changes scripted on the fake's stream, applied to the fake's table too."""

    def put(self, shard: str, i: int) -> None:
        super().put(shard, i)
        self.fake.set_item(self.items[i])

    def remove(self, shard: str, i: int) -> None:
        super().remove(shard, i)
        self.fake.delete_item({"id": i})


@pytest.fixture
def fake() -> Iterator[FakeDynamoDBStreams]:
    with FakeDynamoDBStreams(f"gap-{uuid.uuid4().hex[:6]}") as f:
        yield f


def trimmed_while_stopped(
    fake: FakeDynamoDBStreams, pg_dsn: str, base: str, **source: Any
) -> tuple[str, TableModel, str]:
    """10 items synced, the daemon stopped, 10 more changes, then the first 15 records
    trimmed: the checkpoint (record 10) is past the retention at the next start."""
    name = make_target(PG, pg_dsn, base)
    m = TableModel(fake)
    shard = fake.add_shard()
    for i in range(10):
        m.put(shard, i)
    with Daemon([fake_cfg(name, pg_dsn, fake, source=source)]) as d:
        until_equal(PG, pg_dsn, name, m.expected(), 30)
        assert d.stop() == 0
    for i in range(5, 15):
        m.put(shard, i)
    fake.trim(shard, 15)
    return name, m, shard


# -- DynamoDB Streams -----------------------------------------------------------------------


def test_ddb_trimmed_checkpoint_continue(fake: FakeDynamoDBStreams, pg_dsn: str) -> None:
    name, m, shard = trimmed_while_stopped(fake, pg_dsn, "gap_ddb_continue")
    with Daemon([fake_cfg(name, pg_dsn, fake, source={"on_retention_gap": "continue"})]) as d:
        wait_for(lambda: gaps(d, name, shard) == 1, 30)
        (line,) = gap_lines(d)
        assert line["level"] == "error" and line["on_retention_gap"] == "continue"
        assert line["lost_until"] is not None and "continuing from TRIM_HORIZON" in line["event"]
        assert metric(d, "poller_trimmed_reads_total", stream=name, shard=shard) == 1
        # Records 11..15 (the second versions of items 5..9) were trimmed: those items
        # keep their first version; the inserts after them (items 10..14) arrive.
        expected = {**m.expected(), **{i: canonical(item(i, 1)) for i in range(5, 10)}}
        until_equal(PG, pg_dsn, name, expected, 30)
        assert d.stop() == 0


def test_ddb_trimmed_checkpoint_stop(fake: FakeDynamoDBStreams, pg_dsn: str) -> None:
    """`stop` stops that stream alone: another stream of the daemon goes on."""
    name, _, shard = trimmed_while_stopped(fake, pg_dsn, "gap_ddb_stop")
    with FakeDynamoDBStreams(f"calm-{uuid.uuid4().hex[:6]}") as calm:
        calm.add_shard()
        other = make_target(PG, pg_dsn, "gap_ddb_calm")
        cfg = fake_cfg(name, pg_dsn, fake, source={"on_retention_gap": "stop"})
        with Daemon([cfg, fake_cfg(other, pg_dsn, calm)]) as d:
            wait_for(lambda: gaps(d, name, shard) == 1, 30)
            wait_for(lambda: "stream stopped after a retention gap" in d.log.read_text(), 30)
            assert metric(d, "poller_stream_ready", stream=name) == 0
            assert metric(d, "poller_stream_ready", stream=other) == 1
            (line,) = gap_lines(d)
            assert "stopping the stream as configured (on_retention_gap: stop)" in line["event"]
            assert sorted(target_rows(PG, pg_dsn, name)) == list(range(10))
            assert d.stop() == 0


def test_ddb_trimmed_checkpoint_snapshot_resyncs_the_table(fake: FakeDynamoDBStreams, pg_dsn: str) -> None:
    """`snapshot`: the table is scanned again, so even the changes whose records
    were trimmed reach the target; the stream then goes on from the new position."""
    name, m, shard = trimmed_while_stopped(fake, pg_dsn, "gap_ddb_snapshot")
    m.remove(shard, 3)
    # The removal was made before the daemon started: the stream position the re-sync
    # records (now - margin) must be older than it, however long a loaded machine takes
    # to start the daemon (a 1 s margin lost the removal once in CI).
    cfg = fake_cfg(name, pg_dsn, fake, source={"on_retention_gap": "snapshot", "latest_margin_seconds": 30})
    with Daemon([cfg]) as d:
        until_equal(PG, pg_dsn, name, m.expected(), 60)
        assert gaps(d, name, shard) == 1
        (line,) = gap_lines(d)
        assert "re-syncing the table with a new snapshot" in line["event"]
        assert "snapshot started to re-sync the table after a retention gap" in d.log.read_text()
        assert metric(d, "poller_snapshot_items_total", stream=name) == len(m.items)
        for i in (20, 21, 4):  # and the stream after it
            m.put(shard, i)
        until_equal(PG, pg_dsn, name, m.expected(), 30)
        assert d.stop() == 0


def test_ddb_shard_gone_with_a_running_checkpoint(fake: FakeDynamoDBStreams, pg_dsn: str) -> None:
    name = make_target(PG, pg_dsn, "gap_ddb_gone")
    m = TableModel(fake)
    root = fake.add_shard()
    for i in range(5):
        m.put(root, i)
    with Daemon([fake_cfg(name, pg_dsn, fake)]) as d:
        until_equal(PG, pg_dsn, name, m.expected(), 30)
        assert d.stop() == 0
    for i in range(5, 8):
        m.put(root, i)  # never read: the shard is trimmed away while the daemon is down
    (child,) = fake.split(root, 1)
    fake.remove_shard(root)
    for i in range(8, 10):
        m.put(child, i)
    with Daemon([fake_cfg(name, pg_dsn, fake)]) as d:
        wait_for(lambda: gaps(d, name, root) == 1, 30)
        (line,) = gap_lines(d)
        assert "gone from the stream" in line["event"] and line["lost_until"] is not None
        wait_for(lambda: sorted(target_rows(PG, pg_dsn, name)) == [0, 1, 2, 3, 4, 8, 9], 30)
        assert d.stop() == 0
    with Daemon([fake_cfg(name, pg_dsn, fake)]) as d:  # reported once: its rows were dropped
        wait_for(lambda: metric(d, "poller_shards", stream=name, state="reading") == 1, 30)
        assert gap_lines(d) == []
        assert d.stop() == 0


def test_ddb_snapshot_longer_than_the_retention_is_a_gap_at_switch_over(
    fake: FakeDynamoDBStreams, pg_dsn: str
) -> None:
    """A snapshot recorded as begun 25 hours ago, its segments done: at switch-over
    the stream no longer holds its first hour."""
    name = make_target(PG, pg_dsn, "gap_ddb_switch")
    m = TableModel(fake)
    shard = fake.add_shard()
    cfg = fake_cfg(name, pg_dsn, fake, source={"snapshot": {"mode": "initial", "segments": 1}})
    began = datetime.now(UTC) - timedelta(hours=25)
    state = {"began": began.isoformat(), "segments": 1, "done": None, "resync": False}
    commit_rows(
        cfg,
        [
            Checkpoint(name, "#snapshot", json.dumps(state)),
            Checkpoint(name, "#snapshot/segment-0-of-1", "done"),
            Checkpoint(name, "#start", began.isoformat()),
        ],
    )
    with Daemon([cfg]) as d:
        wait_for(lambda: gaps(d, name, "#snapshot") == 1, 30)
        (line,) = gap_lines(d)
        assert datetime.fromisoformat(line["lost_from"]) == began
        lost_until = datetime.fromisoformat(line["lost_until"])
        assert abs((lost_until - (datetime.now(UTC) - timedelta(hours=24))).total_seconds()) < 60
        m.put(shard, 1)  # `continue`: the stream is read
        until_equal(PG, pg_dsn, name, m.expected(), 30)
        assert d.stop() == 0


def commit_rows(cfg: dict[str, Any], rows: list[Checkpoint]) -> None:
    """Write checkpoint rows as the daemon would, through the stream's own sink."""

    async def write() -> None:
        sink = build_sink(parse_stream(cfg, "test"), "poller_failures")
        await sink.open()
        try:
            await sink.commit(Transaction(stream=cfg["name"], checkpoints=rows))
        finally:
            await sink.close()

    asyncio.run(write())


# -- Kinesis -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kinesalite() -> Iterator[Kinesalite]:
    with Kinesalite() as server:
        yield server


def older(sequence_number: str, hours: float) -> str:
    """kinesalite's sequence number of the same record position, its time `hours` earlier:
    a record older than the stream's retention, which kinesalite no longer returns."""
    digits = format(int(sequence_number), "x")
    assert len(digits) == 47 and digits[0] == "2" and digits[-1] == "2", "not a kinesalite v2 sequence number"
    seq_time = int(digits[29:38], 16) - int(hours * 3600)
    return str(int(digits[:29] + format(seq_time, "09x") + digits[38:], 16))


def forged_gap(
    kinesalite: Kinesalite, pg_dsn: str, base: str, **source: Any
) -> tuple[str, dict[str, Any], list[str]]:
    """20 records, the first 10 synced; then the checkpoint moved to a record 25 hours
    old placed just before record 15: records 11..14 are what the gap loses."""
    name = f"{base}_{uuid.uuid4().hex[:6]}"
    make_table(PG, pg_dsn, name)
    kinesis = client("kinesis", kinesalite.url)
    create_stream(kinesis, name, 1)
    producer = Producer(keys=1)
    producer.put(kinesis, name, 10)
    cfg = stream_cfg(name, PG, pg_dsn, name, kinesalite.url, source=source)
    with Daemon([cfg]) as d:
        wait_for(lambda: len(db.fetch(PG, pg_dsn, f"SELECT id FROM {name}")) == 10, 30)
        assert d.stop() == 0
    put_records(kinesis, name, producer.records(10), producer.sequence)
    ids = [f"k0:{n}" for n in range(20)]
    shard, fifteenth = producer.sequence[ids[14]]
    db.execute(
        PG,
        pg_dsn,
        f"UPDATE poller_checkpoints SET sequence_number = '{older(fifteenth, 25)}' "
        f"WHERE stream = '{name}' AND shard_id = '{shard}'",
    )
    return name, cfg, ids


def test_kinesis_checkpoint_past_retention_continue(kinesalite: Kinesalite, pg_dsn: str) -> None:
    name, cfg, ids = forged_gap(kinesalite, pg_dsn, "gap_kin_continue", on_retention_gap="continue")
    shard = "shardId-000000000000"
    with Daemon([cfg]) as d:
        wait_for(lambda: gaps(d, name, shard) == 1, 30)
        (line,) = gap_lines(d)
        assert line["on_retention_gap"] == "continue" and line["retention_hours"] == 24
        assert line["lost_until"] is not None and line["lost_after_sequence"] != line["first_sequence"]
        expected = sorted(ids[:10] + ids[14:])
        wait_for(lambda: sorted(r[0] for r in db.fetch(PG, pg_dsn, f"SELECT id FROM {name}")) == expected, 30)
        assert d.stop() == 0


def test_kinesis_checkpoint_past_retention_stop(kinesalite: Kinesalite, pg_dsn: str) -> None:
    name, cfg, ids = forged_gap(kinesalite, pg_dsn, "gap_kin_stop", on_retention_gap="stop")
    with Daemon([cfg]) as d:
        assert d.wait(30) == 0  # its only stream stopped: the daemon exits by itself
    (line,) = gap_lines(d)
    assert "stopping the stream as configured" in line["event"]
    assert "stream stopped after a retention gap (on_retention_gap: stop)" in d.log.read_text()
    assert sorted(r[0] for r in db.fetch(PG, pg_dsn, f"SELECT id FROM {name}")) == sorted(ids[:10])
