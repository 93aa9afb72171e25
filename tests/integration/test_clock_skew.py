"""A host clock off AWS's: a fault proxy in front of moto stamps every response's
`Date`, and the records it returns, ten minutes away from this host's clock, as
an AWS whose clock differs would. A real `poller run` must show the skew as a
metric (within the header's one-second resolution plus the round trip it
reports), log an error naming both times and what the skew endangers, store its
start position (the `#start` row; a DynamoDB snapshot's start) on AWS's clock,
not this host's, and judge a record's age on AWS's clock too.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from poller.aws import aws_client
from poller.aws_clock import AwsClock
from tests.integration.test_dynamodb import (  # noqa: F401  (_drop_targets: autouse clean-up)
    _drop_targets,
    make_source,
    make_target,
    put_items,
)
from tests.integration.test_dynamodb import item as ddb_item
from tests.integration.test_kinesis import PG, create_stream, make_table
from tests.integration.test_kinesis import stream_cfg as kinesis_cfg
from tests.integration.test_snapshot import snapshot_cfg, snapshot_done
from tests.integration.test_sqs_to_database import body, count
from tests.integration.test_sqs_to_database import make_table as make_orders
from tests.integration.test_sqs_to_database import stream as sqs_cfg
from tests.support import db
from tests.support.aws import client, send_all
from tests.support.daemon import Daemon, metric, wait_for
from tests.support.fault_proxy import FaultProxy
from tests.support.servers import MotoServer
from tests.support.threaded import LoopThread

pytestmark = pytest.mark.integration

OFFSET = 600.0  # ten minutes: far beyond every margin, and far from any scheduling noise
# The most a measurement the daemon keeps can be off: the header's half second plus
# half of the longest round trip it uses (5 s).
UNCERTAINTY = 3.0


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[tuple[LoopThread, FaultProxy, str]]:
    loop = LoopThread()
    p = FaultProxy(moto.url)
    url = loop.run(p.start())
    yield loop, p, url
    loop.run(p.stop())
    loop.close()


def stored_moment(dsn: str, stream: str, row: str) -> float | None:
    """The time a checkpoint row holds: `#start`'s ISO time, `#snapshot`'s `began`."""
    text = db.scalar(
        PG,
        dsn,
        "SELECT sequence_number FROM poller_checkpoints WHERE stream = %s AND shard_id = %s",
        (stream, row),
    )
    if not text:
        return None
    value = json.loads(text)["began"] if row == "#snapshot" else text
    return datetime.fromisoformat(value).timestamp()


def skew_errors(d: Daemon) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in d.log.read_text().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("level") == "error" and "off AWS's" in x.get("event", "")]


def assert_skew_reported(d: Daemon, stream: str, offset: float, danger: str) -> None:
    """The gauge and the error line agree with the proxy's offset, within the
    uncertainty the line gives."""
    errors = wait_for(lambda: skew_errors(d), 60, message="the clock-skew error logged")
    line = errors[0]
    within = float(line["within_seconds"])
    # The header is truncated to the second and stamped somewhere within the call:
    # the daemon's own bound, which a loaded machine widens but never breaks.
    assert 0.5 <= within <= UNCERTAINTY, line
    assert abs(float(line["skew_seconds"]) - offset) <= within + 0.01, line
    host = datetime.fromisoformat(line["host_time"]).timestamp()
    aws = datetime.fromisoformat(line["aws_time"]).timestamp()
    assert abs(aws - host - offset) <= within + 0.01, line
    assert any(danger in e for e in line["endangers"]), line
    assert line["stream"] == stream
    gauge = metric(d, "poller_clock_skew_seconds", stream=stream)
    assert abs(gauge - offset) <= within + 0.01, gauge


def test_a_latest_start_follows_aws_clock_and_the_skew_is_reported(
    proxy: tuple[LoopThread, FaultProxy, str], moto: MotoServer, pg_dsn: str
) -> None:
    """AWS ten minutes behind this host: a LATEST start on the host's clock would
    lie nine minutes in AWS's future, and a restart would skip what came between."""
    loop, p, url = proxy
    loop.call(p.set_clock_offset, -OFFSET)
    table = "kin_clock_skew"
    make_table(PG, pg_dsn, table)
    kinesis = client("kinesis", moto.url)
    stream = f"{table}-{uuid.uuid4().hex[:6]}"
    create_stream(kinesis, stream, 1)
    cfg = kinesis_cfg(table, PG, pg_dsn, stream, url, source={"starting_position": "LATEST"})
    before = time.time()
    with Daemon([cfg]) as d:
        since = wait_for(lambda: stored_moment(pg_dsn, table, "#start"), 60, message="the #start row")
        after = time.time()
        # AWS's time when it was stored, less the margin: between the daemon's start
        # and now on AWS's clock, give or take what the measurement cannot know.
        low, high = before - OFFSET - UNCERTAINTY, after - OFFSET + UNCERTAINTY
        assert low <= since + 60 <= high, f"#start {since + 60 - before:+.1f} s from the host's clock"
        assert_skew_reported(d, table, -OFFSET, "latest_margin_seconds=60")
        assert d.stop() == 0


