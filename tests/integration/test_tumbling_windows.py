"""Tumbling windows (`sink.tumbling_window_seconds`, Lambda's
`TumblingWindowInSeconds`) as a user moving a windowed consumer sees them.

The main test runs `poller run` on a two-shard Kinesis stream of moto with a
handler that sums values per window (`tests/handlers/window_sum.py`), writes
records over three 3-second windows, SIGKILLs the daemon in the middle of the
second window and starts it again: each window of each shard gets one final
invocation, whose total counts every record that arrived in that window once.

The others run below the daemon: the `lambda` sink against the stand-in of the
Invoke API, and the window rows in a PostgreSQL / MariaDB checkpoint store.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from poller.config import StreamConfig
from poller.records import KINESIS, Checkpoint, Record
from poller.sink_api import Transaction
from poller.sinks.factory import build_sink
from poller.sinks.handler import EventSink
from tests.handlers import journal, window_sum
from tests.support import db
from tests.support.aws import client
from tests.support.daemon import Daemon, wait_for
from tests.support.fake_lambda import FakeLambda
from tests.support.servers import MotoServer
from tests.support.threaded import LoopThread

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
W = 3  # seconds: three windows take nine
EVENT_KEYS = [
    "Records",
    "window",
    "state",
    "shardId",
    "eventSourceARN",
    "isFinalInvokeForWindow",
    "isWindowTerminatedEarly",
]
HASH_KEYS = ["1", str(2**127 + 1)]  # one on each shard of a two-shard stream


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def window_stream(name: str, stream: str, endpoint: str, tmp: Path) -> dict[str, Any]:
    return {
        "name": name,
        "source": {
            "type": "kinesis",
            "stream": stream,
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "idle_poll_seconds": 0.2,
            "max_idle_poll_seconds": 0.2,
            "shard_discovery_seconds": 1,
        },
        "batch": {"size": 100, "window_seconds": 0.2},
        "retry": {"max_attempts": 3, "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2},
        "sink": {
            "type": "handler",
            "handler": "tests.handlers.window_sum:lambda_handler",
            "code_path": str(ROOT),
            "checkpoint_dsn": str(tmp / "checkpoints.sqlite"),
            "tumbling_window_seconds": W,
        },
    }


def read_back(kinesis: Any, stream: str) -> dict[str, list[dict[str, Any]]]:
    """Every record of every shard, as stored: its arrival time decides its window."""
    out: dict[str, list[dict[str, Any]]] = {}
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        it = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records: list[dict[str, Any]] = []
        while True:
            resp = kinesis.get_records(ShardIterator=it, Limit=10_000)
            records += resp["Records"]
            if not resp["Records"]:
                break
            it = resp["NextShardIterator"]
        out[shard["ShardId"]] = records
    return out


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def test_windows_on_two_shards_survive_a_sigkill(moto: MotoServer, tmp_path: Path) -> None:
    kinesis = client("kinesis", moto.url)
    stream = f"windows-{uuid.uuid4().hex[:6]}"
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
    log = tmp_path / "handler.jsonl"
    cfg = window_stream("clicks_windows", stream, moto.url, tmp_path)
    d = Daemon([cfg], env={"HANDLER_LOG": str(log)})
    value = 0
    with d:
        d.wait_ready()
        first = (int(time.time()) // W + 1) * W  # the next window's start
        killed_after = 0
        for tick in range(3 * W * 2):  # a record on each shard every half second, for three windows
            sleep_until(first + tick / 2 + 0.25)
            for key in HASH_KEYS:
                value += 1
                data = json.dumps({"value": value}).encode()
                kinesis.put_record(StreamName=stream, Data=data, PartitionKey="p", ExplicitHashKey=key)
            if tick == 2 * W + 3:  # the middle of the second window
                d.kill()
                killed_after = len(journal.read(log))
                d.start()
        wait_for(
            lambda: sum(1 for e in journal.read(log) if e["final"]) >= 6,
            60,
            message="a final invocation for each of three windows on each of two shards",
        )
        time.sleep(W)  # time for a second final of any window, which must not come
        d.wait_ready()

    stored = read_back(kinesis, stream)
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for shard, records in stored.items():
        for r in records:
            start = int(r["ApproximateArrivalTimestamp"].timestamp()) // W * W
            expected[(shard, iso(start))] += json.loads(r["Data"])["value"]
    assert len(expected) == 6 and sum(expected.values()) == value * (value + 1) // 2

    entries = journal.read(log)
    finals = [e for e in entries if e["final"]]
    totals = sorted(((e["shard"], e["window"]["start"]), e["total"]) for e in finals)
    assert totals == sorted(expected.items())
    for e in entries:
        assert e["keys"] == EVENT_KEYS
        assert (e["arn"], e["early"]) == (arn, False)
        start = datetime.fromisoformat(e["window"]["start"])
        assert (datetime.fromisoformat(e["window"]["end"]) - start).total_seconds() == W
        if e["final"]:
            assert e["records"] == []
    # The state comes back: each invocation gets what the one before it in its
    # window returned, except the first after the restart, which gets what was
    # stored with the checkpoint (what one of those before the kill returned).
    last: dict[tuple[str, str], dict[str, Any]] = {}
    returned: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(lambda: [{}])
    restarted: set[tuple[str, str]] = set()
    for i, e in enumerate(entries):
        where = (e["shard"], e["window"]["start"])
        if i >= killed_after and where not in restarted:
            restarted.add(where)
            assert e["state_in"] in returned[where]
        else:
            assert e["state_in"] == last.get(where, {})
        if not e["final"]:
            last[where] = e["state_out"]
            returned[where].append(e["state_out"])


def test_the_lambda_sink_passes_the_window_and_its_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployed-function path: each Invoke payload carries the window's
    fields after `Records`, the function's state comes back, and a final
    invocation with no records closes the window."""
    monkeypatch.setenv("HANDLER_LOG", str(tmp_path / "function.jsonl"))  # the function runs in this process
    loop = LoopThread()
    fake = FakeLambda()
    loop.run(fake.start())
    try:
        fake.add("clicks-aggregator", window_sum.lambda_handler)
        cfg = StreamConfig.model_validate(
            {
                "name": "clicks_lambda",
                "source": {"type": "kinesis", "stream": "clicks"},
                "sink": {
                    "type": "lambda",
                    "function": "clicks-aggregator",
                    "endpoint_url": fake.url,
                    "region": "us-east-1",
                    "checkpoint_dsn": str(tmp_path / "cp.sqlite"),
                    "tumbling_window_seconds": 60,
                },
            }
        )
        t0 = 1_700_000_040  # a multiple of 60
        batches = [
            [record(1, t0 + 1, 5), record(2, t0 + 2, 6)],
            [record(3, t0 + 3, 7), record(4, t0 + 61, 8)],
        ]
        asyncio.run(commit_batches(cfg, batches))
    finally:
        loop.run(fake.stop())
        loop.close()
    events = [i.event for i in fake.invocations]
    assert [list(e) for e in events] == [EVENT_KEYS] * 4
    assert [(len(e["Records"]), e["state"], e["isFinalInvokeForWindow"]) for e in events] == [
        (2, {}, False),
        (1, {"sum": 11, "count": 2}, False),
        (0, {"sum": 18, "count": 3}, True),
        (1, {}, False),
    ]
    assert events[3]["window"] == {"start": iso(t0 + 60), "end": iso(t0 + 120)}
    assert {e["shardId"] for e in events} == {"shardId-000000000000"}


