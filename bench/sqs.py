"""Figure 7: SQS messages per second per core of daemon CPU.

`poller run` (a child process, as a user runs it) consumes N pre-generated
messages from the fast SQS stand-in (`bench/sqs_standin.py`, its own process)
into PostgreSQL, exactly once (message ids in `poller_processed`, rows upserted,
messages deleted in batches of ten). The stand-in holds the messages back
until the daemon is ready and its CPU time has been read; the run ends when
the stand-in has seen the last delete.

    messages per core-second = N / (daemon CPU seconds from /proc/PID/stat)

The wall-clock rate and the stand-in's own CPU are reported beside it: the
machine has two cores shared by the daemon, the stand-in and PostgreSQL.

    .venv/bin/python -m bench.sqs [--messages 100000] [--runs 3] [--batch 100] [--concurrency 2]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.payloads import COLUMNS, KEY, pg_table_sql
from tests.support import db
from tests.support.servers import free_port

TARGET = 10_000
STREAM = "bench_sqs"


def daemon_config(name: str, endpoint: str, batch: int, concurrency: int, inflight: int) -> dict[str, Any]:
    return {
        "name": name,
        "source": {
            "type": "sqs",
            "queue_url": f"{endpoint}/123456789012/bench-queue",
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "wait_seconds": 20,
            "max_concurrency": concurrency,
            "max_inflight_messages": inflight,
        },
        "batch": {"size": batch, "window_seconds": 0.5},
        "decode": "json",
        "sink": {
            "type": "postgres",
            "dsn": common.PG_DSN,
            "table": name,
            "key": KEY,
            "columns": COLUMNS,
        },
    }


def one_run(
    messages: int,
    batch: int,
    concurrency: int,
    inflight: int,
    timeout: float,
    profile: Path | None = None,
    tree: Path | None = None,
) -> dict[str, Any]:
    port = free_port()
    name = f"{STREAM}_{port}"  # runs of other benchmarks may share the database
    db.execute("postgres", common.PG_DSN, *pg_table_sql(name))
    db.drop_bookkeeping("postgres", common.PG_DSN, name)
    url = f"http://127.0.0.1:{port}"
    standin = common.spawn(
        "sqs-standin",
        [sys.executable, "-m", "bench.sqs_standin", "--port", str(port), "--messages", str(messages)],
        f"sqs stand-in listening on {port}",
        f"{url}/_bench/stats",
    )
    try:
        cfg = daemon_config(name, url, batch, concurrency, inflight)
        with common.daemon([cfg], tree) as d:
            d.wait_ready(60)
            assert d.proc is not None and standin.proc is not None
            pid, spid = d.proc.pid, standin.proc.pid
            time.sleep(0.5)  # let start-up settle: the figure is the steady work
            cpu0, scpu0 = common.cpu_seconds(pid), common.cpu_seconds(spid)
            profiler = common.Profiler(pid, profile)
            started = common.http_json(f"{url}/_bench/start", "POST")["monotonic"]
            deadline = time.monotonic() + timeout
            while True:
                stats = common.http_json(f"{url}/_bench/stats")
                if stats["deleted"] >= messages:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"only {stats['deleted']} of {messages} deleted: {stats}\n{d.tail()}"
                    )
                d.check_alive()
                time.sleep(0.05)
            cpu = common.cpu_seconds(pid) - cpu0
            profiler.stop()
            scpu = common.cpu_seconds(spid) - scpu0
            peak = common.peak_rss_bytes(pid)
            wall = stats["last_delete_at"] - started
        rows = int(db.scalar("postgres", common.PG_DSN, f"SELECT count(*) FROM {name}"))
    finally:
        standin.stop()
        db.execute("postgres", common.PG_DSN, f"DROP TABLE IF EXISTS {name}")
        db.drop_bookkeeping("postgres", common.PG_DSN, name)
    if rows != messages:
        raise AssertionError(f"{rows} rows written for {messages} messages")
    return {
        "messages": messages,
        "wall_seconds": round(wall, 3),
        "daemon_cpu_seconds": round(cpu, 3),
        "msgs_per_core_second": messages / cpu if cpu else float("nan"),
        "msgs_per_second": messages / wall,
        "daemon_cpu_us_per_msg": cpu / messages * 1e6,
        "daemon_cores_busy": cpu / wall,
        "standin_cpu_us_per_msg": scpu / messages * 1e6,
        "daemon_peak_rss_mb": round(peak / 2**20, 1),
        "redelivered": stats["redelivered"],
        "receive_calls": stats["receive_calls"],
    }


def _baseline_lines(r: dict[str, Any]) -> list[str]:
    b = r.get("baseline")
    if not b:
        return []
    bs, ratio = b["summary"], b["ratio_msgs_per_core_second"]
    return [
        f"| baseline `{b['tree']}`: messages per core-second "
        f"| {common.fmt(bs['msgs_per_core_second']['median'])} "
        f"| {', '.join(common.fmt(x) for x in bs['msgs_per_core_second']['runs'])} | |",
        f"| working tree ÷ baseline | {common.fmt(ratio['of_medians'])} | pairs {ratio['pairs']} | |",
    ]


def render(r: dict[str, Any]) -> str:
    s = r["summary"]
    p = r["params"]
    v = s["msgs_per_core_second"]["median"]
    return "\n".join(
        [
            "## Figure 7 — SQS messages per second per core of daemon CPU",
            "",
            f"Recorded {r['recorded_at']} with `{r['command']}`.",
            f"`poller run` → fast SQS stand-in (own process) → PostgreSQL; {p['messages']:,} messages "
            f"of ~200 B JSON, batch {p['batch']}, max_concurrency {p['concurrency']}, "
            f"max_inflight_messages {p['inflight']}; {p['runs']} runs, medians.",
            "",
            "| figure | median | runs | target |",
            "| --- | --- | --- | --- |",
            f"| messages per core-second of daemon CPU | {common.fmt(v)} | "
            f"{', '.join(common.fmt(x) for x in s['msgs_per_core_second']['runs'])} "
            f"| ≥ {TARGET:,} {common.verdict(v, TARGET, True)} |",
            f"| daemon CPU µs per message | {common.fmt(s['daemon_cpu_us_per_msg']['median'], 1)} | "
            f"{', '.join(common.fmt(x, 1) for x in s['daemon_cpu_us_per_msg']['runs'])} | ≤ 100 |",
            f"| messages per second (wall clock) | {common.fmt(s['msgs_per_second']['median'])} | "
            f"{', '.join(common.fmt(x) for x in s['msgs_per_second']['runs'])} | |",
            f"| daemon cores busy | {common.fmt(s['daemon_cores_busy']['median'])} | | |",
            f"| stand-in CPU µs per message | {common.fmt(s['standin_cpu_us_per_msg']['median'], 1)} | | |",
            *_baseline_lines(r),
            "",
            f"Machine: {common.machine_line(r['machine'])}.",
        ]
    )


def _line(label: str, run: dict[str, Any]) -> str:
    return (
        f"{label}: {run['msgs_per_core_second']:,.0f} msgs per core-second "
        f"({run['daemon_cpu_us_per_msg']:.1f} µs/msg), {run['msgs_per_second']:,.0f} msgs/s wall, "
        f"daemon {run['daemon_cores_busy']:.2f} cores, stand-in {run['standin_cpu_us_per_msg']:.1f} µs/msg"
    )


KEYS = [
    "msgs_per_core_second",
    "daemon_cpu_us_per_msg",
    "msgs_per_second",
    "daemon_cores_busy",
    "standin_cpu_us_per_msg",
    "daemon_peak_rss_mb",
]


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--inflight", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--profile", type=Path, default=None, help="py-spy the daemon (last run) into this file")
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="another source tree holding poller/ (e.g. the last commit) run alternately as a baseline",
    )
    args = p.parse_args()
    if args.smoke:
        args.messages, args.runs, args.timeout = min(args.messages, 1_000), 1, 60
    common.aws_test_env()
    folder = common.out_dir(args)
    import asyncio

    m = common.machine()
    m["databases"] = asyncio.run(common.database_versions())
    runs: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    size = (args.messages, args.batch, args.concurrency, args.inflight, args.timeout)
    for i in range(args.runs):
        profile = args.profile if i == args.runs - 1 else None
        sides = ["ours", "base"] if args.compare is not None else ["ours"]
        for side in sides if i % 2 == 0 else sides[::-1]:
            if side == "ours":
                runs.append(one_run(*size, profile=profile))
                print(_line(f"run {i + 1}", runs[-1]), flush=True)
            else:
                base.append(one_run(*size, tree=args.compare))
                print(_line(f"run {i + 1} baseline {args.compare}", base[-1]), flush=True)
    result: dict[str, Any] = {
        "params": {
            "messages": args.messages,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "inflight": args.inflight,
            "runs": args.runs,
            "smoke": args.smoke,
        },
        "machine": m,
        "summary": {k: common.summary([r[k] for r in runs]) for k in KEYS},
        "runs": runs,
    }
    if base:
        ours_v = [r["msgs_per_core_second"] for r in runs]
        base_v = [r["msgs_per_core_second"] for r in base]
        result["baseline"] = {
            "tree": str(args.compare),
            "summary": {k: common.summary([r[k] for r in base]) for k in KEYS},
            "ratio_msgs_per_core_second": common.ratio(ours_v, base_v),
            "runs": base,
        }
        print(f"ours / baseline (msgs per core-second): {result['baseline']['ratio_msgs_per_core_second']}")
    path = common.record("sqs", result, render, folder)
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