def test_a_snapshot_starts_on_aws_clock(
    proxy: tuple[LoopThread, FaultProxy, str], moto: MotoServer, pg_dsn: str
) -> None:
    """AWS ten minutes ahead: the snapshot's start and the stream's `#start` are AWS's time."""
    loop, p, url = proxy
    loop.call(p.set_clock_offset, OFFSET)
    ddb = client("dynamodb", moto.url)
    name = make_target(PG, pg_dsn, "snap_clock")
    make_source(ddb, name)
    put_items(ddb, name, [ddb_item(i, 1) for i in range(20)])
    cfg = snapshot_cfg(name, PG, pg_dsn, url)  # latest_margin_seconds: 1
    before = time.time()
    with Daemon([cfg]) as d:
        wait_for(lambda: snapshot_done(PG, pg_dsn, name), 60, message="the snapshot done")
        after = time.time()
        began = stored_moment(pg_dsn, name, "#snapshot")
        since = stored_moment(pg_dsn, name, "#start")
        assert began is not None and since == began
        low, high = before + OFFSET - UNCERTAINTY, after + OFFSET + UNCERTAINTY
        assert low <= began + 1 <= high, (
            f"the snapshot began {began + 1 - before:+.1f} s from the host's clock"
        )
        assert_skew_reported(d, name, OFFSET, "latest_margin_seconds=1")
        assert d.stop() == 0


def test_a_record_s_age_is_judged_on_aws_clock(
    proxy: tuple[LoopThread, FaultProxy, str], moto: MotoServer, pg_dsn: str
) -> None:
    """AWS ten minutes behind this host, messages sent just now with a 5-minute
    age limit: on this host's clock every one would look ten minutes old and be
    dropped; on AWS's they are fresh and written."""
    loop, p, url = proxy
    loop.call(p.set_clock_offset, -OFFSET)
    table = "sqs_clock_skew"
    make_orders(PG, pg_dsn, table)
    sqs = client("sqs", moto.url)
    queue = sqs.create_queue(QueueName=f"{table}-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    cfg = sqs_cfg(table, PG, pg_dsn, queue, url, retry={"max_record_age_seconds": 300})
    send_all(sqs, queue, [body(i) for i in range(5)])
    with Daemon([cfg]) as d:
        wait_for(lambda: count(PG, pg_dsn, table) == 5, 60, message="5 rows, none dropped as too old")
        assert metric(d, "poller_records_total", stream=table, outcome="failed") == 0
        assert_skew_reported(d, table, -OFFSET, "retry.max_record_age_seconds=300")
        assert d.stop() == 0


async def test_the_skew_is_measured_again_once_due(moto: MotoServer) -> None:
    """A source's own client, through the proxy: the first call measures, the next
    ones do not until the period has passed; then the new skew replaces the old.
    (The period is half a second here, an hour in the daemon.)"""
    p = FaultProxy(moto.url)
    url = await p.start()
    try:
        p.set_clock_offset(-OFFSET)
        clock = AwsClock("clock_again", every=0.5)
        async with aws_client("sqs", "us-east-1", url) as sqs:
            clock.watch(sqs)
            await sqs.list_queues()
            first = clock.last
            assert first is not None and abs(first.seconds + OFFSET) <= first.within
            p.set_clock_offset(OFFSET / 2)
            await sqs.list_queues()
            assert clock.last is first, "measured again before it was due"
            await asyncio.sleep(0.6)
            await sqs.list_queues()
            again = clock.last
            assert again is not first and again is not None
            assert abs(again.seconds - OFFSET / 2) <= again.within
            assert abs(clock.now() - (time.time() + OFFSET / 2)) <= again.within + 1
    finally:
        await p.stop()
