"""Peer consumers of a Kinesis stream, each run in its own process so its CPU
time is its own. Each reads `--records` records from TRIM_HORIZON over all
shards and prints one JSON line: records, CPU seconds and wall seconds from
its first read to its last.

- `bare`: a plain aiobotocore `get_records` loop (default client settings,
  one task per shard, `Limit=10000`, a 0.2 s pause only on an empty read). It
  reads and lets botocore parse; it does not decode payloads.
- `async-kinesis`: the `async-kinesis` consumer from PyPI with its
  `JsonProcessor` (reads and parses each payload's JSON), defaults except
  `record_limit=10000`.

    .venv/bin/python -m bench.peers bare --endpoint URL --stream NAME --records N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def bare(endpoint: str, stream: str, records: int, limit_s: float) -> dict[str, Any]:
    from aiobotocore.session import get_session

    async with get_session().create_client("kinesis", region_name="us-east-1", endpoint_url=endpoint) as c:
        shards = [s["ShardId"] for s in (await c.list_shards(StreamName=stream))["Shards"]]
        seen = 0
        done = asyncio.Event()
        cpu0, t0 = _cpu(), time.time()

        async def read(shard: str) -> None:
            nonlocal seen
            it = (
                await c.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
            )["ShardIterator"]
            while it and not done.is_set():
                resp = await c.get_records(ShardIterator=it, Limit=10_000)
                seen += len(resp["Records"])
                if seen >= records:
                    done.set()
                it = resp.get("NextShardIterator")
                if not resp["Records"]:
                    await asyncio.sleep(0.2)

        tasks = [asyncio.create_task(read(s)) for s in shards]
        try:
            await asyncio.wait_for(done.wait(), limit_s)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return {"records": seen, "cpu_seconds": _cpu() - cpu0, "wall_seconds": time.time() - t0, "t0": t0}


async def async_kinesis(endpoint: str, stream: str, records: int, limit_s: float) -> dict[str, Any]:
    from kinesis import Consumer, JsonProcessor

    seen = 0
    cpu0, t0 = _cpu(), time.time()
    deadline = time.monotonic() + limit_s
    async with Consumer(
        stream_name=stream,
        endpoint_url=endpoint,
        region_name="us-east-1",
        iterator_type="TRIM_HORIZON",
        processor=JsonProcessor(),
        record_limit=10_000,
    ) as consumer:
        while seen < records and time.monotonic() < deadline:
            async for item in consumer:
                assert isinstance(item, dict)
                seen += 1
                if seen >= records:
                    break
    return {"records": seen, "cpu_seconds": _cpu() - cpu0, "wall_seconds": time.time() - t0, "t0": t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kind", choices=["bare", "async-kinesis"])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--timeout", type=float, default=600)
    a = p.parse_args()
    for k, v in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")):
        os.environ.setdefault(k, v)
    fn = bare if a.kind == "bare" else async_kinesis
    result = asyncio.run(fn(a.endpoint, a.stream, a.records, a.timeout))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
