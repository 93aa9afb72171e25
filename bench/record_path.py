"""Where a Kinesis record's client CPU goes, stage by stage, in one process
and without I/O: a GetRecords response body of `--records` records (~200 B
JSON orders, as kinesalite returns them) goes through

1. parsing the response: botocore's generic JSON parser (what a plain client
   pays) and the compiled parser the poller hooks in (`poller.sources.fast_parse`);
2. `KinesisShardApi.to_record` (raw record → `Record`);
3. `Preparer.stream_units`: decode JSON, filter, age check, map through
   `columns` (`Mapper`) and coerce to the PostgreSQL column types (`SqlSink.coerce`);
4. the transaction's row list (`last_op_per_key`) and the binary COPY
   encoding asyncpg does for those rows.

Each stage is timed separately (best of `--repeat`), in µs per record; with
`--profile` a cProfile of the whole path is printed.

    .venv/bin/python -m bench.record_path [--records 10000] [--repeat 5] [--profile]
"""

from __future__ import annotations

import base64
import cProfile
import json
import pstats
import time
from typing import Any

import botocore.session
from botocore.parsers import JSONParser

from bench import common
from bench.payloads import COLUMNS, KEY, order
from poller.config import parse_stream
from poller.processing.mapping import Mapper, last_op_per_key
from poller.processing.pipeline import Preparer
from poller.sinks.base import SqlSink
from poller.sinks.coercion import converter
from poller.sources.fast_parse import compile_shape
from poller.sources.kinesis import KinesisShardApi


class _OfflineSink(SqlSink):
    """`SqlSink.coerce` with PostgreSQL's converters for the bench table, no database."""

    kind = "offline"

    def __init__(self) -> None:
        super().__init__(Mapper(COLUMNS, KEY), "bench")
        kinds = {
            "order_id": "int",
            "customer": "text",
            "status": "text",
            "amount": "decimal",
            "created_at": "timestamptz",
            "items": "int",
            "note": "text",
        }
        self.converters = [converter(kinds[c]) for c in self.columns]

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    def transaction(self) -> Any: ...
    async def existing_ids(self, conn: Any, stream: str, ids: list[str]) -> set[str]:
        return set()

    async def insert_ids(self, conn: Any, stream: str, ids: list[str]) -> None: ...
    async def upsert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None: ...
    async def delete(self, conn: Any, keys: list[tuple[Any, ...]]) -> None: ...
    async def insert_failures(self, conn: Any, failures: list[Any]) -> None: ...
    async def save_checkpoints(self, conn: Any, checkpoints: list[Any]) -> None: ...
    async def lease_row(self, conn: Any, stream: str, shard_id: str) -> tuple[str | None, int] | None:
        return None

    async def load_checkpoints(self, stream: str) -> dict[str, Any]:
        return {}

    def classify(self, exc: BaseException) -> Exception:
        return Exception(str(exc))

    def is_integrity_error(self, exc: BaseException) -> bool:
        return False


def response_body(n: int) -> bytes:
    now = time.time()
    recs = [
        {
            "SequenceNumber": str(49_650_000_000_000_000_000_000_000_000_000_000_000_000_000 + i),
            "ApproximateArrivalTimestamp": round(now + i // 500 / 1000, 3),  # one per put of 500
            "Data": base64.b64encode(json.dumps(order(i), separators=(",", ":")).encode()).decode(),
            "PartitionKey": f"customer-{i % 50_000:05d}",
        }
        for i in range(n)
    ]
    return json.dumps({"Records": recs, "NextShardIterator": "AAAA" * 50, "MillisBehindLatest": 0}).encode()


def best(fn: Any, repeat: int) -> tuple[float, Any]:
    out, times = None, []
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        times.append(time.process_time() - t)
    return min(times), out


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.records, args.repeat = 500, 1
    from poller.runtime import tune_gc

    tune_gc()  # as `poller run` does
    n = args.records
    body = response_body(n)
    shape = (
        botocore.session.get_session().get_service_model("kinesis").operation_model("GetRecords").output_shape
    )
    generic = JSONParser()
    compiled = compile_shape(shape)
    cfg = parse_stream(
        {
            "name": "bench",
            "source": {"type": "kinesis", "stream": "s"},
            "sink": {
                "type": "postgres",
                "dsn": "postgresql://x/y",
                "table": "t",
                "key": KEY,
                "columns": COLUMNS,
            },
        },
        "bench",
    )
    sink = _OfflineSink()
    preparer = Preparer(cfg, sink)
    api = KinesisShardApi(None, "s", "bench", "us-east-1", "arn:aws:kinesis:us-east-1:1:stream/s")

    stages: dict[str, float] = {}
    t, parsed_generic = best(
        lambda: generic.parse({"body": body, "headers": {}, "status_code": 200}, shape), args.repeat
    )
    stages["parse: botocore generic parser"] = t
    t, parsed = best(lambda: compiled(json.loads(body)), args.repeat)
    stages["parse: compiled parser (poller)"] = t
    assert parsed["Records"] == parsed_generic["Records"]
    raws = parsed["Records"]
    t, _records = best(lambda: [api.to_record(r, "shardId-000000000000") for r in raws], args.repeat)
    stages["to_record"] = t

    def units() -> Any:
        fresh = [api.to_record(r, "shardId-000000000000") for r in raws]
        return preparer.stream_units(fresh)

    t_all, us = best(units, args.repeat)
    stages["decode + map + coerce (stream_units)"] = t_all - stages["to_record"]
    ops = [op for u in us for op in u.ops]
    t, _final = best(lambda: [op.values for op in last_op_per_key(ops) if op.values is not None], args.repeat)
    stages["transaction rows (last_op_per_key)"] = t
    total = sum(v for k, v in stages.items() if "botocore" not in k)
    print(f"{n:,} records; µs per record (best of {args.repeat}):")
    for k, v in stages.items():
        print(f"  {k:42s} {v / n * 1e6:7.2f}")
    print(f"  {'poller path, without I/O':42s} {total / n * 1e6:7.2f}")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        fresh = [api.to_record(r, "shardId-000000000000") for r in compiled(json.loads(body))["Records"]]
        preparer.stream_units(fresh)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
