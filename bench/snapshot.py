"""Figure 8: a DynamoDB snapshot into PostgreSQL, beside a hand-written
aiobotocore parallel scan + asyncpg COPY of the same table, same run.

The table is N orders (~200 B, seven attributes) served by the DynamoDB
stand-in (`bench/ddb_standin.py`, its own process; moto scans ~3,000 items a
second). Each contender scans it whole with the same segments and page size,
into its own emptied PostgreSQL table (the seven typed columns every benchmark
writes, upserted on order_id); runs alternate which goes first:

- `poller`: `poller run` (child process) with `snapshot: {mode: only,
  segments: S}` and `batch.size: B` (the Scan's Limit): each page goes through
  decode → filter → map → coerce and commits with its segment's progress row,
  through a pool of S connections.
- `hand`: `python -m bench.snapshot hand` (child process): S asyncio tasks,
  each `Scan(Segment, TotalSegments, Limit=B)` in turn on one aiobotocore
  client, boto3's TypeDeserializer, tuples built by hand, and per page one
  transaction on its own asyncpg connection: binary COPY into a TEMP table,
  `INSERT ... SELECT ... ON CONFLICT DO UPDATE`, and an upsert of the
  segment's LastEvaluatedKey — the least that is resumable and exactly-once.

The stand-in holds the Scans back until the contender is waiting on them, so
CPU is counted from the first page: the daemon's from /proc/PID/stat until it
logs "snapshot complete", the hand-written side's from its own os.times().
Items per second run from the first Scan answered to the last commit (both
wall clock). Target: poller at least 0.8 of hand-written.

    .venv/bin/python -m bench.snapshot [--items 200000] [--segments 4] [--page 1000] [--runs 3]
        [--compare TREE] [--profile FILE]
    .venv/bin/python -m bench.snapshot hand --url URL --table T --segments S --page B
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import common
from bench.payloads import COLUMNS, KEY, pg_table_sql
from tests.support import db
from tests.support.servers import free_port

TARGET = 0.8
STANDIN_TABLE = "bench-table"
COLS = list(COLUMNS)


# --------------------------------------------------------------------------- hand-written


async def hand(url: str, table: str, segments: int, page: int, dsn: str) -> dict[str, Any]:
    """The hand-written parallel scan; returns its own measurements."""
    import asyncpg
    from aiobotocore.session import get_session
    from boto3.dynamodb.types import TypeDeserializer

    deserialize = TypeDeserializer().deserialize
    cols = ", ".join(COLS)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLS if c not in KEY)
    merge = (
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM hand_stage "
        f"ON CONFLICT (order_id) DO UPDATE SET {sets}"
    )
    progress = (
        "INSERT INTO bench_hand_progress VALUES ($1, $2, $3) "
        "ON CONFLICT (tbl, segment) DO UPDATE SET start_key = EXCLUDED.start_key"
    )
    conns = [await asyncpg.connect(dsn) for _ in range(segments)]
    await conns[0].execute(
        "CREATE TABLE IF NOT EXISTS bench_hand_progress (tbl text, segment int, start_key text, "
        "PRIMARY KEY (tbl, segment))"
    )
    for c in conns:
        await c.execute(
            f"CREATE TEMP TABLE hand_stage (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
    items = 0
    session = get_session()
    async with session.create_client("dynamodb", region_name="us-east-1", endpoint_url=url) as client:

        async def scan_segment(segment: int) -> None:
            nonlocal items
            conn = conns[segment]
            kwargs: dict[str, Any] = {
                "TableName": STANDIN_TABLE,
                "Segment": segment,
                "TotalSegments": segments,
                "Limit": page,
            }
            while True:
                resp = await client.scan(**kwargs)
                rows = []
                for raw in resp["Items"]:
                    it = {k: deserialize(v) for k, v in raw.items()}
                    rows.append(
                        (
                            int(it["order_id"]),
                            it["customer"],
                            it["status"],
                            it["amount"],
                            datetime.fromisoformat(it["created_at"]),
                            int(it["items"]),
                            it["note"],
                        )
                    )
                last = resp.get("LastEvaluatedKey")
                async with conn.transaction():
                    await conn.copy_records_to_table("hand_stage", records=rows, columns=COLS)
                    await conn.execute(merge)
                    await conn.execute(progress, table, segment, json.dumps(last) if last else "done")
                items += len(rows)
                if not last:
                    return
                kwargs["ExclusiveStartKey"] = last

        started = os.times()
        await asyncio.gather(*(scan_segment(s) for s in range(segments)))
        ended = os.times()
        finished = time.time()
    for c in conns:
        await c.close()
    cpu = (ended.user - started.user) + (ended.system - started.system)
    return {"items": items, "cpu_seconds": cpu, "finished_at": finished}


def hand_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench.snapshot hand")
    p.add_argument("--url", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--page", type=int, default=1000)
    p.add_argument("--dsn", default=common.PG_DSN)
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(hand(a.url, a.table, a.segments, a.page, a.dsn))), flush=True)


# --------------------------------------------------------------------------- one run of each side


def _reset(url: str) -> None:
    common.http_json(f"{url}/_bench/reset", "POST")


def _wait_waiting(url: str, n: int, alive: Any, timeout: float = 60) -> None:
    """Until `n` Scans are held back by the stand-in (the contender is ready)."""
    deadline = time.monotonic() + timeout
    while common.http_json(f"{url}/_bench/stats")["waiting"] < n:
        if time.monotonic() > deadline:
            raise AssertionError("the contender never scanned")
        alive()
        time.sleep(0.02)


def _fresh_table(name: str) -> None:
    db.execute("postgres", common.PG_DSN, *pg_table_sql(name))
    db.drop_bookkeeping("postgres", common.PG_DSN, name)


def _rows(name: str) -> int:
    return int(db.scalar("postgres", common.PG_DSN, f"SELECT count(*) FROM {name}"))


def daemon_config(name: str, url: str, segments: int, page: int) -> dict[str, Any]:
    return {
        "name": name,
        "source": {
            "type": "dynamodb",
            "table": STANDIN_TABLE,
            "endpoint_url": url,
            "region": "us-east-1",
            "snapshot": {"mode": "only", "segments": segments},
        },
        "batch": {"size": page, "window_seconds": 0},
        "sink": {
            "type": "postgres",
            "dsn": common.PG_DSN,
            "table": name,
            "key": KEY,
            "columns": COLUMNS,
            "pool_size": segments,
        },
    }


def _completed_at(log: Path) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        if '"snapshot complete' in line:
            return datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00")).timestamp()
    return None


def run_poller(url: str, args: Any, tree: Path | None, profile: Path | None) -> dict[str, Any]:
    name = f"bench_snap_{free_port()}"
    _fresh_table(name)
    _reset(url)
    try:
        with common.daemon([daemon_config(name, url, args.segments, args.page)], tree) as d:
            assert d.proc is not None
            pid = d.proc.pid
            _wait_waiting(url, args.segments, d.check_alive)
            cpu0 = common.cpu_seconds(pid)
            profiler = common.Profiler(pid, profile)
            common.http_json(f"{url}/_bench/start", "POST")
            deadline = time.monotonic() + args.timeout
            while (done := _completed_at(d.log)) is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the snapshot did not complete:\n{d.tail()}")
                d.check_alive()
                time.sleep(0.01)
            cpu = common.cpu_seconds(pid) - cpu0
            profiler.stop()
            peak = common.peak_rss_bytes(pid)
            d.wait(30)
        stats = common.http_json(f"{url}/_bench/stats")
        rows = _rows(name)
    finally:
        db.execute("postgres", common.PG_DSN, f"DROP TABLE IF EXISTS {name}")
        db.drop_bookkeeping("postgres", common.PG_DSN, name)
    if rows != args.items:
        raise AssertionError(f"{rows} rows written for {args.items} items")
    wall = done - stats["first_scan_at"]
    return _figures(args.items, wall, cpu, {"peak_rss_mb": round(peak / 2**20, 1), "scans": stats["scans"]})


def run_hand(url: str, args: Any) -> dict[str, Any]:
    name = f"bench_snap_hand_{free_port()}"
    _fresh_table(name)
    _reset(url)
    argv = [sys.executable, "-m", "bench.snapshot", "hand", "--url", url, "--table", name]
    argv += ["--segments", str(args.segments), "--page", str(args.page), "--dsn", common.PG_DSN]
    try:
        proc = subprocess.Popen(argv, cwd=common.ROOT, stdout=subprocess.PIPE, text=True)

        def alive() -> None:
            if proc.poll() is not None:
                raise AssertionError(f"the hand-written scan exited with {proc.returncode}")

        _wait_waiting(url, args.segments, alive)
        common.http_json(f"{url}/_bench/start", "POST")
        out, _ = proc.communicate(timeout=args.timeout)
        if proc.returncode != 0:
            raise AssertionError(f"the hand-written scan failed ({proc.returncode})")
        result = json.loads(out.strip().splitlines()[-1])
        stats = common.http_json(f"{url}/_bench/stats")
        rows = _rows(name)
    finally:
        db.execute(
            "postgres",
            common.PG_DSN,
            f"DROP TABLE IF EXISTS {name}",
            f"DELETE FROM bench_hand_progress WHERE tbl = '{name}'",
        )
    if rows != args.items:
        raise AssertionError(f"{rows} rows written for {args.items} items")
    wall = result["finished_at"] - stats["first_scan_at"]
    return _figures(args.items, wall, result["cpu_seconds"], {"scans": stats["scans"]})


def _figures(items: int, wall: float, cpu: float, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "items": items,
        "wall_seconds": round(wall, 3),
        "items_per_second": items / wall,
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_item": cpu / items * 1e6,
        **extra,
    }


# --------------------------------------------------------------------------- driver


def render(r: dict[str, Any]) -> str:
    p = r["params"]
    s = r["summary"]
    lines = [
        "## Figure 8 — DynamoDB snapshot into PostgreSQL against a hand-written parallel scan",
        "",
        f"Recorded {r['recorded_at']} with `{r['command']}`.",
        f"{p['items']:,} orders (~200 B, seven attributes) served by the DynamoDB stand-in "
        f"(`bench/ddb_standin.py`), {p['segments']} segments, pages of {p['page']} items, "
        f"{p['runs']} interleaved runs per side; each page's rows and its segment's progress in one "
        "transaction on both sides.",
        "",
        "| contender | items/s (median) | CPU µs/item (median) | runs (items/s) |",
        "| --- | --- | --- | --- |",
    ]
    for side, label in (
        ("poller", "poller `snapshot: {mode: only}`"),
        ("poller_compare", f"poller from `{p.get('compare')}`"),
        ("hand", "hand-written aiobotocore scan + asyncpg COPY"),
    ):
        if side in s:
            d = s[side]
            lines.append(
                f"| {label} | {common.fmt(d['items_per_second']['median'])} "
                f"| {common.fmt(d['cpu_us_per_item']['median'], 1)} "
                f"| {', '.join(common.fmt(v) for v in d['items_per_second']['runs'])} |"
            )
    rr = r["ratio"]
    lines += [
        "",
        f"poller ÷ hand-written items/s: **{common.fmt(rr['of_medians'])}** (ratio of medians; median of "
        f"pairs {common.fmt(rr['median_of_pairs'])}, pairs {rr['pairs']}) — target ≥ {TARGET} "
        f"{common.verdict(rr['of_medians'], TARGET, True)}.",
    ]
    if "compare_ratio" in r:
        cr = r["compare_ratio"]
        lines.append(
            f"This tree ÷ `{p.get('compare')}`: {common.fmt(cr['of_medians'])} (pairs {cr['pairs']})."
        )
    lines += ["", f"Machine: {common.machine_line(r['machine'])}."]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "hand":
        hand_main(sys.argv[2:])
        return
    p = common.parser(__doc__ or "")
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--page", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--compare", type=Path, default=None, help="another tree holding poller/, run alternately")
    p.add_argument("--profile", type=Path, default=None, help="py-spy of the daemon during its last run")
    args = p.parse_args()
    if args.smoke:
        args.items, args.runs = min(args.items, 5_000), 1
    folder = common.out_dir(args)
    common.aws_test_env()
    m = common.machine()
    m["databases"] = asyncio.run(common.database_versions())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    standin = common.spawn(
        "ddb-standin",
        [sys.executable, "-m", "bench.ddb_standin", "--port", str(port), "--items", str(args.items)],
        f"dynamodb stand-in listening on {port}",
        f"{url}/_bench/stats",
    )
    runs: dict[str, list[dict[str, Any]]] = {"poller": [], "hand": []}
    if args.compare is not None:
        runs["poller_compare"] = []
    try:
        sides = list(runs)
        for run in range(args.runs):
            order_ = sides[run % len(sides) :] + sides[: run % len(sides)]
            for side in order_:
                last = run == args.runs - 1
                if side == "hand":
                    r = run_hand(url, args)
                elif side == "poller":
                    r = run_poller(url, args, None, args.profile if last else None)
                else:
                    r = run_poller(url, args, args.compare, None)
                runs[side].append(r)
                print(
                    f"run {run + 1} {side}: {r['items_per_second']:,.0f} items/s, "
                    f"{r['cpu_us_per_item']:.1f} µs CPU/item",
                    flush=True,
                )
        standin_cpu = common.cpu_seconds(standin.proc.pid) if standin.proc is not None else None
    finally:
        standin.stop()
    summary = {
        side: {
            "items_per_second": common.summary([r["items_per_second"] for r in rs]),
            "cpu_us_per_item": common.summary([r["cpu_us_per_item"] for r in rs]),
        }
        for side, rs in runs.items()
    }
    result: dict[str, Any] = {
        "params": {
            "items": args.items,
            "segments": args.segments,
            "page": args.page,
            "runs": args.runs,
            "smoke": args.smoke,
            "compare": str(args.compare) if args.compare else None,
        },
        "machine": m,
        "runs": runs,
        "summary": summary,
        "ratio": common.ratio(
            [r["items_per_second"] for r in runs["poller"]], [r["items_per_second"] for r in runs["hand"]]
        ),
        "standin_cpu_seconds": standin_cpu,
    }
    if args.compare is not None:
        result["compare_ratio"] = common.ratio(
            [r["items_per_second"] for r in runs["poller"]],
            [r["items_per_second"] for r in runs["poller_compare"]],
        )
    rr = result["ratio"]
    print(f"poller ÷ hand-written: {rr['of_medians']} (pairs {rr['pairs']})", flush=True)
    path = common.record("snapshot", result, render, folder)
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
