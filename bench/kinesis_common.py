"""What the Kinesis benchmarks share: kinesalite, filling a stream, the
daemon's stream file, and waiting for its checkpoints to reach the end."""

from __future__ import annotations

import concurrent.futures
import json
import time
from typing import Any

from bench import common
from bench.payloads import COLUMNS, KEY, order
from tests.support import db
from tests.support.aws import client
from tests.support.daemon import with_overrides
from tests.support.servers import Kinesalite


def start_kinesalite(shard_limit: int = 100) -> Kinesalite:
    return Kinesalite(shard_limit=shard_limit).start()


def create_stream(url: str, name: str, shards: int) -> None:
    k = client("kinesis", url)
    k.create_stream(StreamName=name, ShardCount=shards)
    deadline = time.monotonic() + 60
    while k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise RuntimeError(f"stream {name} not ACTIVE after 60 s")
        time.sleep(0.05)


def payload(i: int, **extra: Any) -> bytes:
    doc = order(i)
    doc.update(extra)
    return json.dumps(doc, separators=(",", ":")).encode()


def put_range(url: str, name: str, start: int, stop: int, chunk: int = 500) -> dict[str, str]:
    """Put records start..stop-1; returns the last sequence number seen per shard."""
    k = client("kinesis", url)
    last: dict[str, str] = {}
    for lo in range(start, stop, chunk):
        entries = [
            {"Data": payload(i), "PartitionKey": f"customer-{i % 50_000:05d}"}
            for i in range(lo, min(stop, lo + chunk))
        ]
        while entries:
            resp = k.put_records(StreamName=name, Records=entries)
            retry = []
            for e, r in zip(entries, resp["Records"], strict=True):
                if "ErrorCode" in r:
                    retry.append(e)
                elif int(r["SequenceNumber"]) > int(last.get(r["ShardId"], "0")):
                    last[r["ShardId"]] = r["SequenceNumber"]
            entries = retry
    return last


def fill(url: str, name: str, count: int, start: int = 0, threads: int = 4) -> dict[str, str]:
    """Put `count` records with a few threads; the last sequence number per shard."""
    step = max(1, -(-count // threads))
    last: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        parts = [
            pool.submit(put_range, url, name, lo, min(start + count, lo + step))
            for lo in range(start, start + count, step)
        ]
        for f in parts:
            for shard, seq in f.result().items():
                if int(seq) > int(last.get(shard, "0")):
                    last[shard] = seq
    return last


def stream_config(name: str, stream: str, endpoint: str, table: str, **over: Any) -> dict[str, Any]:
    """A Kinesis → PostgreSQL stream file; `over` merges into its sections."""
    cfg: dict[str, Any] = {
        "name": name,
        "source": {
            "type": "kinesis",
            "stream": stream,
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "starting_position": "TRIM_HORIZON",
        },
        "batch": {"size": 100, "window_seconds": 0.5},
        "decode": "json",
        "sink": {"type": "postgres", "dsn": common.PG_DSN, "table": table, "key": KEY, "columns": COLUMNS},
    }
    return with_overrides(cfg, over)


def checkpoints(stream_name: str) -> dict[str, tuple[str, float]]:
    """shard → (sequence number, epoch of the commit that wrote it)."""
    rows = db.fetch(
        "postgres",
        common.PG_DSN,
        "SELECT shard_id, sequence_number, extract(epoch from updated_at) "
        "FROM poller_checkpoints WHERE stream = %s",
        (stream_name,),
    )
    return {r[0]: (r[1], float(r[2])) for r in rows}


def wait_checkpointed(
    stream_name: str, last: dict[str, str], timeout: float, alive: Any = None, interval: float = 0.05
) -> float:
    """Wait until every shard's checkpoint has reached its last sequence number;
    returns the epoch time of the last of those commits."""
    deadline = time.monotonic() + timeout
    while True:
        cps = checkpoints(stream_name)
        if all(s in cps and int(cps[s][0]) >= int(seq) for s, seq in last.items()):
            return max(cps[s][1] for s in last)
        if time.monotonic() > deadline:
            done = {s: cps.get(s, ("-", 0))[0] for s in last}
            raise AssertionError(f"not all checkpointed after {timeout}s: {done} of {last}")
        if alive is not None:
            alive()
        time.sleep(interval)


def reset_stream_state(stream_name: str, table_sql: list[str]) -> None:
    db.execute("postgres", common.PG_DSN, *table_sql)
    db.drop_bookkeeping("postgres", common.PG_DSN, stream_name)
