"""Figure 4: latency from put to row committed, at a steady rate.

A producer puts `--rate` records per second (in puts of `--rate / 20` every
50 ms) for `--seconds` seconds into a kinesalite stream of `--shards` shards
that `poller run` is reading into PostgreSQL. Each payload carries its put
time (`sent_at`, epoch seconds taken just before the put call); the row's
`committed_at` is `clock_timestamp()` when the sink's INSERT wrote it (the
commit follows within milliseconds). Latency = committed_at - sent_at, same
host clock. Figures: p50 and p99 per run, medians over runs.

The daemon runs with the settings a latency-sensitive stream would use:
`idle_poll_seconds: 0.2` (Kinesis' 5 reads per second per shard; the default,
1 s, is Lambda's polling interval) and `batch.window_seconds: 0` (commit what
has arrived). kinesalite always answers `MillisBehindLatest: 0`, so every
read is followed by the idle wait.

    .venv/bin/python -m bench.latency [--rate 1000] [--seconds 60] [--runs 3]
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.kinesis_common import create_stream, payload, reset_stream_state, start_kinesalite, stream_config
from bench.payloads import COLUMNS, pg_table_sql
from tests.support import db
from tests.support.aws import client
from tests.support.daemon import wait_for
from tests.support.servers import free_port

TARGET_P50 = 0.25
TARGET_P99 = 1.0


def produce(url: str, stream: str, rate: int, seconds: float, first: int, stop: threading.Event) -> int:
    """Put `rate` records/s for `seconds`; returns how many were put."""
    k = client("kinesis", url)
    per_put = max(1, rate // 20)
    interval = per_put / rate
    n = 0
    start = time.monotonic()
    tick = 0
    while not stop.is_set() and time.monotonic() - start < seconds:
        entries = []
        sent = time.time()
        for _ in range(per_put):
            i = first + n
            entries.append({"Data": payload(i, sent_at=sent), "PartitionKey": f"customer-{i % 50_000:05d}"})
            n += 1
        while entries:
            resp = k.put_records(StreamName=stream, Records=entries)
            entries = [e for e, r in zip(entries, resp["Records"], strict=True) if "ErrorCode" in r]
        tick += 1
        delay = start + tick * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return n


def one_run(url: str, stream: str, args: Any, first: int, tree: Path | None = None) -> dict[str, Any]:
    name = f"bench_lat_{free_port()}"
    table_sql = [
        *pg_table_sql(name),
        f"ALTER TABLE {name} ADD COLUMN sent_at double precision, "
        "ADD COLUMN committed_at timestamptz DEFAULT clock_timestamp()",
    ]
    reset_stream_state(name, table_sql)
    cfg = stream_config(
        name,
        stream,
        url,
        name,
        source={"starting_position": "LATEST", "idle_poll_seconds": args.idle_poll},
        batch={"size": 1000, "window_seconds": args.window},
        sink={"columns": {**COLUMNS, "sent_at": "data.sent_at"}},
    )
    try:
        with common.daemon([cfg], tree) as d:
            d.wait_ready(60)
            # LATEST is fixed when a shard's iterator opens: produce only once every
            # shard has been read, or the first records would be skipped.
            calls = 'poller_get_records_calls_total{shard="'

            def shards_read() -> int:
                return sum(1 for k, v in d.metrics().items() if k.startswith(calls) and v >= 1)

            wait_for(lambda: shards_read() >= args.shards, 60, message="every shard read at LATEST")
            assert d.proc is not None
            cpu0 = common.cpu_seconds(d.proc.pid)
            stop = threading.Event()
            put = produce(url, stream, args.rate, args.seconds, first, stop)
            deadline = time.monotonic() + 60
            while int(db.scalar("postgres", common.PG_DSN, f"SELECT count(*) FROM {name}")) < put:
                d.check_alive()
                if time.monotonic() > deadline:
                    raise AssertionError(f"rows missing after 60 s of draining:\n{d.tail()}")
                time.sleep(0.2)
            cpu = common.cpu_seconds(d.proc.pid) - cpu0
        rows = db.fetch(
            "postgres",
            common.PG_DSN,
            f"SELECT extract(epoch from committed_at) - sent_at FROM {name} ORDER BY sent_at",
        )
    finally:
        db.execute("postgres", common.PG_DSN, f"DROP TABLE IF EXISTS {name}")
        db.drop_bookkeeping("postgres", common.PG_DSN, name)
    lat = sorted(float(r[0]) for r in rows)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    return {
        "records": len(lat),
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "max": lat[-1],
        "mean": statistics.fmean(lat),
        "daemon_cpu_percent": 100 * cpu / (args.seconds + 0.0),
    }


def render(r: dict[str, Any]) -> str:
    p, s = r["params"], r["summary"]
    return "\n".join(
        [
            "## Figure 4 — latency from put to row committed",
            "",
            f"Recorded {r['recorded_at']} with `{r['command']}`.",
            f"kinesalite, {p['shards']} shards, a steady {p['rate']:,} records/s for {p['seconds']} s, "
            f"`poller run` → PostgreSQL with `idle_poll_seconds: {p['idle_poll']}`, "
            f"`batch.window_seconds: {p['window']}`; {p['runs']} runs, medians.",
            "",
            "| figure | median | runs | target |",
            "| --- | --- | --- | --- |",
            f"| p50 latency | {s['p50']['median'] * 1000:.0f} ms | "
            f"{', '.join(f'{x * 1000:.0f}' for x in s['p50']['runs'])} ms "
            f"| ≤ {TARGET_P50 * 1000:.0f} ms {common.verdict(s['p50']['median'], TARGET_P50, False)} |",
            f"| p99 latency | {s['p99']['median'] * 1000:.0f} ms | "
            f"{', '.join(f'{x * 1000:.0f}' for x in s['p99']['runs'])} ms "
            f"| ≤ {TARGET_P99 * 1000:.0f} ms {common.verdict(s['p99']['median'], TARGET_P99, False)} |",
            f"| p90 / max latency | {s['p90']['median'] * 1000:.0f} / "
            f"{s['max']['median'] * 1000:.0f} ms | | |",
            f"| daemon CPU while producing | {s['daemon_cpu_percent']['median']:.1f} % of a core | | |",
            "",
            f"Machine: {common.machine_line(r['machine'])}.",
        ]
    )


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--idle-poll", type=float, default=0.2)
    p.add_argument("--window", type=float, default=0.0)
    p.add_argument("--compare", type=Path, default=None, help="run poller from this source tree instead")
    args = p.parse_args()
    if args.smoke:
        args.seconds, args.runs, args.rate = 2, 1, 200
    common.aws_test_env()
    folder = common.out_dir(args)
    import asyncio

    m = common.machine()
    m["databases"] = asyncio.run(common.database_versions())
    runs = []
    kl = start_kinesalite()
    try:
        stream = "bench-latency"
        create_stream(kl.url, stream, args.shards)
        for i in range(args.runs):
            run = one_run(kl.url, stream, args, first=i * 10_000_000, tree=args.compare)
            runs.append(run)
            print(
                f"run {i + 1}: p50 {run['p50'] * 1000:.0f} ms, p90 {run['p90'] * 1000:.0f} ms, "
                f"p99 {run['p99'] * 1000:.0f} ms, max {run['max'] * 1000:.0f} ms over {run['records']:,} "
                f"records; daemon {run['daemon_cpu_percent']:.1f} % CPU",
                flush=True,
            )
    finally:
        kl.stop()
    keys = ["p50", "p90", "p99", "max", "mean", "daemon_cpu_percent"]
    result = {
        "params": {
            "rate": args.rate,
            "seconds": args.seconds,
            "shards": args.shards,
            "idle_poll": args.idle_poll,
            "window": args.window,
            "runs": args.runs,
            "smoke": args.smoke,
        },
        "machine": m,
        "summary": {k: common.summary([r[k] for r in runs]) for k in keys},
        "runs": runs,
    }
    path = common.record("latency", result, render, folder)
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
