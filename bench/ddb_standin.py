"""A fast DynamoDB stand-in for the snapshot benchmark: one table of N orders,
DescribeTable and Scan (parallel segments, Limit, ExclusiveStartKey, the 1 MB
page bound, ConsumedCapacity at half a unit per 4 KB read).

moto scans ~3,000 items a second and re-reads the whole table for every page;
this serves each page from pre-encoded items, so the scanners, not the
emulator, are what the benchmark measures. It runs in its own process
(`python -m bench.ddb_standin --port P --items N`) so its CPU is not counted
as theirs. Item i belongs to segment i mod TotalSegments. Signatures are not
checked.

Benchmark control, outside the DynamoDB protocol:
- Scans wait until `POST /_bench/start`, so a benchmark can read a
  contender's CPU time once it is ready and waiting;
- `GET /_bench/stats` — counters as JSON (`waiting`: Scans held back;
  `first_scan_at`: wall-clock time the first Scan was answered);
- `POST /_bench/reset` — counters to zero, Scans held back again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from typing import Any, cast

from bench.payloads import order
from bench.sqs_standin import Http as SqsHttp

TABLE = "bench-table"
REGION = "us-east-1"
TABLE_ARN = f"arn:aws:dynamodb:{REGION}:123456789012:table/{TABLE}"
_PAGE_BYTES = 1024 * 1024


def typed_item(i: int) -> dict[str, Any]:
    """`order(i)` in DynamoDB's typed form: numbers as N, text as S."""
    out: dict[str, Any] = {}
    for name, value in order(i).items():
        out[name] = {"N": str(value)} if isinstance(value, int | float) else {"S": value}
    return out


class Table:
    def __init__(self, count: int):
        self.items = [json.dumps(typed_item(i), separators=(",", ":")) for i in range(count)]
        self.started = asyncio.Event()
        self.stats: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        self.started.clear()
        self.stats = {
            "items": len(self.items),
            "scans": 0,
            "items_served": 0,
            "waiting": 0,
            "first_scan_at": None,
            "last_scan_at": None,
        }

    def describe(self, req: dict[str, Any]) -> dict[str, Any]:
        return {
            "Table": {
                "TableName": TABLE,
                "TableArn": TABLE_ARN,
                "TableStatus": "ACTIVE",
                "ItemCount": len(self.items),
                "KeySchema": [{"AttributeName": "order_id", "KeyType": "HASH"}],
                "AttributeDefinitions": [{"AttributeName": "order_id", "AttributeType": "N"}],
            }
        }

    async def scan(self, req: dict[str, Any]) -> str:
        if not self.started.is_set():
            self.stats["waiting"] += 1
            try:
                await self.started.wait()
            finally:
                self.stats["waiting"] -= 1
        total = int(req.get("TotalSegments", 1))
        segment = int(req.get("Segment", 0))
        limit = int(req.get("Limit", len(self.items)))
        start = req.get("ExclusiveStartKey")
        i = int(start["order_id"]["N"]) + total if start else segment
        page: list[str] = []
        size = 0
        count = len(self.items)
        while i < count and len(page) < limit and size + len(self.items[i]) <= _PAGE_BYTES:
            page.append(self.items[i])
            size += len(self.items[i])
            i += total
        units = 0.5 * max(1, math.ceil(size / 4096))
        if req.get("ConsistentRead"):
            units *= 2
        parts = [f'{{"Items":[{",".join(page)}],"Count":{len(page)},"ScannedCount":{len(page)}']
        if i < count and page:
            parts.append(f',"LastEvaluatedKey":{{"order_id":{{"N":"{i - total}"}}}}')
        if req.get("ReturnConsumedCapacity") in ("TOTAL", "INDEXES"):
            parts.append(f',"ConsumedCapacity":{{"TableName":"{TABLE}","CapacityUnits":{units}}}')
        parts.append("}")
        now = time.time()
        stats = self.stats
        stats["scans"] += 1
        stats["items_served"] += len(page)
        stats["first_scan_at"] = stats["first_scan_at"] or now
        stats["last_scan_at"] = now
        return "".join(parts)


class Http(SqsHttp):
    """sqs_standin's HTTP/1.1 protocol, answering the DynamoDB calls instead."""

    def __init__(self, table: Table):
        super().__init__(cast(Any, None))
        self.table = table

    async def dispatch(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        t = self.table
        if path.startswith("/_bench/"):
            if path == "/_bench/start":
                t.started.set()
            elif path == "/_bench/reset":
                t.reset()
            return 200, json.dumps({**t.stats, "monotonic": time.monotonic()}).encode()
        op = headers.get("x-amz-target", "").rpartition(".")[2]
        req = json.loads(body) if body else {}
        if req.get("TableName") not in (TABLE, TABLE_ARN):
            return 400, json.dumps(
                {
                    "__type": "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException",
                    "message": "no table",
                }
            ).encode()
        if op == "Scan":
            return 200, (await t.scan(req)).encode()
        if op == "DescribeTable":
            return 200, json.dumps(t.describe(req)).encode()
        return 400, json.dumps(
            {"__type": "com.amazonaws.dynamodb.v20120810#UnknownOperationException", "message": op}
        ).encode()


async def serve(port: int, items: int) -> None:
    table = Table(items)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Http(table), "127.0.0.1", port)
    print(f"dynamodb stand-in listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--items", type=int, default=200_000)
    args = p.parse_args()
    try:
        asyncio.run(serve(args.port, args.items))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
