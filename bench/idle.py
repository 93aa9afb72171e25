"""Figure 6: CPU of an idle daemon holding many open shards.

`poller run` reads an empty kinesalite stream of `--shards` open shards with
the default stream settings (each caught-up shard is read once per
`idle_poll_seconds`, 1 s by default, as Lambda polls). Once every shard
worker is running, the daemon's process CPU is read over `--seconds` seconds:
the figure is that CPU time as a percentage of one core.

    .venv/bin/python -m bench.idle [--shards 100] [--seconds 60] [--runs 3]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import common
from bench.kinesis_common import create_stream, reset_stream_state, start_kinesalite, stream_config
from bench.payloads import pg_table_sql
from tests.support import db
from tests.support.servers import free_port

TARGET_PERCENT = 5.0


def get_records_calls(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("poller_get_records_calls_total{") and name in k)


def one_run(url: str, stream: str, args: Any, tree: Path | None = None) -> dict[str, Any]:
    name = f"bench_idle_{free_port()}"
    reset_stream_state(name, pg_table_sql(name))
    cfg = stream_config(name, stream, url, name)
    if args.idle_poll is not None:
        cfg["source"]["idle_poll_seconds"] = args.idle_poll
    try:
        with common.daemon([cfg], tree) as d:
            d.wait_ready(60)
            time.sleep(args.settle)  # every shard worker started and its iterator open
            assert d.proc is not None
            pid = d.proc.pid
            calls0 = get_records_calls(d.metrics(), name)
            cpu0, t0 = common.cpu_seconds(pid), time.monotonic()
            time.sleep(args.seconds)
            cpu, wall = common.cpu_seconds(pid) - cpu0, time.monotonic() - t0
            calls = get_records_calls(d.metrics(), name) - calls0
            rss = common.rss_bytes(pid)
    finally:
        db.execute("postgres", common.PG_DSN, f"DROP TABLE IF EXISTS {name}")
        db.drop_bookkeeping("postgres", common.PG_DSN, name)
    return {
        "cpu_percent": 100 * cpu / wall,
        "get_records_per_second": calls / wall,
        "cpu_us_per_get_records": cpu / calls * 1e6 if calls else float("nan"),
        "rss_mb": rss / 2**20,
    }


def render(r: dict[str, Any]) -> str:
    p, s = r["params"], r["summary"]
    v = s["cpu_percent"]["median"]
    return "\n".join(
        [
            "## Figure 6 — CPU at idle with many open shards",
            "",
            f"Recorded {r['recorded_at']} with `{r['command']}`.",
            f"kinesalite, an empty stream of {p['shards']} open shards, `poller run` → PostgreSQL with "
            f"`idle_poll_seconds: {p['idle_poll'] if p['idle_poll'] is not None else '1.0 (default)'}`; "
            f"CPU over {p['seconds']} s after a {p['settle']} s settle; {p['runs']} runs, medians.",
            "",
            "| figure | median | runs | target |",
            "| --- | --- | --- | --- |",
            f"| daemon CPU, % of one core | {v:.2f} % | "
            f"{', '.join(f'{x:.2f}' for x in s['cpu_percent']['runs'])} % "
            f"| ≤ {TARGET_PERCENT} % {common.verdict(v, TARGET_PERCENT, False)} |",
            f"| GetRecords calls per second | {s['get_records_per_second']['median']:.1f} | | |",
            f"| CPU µs per idle GetRecords (all daemon CPU ÷ calls) | "
            f"{s['cpu_us_per_get_records']['median']:.0f} | | |",
            f"| RSS | {s['rss_mb']['median']:.0f} MB | | |",
            "",
            f"Machine: {common.machine_line(r['machine'])}.",
        ]
    )


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--shards", type=int, default=100)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--settle", type=float, default=10)
    p.add_argument("--idle-poll", type=float, default=None, help="idle_poll_seconds (default: the default)")
    p.add_argument("--compare", type=Path, default=None, help="run poller from this source tree instead")
    args = p.parse_args()
    if args.smoke:
        args.shards, args.seconds, args.settle, args.runs = 4, 2, 1, 1
    common.aws_test_env()
    folder = common.out_dir(args)
    import asyncio

    m = common.machine()
    m["databases"] = asyncio.run(common.database_versions())
    runs = []
    kl = start_kinesalite(shard_limit=max(100, args.shards))
    try:
        stream = "bench-idle"
        create_stream(kl.url, stream, args.shards)
        for i in range(args.runs):
            run = one_run(kl.url, stream, args, tree=args.compare)
            runs.append(run)
            print(
                f"run {i + 1}: {run['cpu_percent']:.2f} % of a core, {run['get_records_per_second']:.1f} "
                f"GetRecords/s, {run['cpu_us_per_get_records']:.0f} µs CPU per call, "
                f"RSS {run['rss_mb']:.0f} MB",
                flush=True,
            )
    finally:
        kl.stop()
    keys = ["cpu_percent", "get_records_per_second", "cpu_us_per_get_records", "rss_mb"]
    result = {
        "params": {
            "shards": args.shards,
            "seconds": args.seconds,
            "settle": args.settle,
            "idle_poll": args.idle_poll,
            "runs": args.runs,
            "smoke": args.smoke,
        },
        "machine": m,
        "summary": {k: common.summary([r[k] for r in runs]) for k in keys},
        "runs": runs,
    }
    path = common.record("idle", result, render, folder)
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
