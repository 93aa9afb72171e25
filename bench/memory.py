"""Figure 5: peak RSS of `poller run` draining a backlog.

A kinesalite stream of `--shards` shards is filled once with `--records`
records (~200 B JSON); then, run after run, a fresh daemon with the default
stream settings (`prefetch_records: 10000` per shard, 10,000 records per
GetRecords, batch size `--batch`) reads all of it from TRIM_HORIZON into
PostgreSQL. The figure is the kernel's high-water mark of the daemon's
resident set (VmHWM in /proc/PID/status) once the last checkpoint is
committed; RSS sampled every 0.25 s is kept beside it.

    .venv/bin/python -m bench.memory [--records 1000000] [--shards 4] [--runs 3]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import common
from bench.kinesis_common import (
    create_stream,
    fill,
    reset_stream_state,
    start_kinesalite,
    stream_config,
    wait_checkpointed,
)
from bench.payloads import pg_table_sql
from tests.support import db
from tests.support.servers import free_port

TARGET_MB = 200


def one_run(
    url: str, stream: str, last: dict[str, str], args: Any, tree: Path | None = None
) -> dict[str, Any]:
    name = f"bench_mem_{free_port()}"
    reset_stream_state(name, pg_table_sql(name))
    cfg = stream_config(name, stream, url, name, batch={"size": args.batch, "window_seconds": 0.5})
    try:
        with common.daemon([cfg], tree) as d:
            assert d.proc is not None
            sampler = common.Sampler(d.proc.pid).start()
            d.wait_ready(60)
            t0 = time.time()
            t_end = wait_checkpointed(name, last, args.timeout, d.check_alive, interval=0.25)
            sampler.stop()
            peak = common.peak_rss_bytes(d.proc.pid)
            final = common.rss_bytes(d.proc.pid)
    finally:
        db.execute("postgres", common.PG_DSN, f"DROP TABLE IF EXISTS {name}")
        db.drop_bookkeeping("postgres", common.PG_DSN, name)
    return {
        "peak_rss_mb": peak / 2**20,
        "max_sampled_rss_mb": sampler.max_rss() / 2**20,
        "rss_after_mb": final / 2**20,
        "records_per_second": args.records / (t_end - t0),
    }


def render(r: dict[str, Any]) -> str:
    p, s = r["params"], r["summary"]
    v = s["peak_rss_mb"]["median"]
    return "\n".join(
        [
            "## Figure 5 — peak RSS draining a backlog",
            "",
            f"Recorded {r['recorded_at']} with `{r['command']}`.",
            f"kinesalite, a backlog of {p['records']:,} records over {p['shards']} shards read from "
            "TRIM_HORIZON by `poller run` → PostgreSQL (default prefetch and read size, "
            f"batch {p['batch']}); "
            f"{p['runs']} runs, medians.",
            "",
            "| figure | median | runs | target |",
            "| --- | --- | --- | --- |",
            f"| peak RSS (VmHWM) | {v:.0f} MB | {', '.join(f'{x:.0f}' for x in s['peak_rss_mb']['runs'])} MB "
            f"| ≤ {TARGET_MB} MB {common.verdict(v, TARGET_MB, False)} |",
            f"| RSS after the backlog | {s['rss_after_mb']['median']:.0f} MB | | |",
            f"| records/s while draining | {common.fmt(s['records_per_second']['median'])} | | |",
            "",
            f"Machine: {common.machine_line(r['machine'])}.",
        ]
    )


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--compare", type=Path, default=None, help="run poller from this source tree instead")
    args = p.parse_args()
    if args.smoke:
        args.records, args.runs, args.timeout = min(args.records, 2_000), 1, 60
    common.aws_test_env()
    folder = common.out_dir(args)
    import asyncio

    m = common.machine()
    m["databases"] = asyncio.run(common.database_versions())
    runs = []
    kl = start_kinesalite()
    try:
        stream = "bench-backlog"
        create_stream(kl.url, stream, args.shards)
        t = time.monotonic()
        last = fill(kl.url, stream, args.records)
        print(f"filled {args.records:,} records in {time.monotonic() - t:.1f} s", flush=True)
        for i in range(args.runs):
            run = one_run(kl.url, stream, last, args, tree=args.compare)
            runs.append(run)
            print(
                f"run {i + 1}: peak RSS {run['peak_rss_mb']:.0f} MB "
                f"(sampled max {run['max_sampled_rss_mb']:.0f}, "
                f"after {run['rss_after_mb']:.0f}), {run['records_per_second']:,.0f} records/s",
                flush=True,
            )
    finally:
        kl.stop()
    keys = ["peak_rss_mb", "max_sampled_rss_mb", "rss_after_mb", "records_per_second"]
    result = {
        "params": {
            "records": args.records,
            "shards": args.shards,
            "batch": args.batch,
            "runs": args.runs,
            "smoke": args.smoke,
        },
        "machine": m,
        "summary": {k: common.summary([r[k] for r in runs]) for k in keys},
        "runs": runs,
    }
    path = common.record("memory", result, render, folder)
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
