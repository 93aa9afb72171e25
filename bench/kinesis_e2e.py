"""Figures 1 and 2: client CPU per record and throughput, Kinesis → PostgreSQL,
beside two peer consumers reading the same stream.

One kinesalite stream of `--shards` shards is filled once with `--records`
records (~200 B JSON orders); then, run after run and in rotating order, each
contender reads all of it from TRIM_HORIZON:

- `poller`: `poller run` (child process) writing every record to PostgreSQL
  (7 typed columns, upsert, checkpoint per transaction). CPU is the daemon's
  process CPU (/proc/PID/stat) from readiness to the commit of the last
  checkpoint; the wall time ends at that commit.
- `bare`: a plain aiobotocore get_records loop (`bench/peers.py bare`).
- `async-kinesis`: the PyPI consumer reading and parsing JSON
  (`bench/peers.py async-kinesis`).

Figure 1 is CPU µs per record (target: poller ≤ 15); figure 2 is the poller's
records/s over the bare loop's (target ≥ 0.9). kinesalite's own CPU per record
is shown too: on two shared cores it is what bounds the readers.

    .venv/bin/python -m bench.kinesis_e2e [--records 200000] [--shards 4] [--runs 3] [--batch 1000]
"""

from __future__ import annotations

import json
import subprocess
import sys
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

TARGET_CPU = 15.0
TARGET_RATIO = 0.9