def test_an_imported_windowed_mapping_runs_as_lambda_ran_it(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`poller import-esm` of a mapping with `TumblingWindowInSeconds: 2`, run
    by the daemon against the stand-in of the Invoke API: the function gets
    each window's records with its state, then one final invocation a window."""
    tag = uuid.uuid4().hex[:6]
    stream, function = f"clicks-{tag}", f"clicks-aggregator-{tag}"
    mapping = json.loads((ROOT / "tests" / "fixtures" / "esm" / "kinesis.json").read_text())
    mapping |= {
        "EventSourceArn": f"arn:aws:kinesis:us-east-1:123456789012:stream/{stream}",
        "FunctionArn": f"arn:aws:lambda:us-east-1:123456789012:function:{function}",
        "TumblingWindowInSeconds": 2,
    }
    (tmp_path / "esm.json").write_text(json.dumps(mapping))
    done = subprocess.run(
        [sys.executable, "-m", "poller", "import-esm", str(tmp_path / "esm.json")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and "TumblingWindowInSeconds" not in done.stderr, done.stderr
    assert "tumbling_window_seconds: 2" in done.stdout
    kinesis = client("kinesis", moto.url)
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    monkeypatch.setenv("HANDLER_LOG", str(tmp_path / "function.jsonl"))  # the function runs here
    loop = LoopThread()
    fake = FakeLambda()
    loop.run(fake.start())
    fake.add(function, window_sum.lambda_handler)
    d = Daemon([], env={"AWS_ENDPOINT_URL": moto.url, "AWS_ENDPOINT_URL_LAMBDA": fake.url})
    (d.dir / "imported.yaml").write_text(done.stdout + f"  checkpoint_dsn: {tmp_path / 'cp.sqlite'}\n")
    try:
        with d:
            d.wait_ready()
            first = (int(time.time()) // 2 + 1) * 2
            for i in range(6):  # three records in each of two windows
                sleep_until(first + i * 2 / 3 + 0.1)
                kinesis.put_record(
                    StreamName=stream, Data=json.dumps({"value": i + 1}).encode(), PartitionKey="p"
                )
            wait_for(
                lambda: sum(1 for e in journal.read(tmp_path / "function.jsonl") if e["final"]) >= 2,
                30,
                message="a final invocation for each window",
            )
    finally:
        loop.run(fake.stop())
        loop.close()
    (records,) = read_back(kinesis, stream).values()
    expected: dict[str, int] = defaultdict(int)
    for r in records:
        expected[iso(int(r["ApproximateArrivalTimestamp"].timestamp()) // 2 * 2)] += json.loads(r["Data"])[
            "value"
        ]
    events = [i.event for i in fake.invocations]
    assert all(list(e) == EVENT_KEYS for e in events)
    finals = [e for e in events if e["isFinalInvokeForWindow"]]
    assert sorted((e["window"]["start"], e["state"]["sum"]) for e in finals) == sorted(expected.items())


def record(seq: int, at: float, value: int) -> Record:
    data = json.dumps({"value": value}).encode()
    return Record(
        source=KINESIS,
        stream="clicks",
        shard_id="shardId-000000000000",
        sequence_number=str(seq),
        data=data,
        raw_data=data,
        partition_key="p",
        arrival_time=at,
        raw={
            "SequenceNumber": str(seq),
            "Data": data,
            "PartitionKey": "p",
            "ApproximateArrivalTimestamp": at,
        },
        event_source_arn="arn:aws:kinesis:us-east-1:123456789012:stream/clicks",
        region="us-east-1",
    )


async def commit_batches(cfg: StreamConfig, batches: list[list[Record]]) -> None:
    """Each batch as a shard's lane commits it: with the checkpoint of its last record."""
    sink = build_sink(cfg, None)
    assert isinstance(sink, EventSink)
    await sink.open()
    try:
        for batch in batches:
            last = batch[-1]
            checkpoint = Checkpoint(cfg.name, last.shard_id, last.sequence_number)
            await sink.commit(Transaction(stream=cfg.name, records=batch, checkpoints=[checkpoint]))
    finally:
        await sink.close()


def test_window_rows_live_in_a_database_checkpoint_store(
    database: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store creates `poller_windows` in PostgreSQL / MariaDB, and a second
    process takes the window on with the state stored there."""
    kind, dsn = database
    name = f"windows_{kind}"
    db.drop_bookkeeping(kind, dsn, name)
    try:
        db.execute(kind, dsn, f"DELETE FROM poller_windows WHERE stream = '{name}'")
    except Exception:
        pass  # not created yet
    log = tmp_path / "handler.jsonl"
    monkeypatch.setenv("HANDLER_LOG", str(log))
    cfg = StreamConfig.model_validate(
        {
            "name": name,
            "source": {"type": "kinesis", "stream": "clicks"},
            "sink": {
                "type": "handler",
                "handler": "tests.handlers.window_sum:lambda_handler",
                "code_path": str(ROOT),
                "checkpoint_dsn": dsn,
                "tumbling_window_seconds": 60,
            },
        }
    )
    t0 = 1_700_000_040
    asyncio.run(commit_batches(cfg, [[record(1, t0 + 1, 5), record(2, t0 + 2, 6)]]))
    rows = db.fetch(
        kind,
        dsn,
        "SELECT window_start, state, through_sequence FROM poller_windows WHERE stream = %s",
        (name,),
    )
    assert [(r[0], json.loads(r[1]), r[2]) for r in rows] == [(t0, {"sum": 11, "count": 2}, "2")]
    asyncio.run(commit_batches(cfg, [[record(2, t0 + 2, 6), record(3, t0 + 61, 7)]]))
    entries = journal.read(log)
    assert [(e["records"], e["final"], e["state_in"]) for e in entries[1:]] == [
        ([], True, {"sum": 11, "count": 2}),  # record 2 is in the stored state: not handed over again
        (["3"], False, {}),
    ]