def run_poller(
    url: str,
    stream: str,
    last: dict[str, str],
    records: int,
    args: Any,
    tree: Path | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    name = f"bench_kin_{free_port()}"
    reset_stream_state(name, pg_table_sql(name))
    cfg = stream_config(name, stream, url, name, batch={"size": args.batch, "window_seconds": args.window})
    try:
        with common.daemon([cfg], tree) as d:
            deadline = time.monotonic() + 60
            while not d.ready():  # poll fast: the reading starts right after
                d.check_alive()
                if time.monotonic() > deadline:
                    raise AssertionError(f"daemon not ready:\n{d.tail()}")
                time.sleep(0.01)
            assert d.proc is not None
            pid = d.proc.pid
            cpu0, t0 = common.cpu_seconds(pid), time.time()
            profiler = common.Profiler(pid, profile)
            t_end = wait_checkpointed(name, last, args.timeout, d.check_alive, interval=0.05)
            cpu = common.cpu_seconds(pid) - cpu0
            profiler.stop()
            peak = common.peak_rss_bytes(pid)
        rows = int(db.scalar("postgres", common.PG_DSN, f"SELECT count(*) FROM {name}"))
    finally:
        db.execute("postgres", common.PG_DSN, f"DROP TABLE IF EXISTS {name}")
        db.drop_bookkeeping("postgres", common.PG_DSN, name)
    if rows != records:
        raise AssertionError(f"{rows} rows for {records} records")
    wall = t_end - t0
    return {"records": records, "cpu_seconds": cpu, "wall_seconds": wall, "peak_rss_mb": peak / 2**20}


def run_peer(kind: str, url: str, stream: str, records: int, timeout: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.peers", kind, "--endpoint", url, "--stream", stream]
    argv += ["--records", str(records), "--timeout", str(timeout)]
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        cwd=common.ROOT,
        check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"peer {kind} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["records"] < records:
        raise AssertionError(f"peer {kind} read {result['records']} of {records}")
    return result


def peer_available(kind: str) -> bool:
    if kind != "async-kinesis":
        return True
    try:
        import kinesis  # noqa: F401
    except ImportError:
        return False
    return True


def render(r: dict[str, Any]) -> str:
    p, s = r["params"], r["summary"]
    lines = [
        "## Figures 1 and 2 — Kinesis → PostgreSQL: client CPU per record and throughput",
        "",
        f"Recorded {r['recorded_at']} with `{r['command']}`.",
        f"kinesalite, {p['records']:,} records of ~200 B JSON over {p['shards']} shards, read from "
        f"TRIM_HORIZON; poller batch size {p['batch']}, window {p['window']} s; {p['runs']} runs, "
        "contenders in rotating order, medians.",
        "",
        "| contender | CPU µs/record (median; runs) | records/s (median; runs) | kinesalite CPU µs/record |",
        "| --- | --- | --- | --- |",
    ]
    for kind, d in s.items():
        label = f"poller from `{p['compare']}` (baseline)" if kind == "poller-baseline" else kind
        lines.append(
            f"| {label} | {common.fmt(d['cpu_us_per_record']['median'], 1)}; "
            f"{', '.join(common.fmt(x, 1) for x in d['cpu_us_per_record']['runs'])} "
            f"| {common.fmt(d['records_per_second']['median'])}; "
            f"{', '.join(common.fmt(x) for x in d['records_per_second']['runs'])} "
            f"| {common.fmt(d['kinesalite_cpu_us_per_record']['median'], 1)} |"
        )
    f1 = s["poller"]["cpu_us_per_record"]["median"]
    ratio = r["ratios"].get("poller_over_bare_records_per_second", {})
    lines += [
        "",
        "| figure | measured | target |",
        "| --- | --- | --- |",
        f"| 1. poller CPU per record | {common.fmt(f1, 1)} µs | ≤ {TARGET_CPU} µs "
        f"{common.verdict(f1, TARGET_CPU, False)} |",
    ]
    for kind in ("bare", "async-kinesis"):
        key = f"poller_over_{kind.replace('-', '_')}_cpu_per_record"
        if key in r["ratios"]:
            lines.append(
                f"| 1. poller CPU per record ÷ {kind} | {common.fmt(r['ratios'][key]['of_medians'])} "
                f"(pairs {r['ratios'][key]['pairs']}) | |"
            )
    if ratio:
        lines.append(
            f"| 2. poller records/s ÷ bare loop records/s | {common.fmt(ratio['of_medians'])} "
            f"(median of pairs {common.fmt(ratio['median_of_pairs'])}; pairs {ratio['pairs']}) "
            f"| ≥ {TARGET_RATIO} {common.verdict(ratio['of_medians'], TARGET_RATIO, True)} |"
        )
    lines += ["", f"Machine: {common.machine_line(r['machine'])}."]
    return "\n".join(lines)


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--window", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--contenders", default="poller,bare,async-kinesis")
    p.add_argument("--profile", type=Path, default=None, help="py-spy the daemon (last run) into this file")
    p.add_argument("--compare", type=Path, default=None, help="also run poller from this source tree")
    args = p.parse_args()
    if args.smoke:
        args.records, args.runs, args.timeout = min(args.records, 2_000), 1, 60
    common.aws_test_env()
    folder = common.out_dir(args)
    import asyncio

    m = common.machine()
    m["databases"] = asyncio.run(common.database_versions())
    kinds = [k for k in args.contenders.split(",") if k and peer_available(k)]
    if args.compare is not None:
        kinds.append("poller-baseline")
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    kl = start_kinesalite()
    try:
        stream = "bench-e2e"
        create_stream(kl.url, stream, args.shards)
        t = time.monotonic()
        last = fill(kl.url, stream, args.records)
        print(f"filled {args.records:,} records in {time.monotonic() - t:.1f} s", flush=True)
        assert kl._child.proc is not None
        kpid = kl._child.proc.pid
        for run in range(args.runs):
            order = kinds[run % len(kinds) :] + kinds[: run % len(kinds)]
            for kind in order:
                k0 = common.cpu_seconds(kpid)
                if kind == "poller":
                    prof = args.profile if run == args.runs - 1 else None
                    res = run_poller(kl.url, stream, last, args.records, args, profile=prof)
                elif kind == "poller-baseline":
                    res = run_poller(kl.url, stream, last, args.records, args, tree=args.compare)
                else:
                    res = run_peer(kind, kl.url, stream, args.records, args.timeout)
                res["kinesalite_cpu_seconds"] = common.cpu_seconds(kpid) - k0
                res["cpu_us_per_record"] = res["cpu_seconds"] / res["records"] * 1e6
                res["records_per_second"] = res["records"] / res["wall_seconds"]
                res["kinesalite_cpu_us_per_record"] = res["kinesalite_cpu_seconds"] / res["records"] * 1e6
                results[kind].append(res)
                print(
                    f"run {run + 1} {kind}: {res['cpu_us_per_record']:.1f} µs/record, "
                    f"{res['records_per_second']:,.0f} records/s, "
                    f"kinesalite {res['kinesalite_cpu_us_per_record']:.1f} µs/record",
                    flush=True,
                )
    finally:
        kl.stop()
    keys = ["cpu_us_per_record", "records_per_second", "kinesalite_cpu_us_per_record"]
    summary = {k: {key: common.summary([r[key] for r in rs]) for key in keys} for k, rs in results.items()}
    ratios: dict[str, Any] = {}
    pol = results.get("poller", [])
    for kind in kinds:
        if kind == "poller" or not results[kind] or not pol:
            continue
        tag = kind.replace("-", "_")
        ratios[f"poller_over_{tag}_cpu_per_record"] = common.ratio(
            [r["cpu_us_per_record"] for r in pol], [r["cpu_us_per_record"] for r in results[kind]]
        )
        ratios[f"poller_over_{tag}_records_per_second"] = common.ratio(
            [r["records_per_second"] for r in pol], [r["records_per_second"] for r in results[kind]]
        )
    result = {
        "params": {
            "records": args.records,
            "shards": args.shards,
            "batch": args.batch,
            "window": args.window,
            "runs": args.runs,
            "smoke": args.smoke,
            "compare": str(args.compare) if args.compare else None,
        },
        "machine": m,
        "summary": summary,
        "ratios": ratios,
        "runs": results,
    }
    for k, v in ratios.items():
        print(f"{k}: {v['of_medians']} (pairs {v['pairs']})")
    path = common.record("kinesis_e2e", result, render, folder)
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
