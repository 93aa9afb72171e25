"""Figure 10: several replicas of one stream (`coordination:`) — takeover after
a SIGKILL, and throughput with 1, 2 and 3 replicas.

Takeover: three `poller run` replicas share a kinesalite stream of `--shards`
shards into PostgreSQL (leases in `poller_leases`, `lease_seconds:
--lease-seconds`), records flowing at ~`--rate`/s. Once they hold a fair share
each, one is SIGKILLed; the figure is the time from the SIGKILL until every
shard it held has been read again by a survivor (the first GetRecords of that
shard in a survivor's /metrics, polled every 50 ms). The killed replica is
then started again and the next run kills another one. Median of `--runs`.

Throughput: `--records` records are put first; then 1, 2 or 3 replicas start
together on a fresh stream name (fresh checkpoints) whose leases are already
spread evenly (rows of `poller_leases` naming each replica, which it takes
back at once), so the figure is reading with leases, not balancing (the
tests time balancing). Records per second from the moment every replica is
ready to the commit of the last record, leaving out what was committed
before; median of `--runs` per replica count.

    .venv/bin/python -m bench.replicas [--runs 3] [--lease-seconds 10] [--records 120000]
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from typing import Any

from bench import common
from bench.kinesis_common import (
    checkpoints,
    create_stream,
    fill,
    put_range,
    reset_stream_state,
    start_kinesalite,
    stream_config,
)
from bench.payloads import pg_table_sql
from poller.sinks import ddl
from tests.support import db
from tests.support.aws import client
from tests.support.daemon import Daemon, wait_for
from tests.support.servers import free_port


def replica_config(name: str, stream: str, url: str, worker: str, lease_seconds: float) -> dict[str, Any]:
    cfg = stream_config(
        name,
        stream,
        url,
        name,
        source={"idle_poll_seconds": 0.2, "shard_discovery_seconds": 5},
        batch={"size": 500, "window_seconds": 0.2},
    )
    cfg["coordination"] = {"lease_seconds": lease_seconds, "worker_id": worker}
    return cfg


def fresh(name: str) -> None:
    reset_stream_state(name, pg_table_sql(name))
    # The sink creates poller_leases as it opens; the runs seed it before that.
    leases = ddl.bookkeeping(ddl.POSTGRES, '"', "poller_checkpoints", "poller_processed", None)[-1]
    db.execute("postgres", common.PG_DSN, leases)
    db.execute("postgres", common.PG_DSN, f"DELETE FROM poller_leases WHERE stream = '{name}'")


def spread_leases(url: str, stream: str, name: str, workers: list[str]) -> None:
    """Leases of every shard, dealt round the workers: each takes its own back at once."""
    shards = sorted(s["ShardId"] for s in client("kinesis", url).list_shards(StreamName=stream)["Shards"])
    for i, shard in enumerate(shards):
        db.execute(
            "postgres",
            common.PG_DSN,
            f"INSERT INTO poller_leases (stream, shard_id, owner) "
            f"VALUES ('{name}', '{shard}', '{workers[i % len(workers)]}')",
        )


def drop(name: str) -> None:
    db.execute("postgres", common.PG_DSN, f"DROP TABLE IF EXISTS {name}")
    db.drop_bookkeeping("postgres", common.PG_DSN, name)
    db.execute("postgres", common.PG_DSN, f"DELETE FROM poller_leases WHERE stream = '{name}'")


def held(d: Daemon, name: str) -> int:
    return int(d.metric(f'poller_leases_held{{stream="{name}"}}', -1))


def owners(name: str) -> dict[str, str | None]:
    rows = db.fetch(
        "postgres",
        common.PG_DSN,
        "SELECT shard_id, owner FROM poller_leases WHERE stream = %s AND state = 'open'",
        (name,),
    )
    return {r[0]: r[1] for r in rows}


def wait_balanced(daemons: dict[str, Daemon], name: str, shards: int, timeout: float) -> None:
    share = -(-shards // len(daemons))
    wait_for(
        lambda: (
            sum(held(d, name) for d in daemons.values()) == shards
            and all(share - 1 <= held(d, name) <= share for d in daemons.values())
        ),
        timeout,
        interval=0.1,
        message="replicas hold their fair shares",
    )


_SHARD = re.compile(r'shard="([^"]+)"')


def reading(d: Daemon, name: str) -> set[str]:
    """The shards this replica has called GetRecords on (its series go when it loses one)."""
    out = set()
    for sample, value in d.metrics().items():
        if (
            sample.startswith("poller_get_records_calls_total{")
            and f'stream="{name}"' in sample
            and value >= 1
        ):
            m = _SHARD.search(sample)
            if m is not None:
                out.add(m.group(1))
    return out


# --------------------------------------------------------------------------- takeover


def takeover_runs(url: str, args: Any) -> list[dict[str, Any]]:
    name = f"bench_rep_kill_{free_port()}"
    stream = f"bench-replicas-kill-{free_port()}"
    create_stream(url, stream, args.shards)
    fresh(name)
    workers = ["w1", "w2", "w3"]
    daemons: dict[str, Daemon] = {}
    producing = threading.Event()
    producing.set()
    sent = [0]

    def produce() -> None:
        per_tick = max(1, args.rate // 10)
        while producing.is_set():
            put_range(url, stream, sent[0], sent[0] + per_tick)
            sent[0] += per_tick
            time.sleep(0.1)

    producer = threading.Thread(target=produce, daemon=True)
    runs: list[dict[str, Any]] = []
    balance_timeout = 8 * args.lease_seconds + 30
    try:
        for w in workers:
            daemons[w] = Daemon(
                [replica_config(name, stream, url, w, args.lease_seconds)], shutdown_timeout=15
            )
            daemons[w].start()
        producer.start()
        wait_balanced(daemons, name, args.shards, balance_timeout)
        for i in range(args.runs):
            victim = workers[i % len(workers)]
            orphans = {s for s, owner in owners(name).items() if owner == victim}
            survivors = {w: d for w, d in daemons.items() if w != victim}
            daemons[victim].signal(signal.SIGKILL)
            killed = time.monotonic()
            daemons[victim].wait(10)
            read_again: dict[str, float] = {}
            deadline = killed + 3 * args.lease_seconds + 30
            while len(read_again) < len(orphans):
                if time.monotonic() > deadline:
                    raise AssertionError(f"orphans not read again: {sorted(orphans - set(read_again))}")
                now = time.monotonic() - killed
                for d in survivors.values():
                    for shard in reading(d, name) & orphans:
                        read_again.setdefault(shard, now)
                time.sleep(0.05)
            run = {
                "victim": victim,
                "shards": len(orphans),
                "read_again_s": max(read_again.values()),
                "first_read_again_s": min(read_again.values()),
            }
            runs.append(run)
            print(
                f"run {i + 1}: {len(orphans)} shards of {victim} read again "
                f"{run['first_read_again_s']:.2f} to {run['read_again_s']:.2f} s after SIGKILL",
                flush=True,
            )
            daemons[victim] = Daemon(
                [replica_config(name, stream, url, victim, args.lease_seconds)], shutdown_timeout=15
            )
            daemons[victim].start()
            wait_balanced(daemons, name, args.shards, balance_timeout)
    finally:
        producing.clear()
        if producer.is_alive():
            producer.join(30)
        for d in daemons.values():
            d.stop()
        drop(name)
    return runs


# --------------------------------------------------------------------------- throughput


def throughput_run(url: str, stream: str, replicas: int, args: Any, last: dict[str, str]) -> dict[str, Any]:
    name = f"bench_rep_{replicas}_{free_port()}"
    fresh(name)
    workers = [f"t{i}" for i in range(replicas)]
    spread_leases(url, stream, name, workers)
    daemons = {
        w: Daemon([replica_config(name, stream, url, w, args.lease_seconds)], shutdown_timeout=15)
        for w in workers
    }
    cpu: dict[str, float] = {}
    try:
        for d in daemons.values():
            d.start()
        for d in daemons.values():
            d.wait_ready(60)
        balanced_at = time.time()
        rows_at_balance = int(db.scalar("postgres", common.PG_DSN, f"SELECT count(*) FROM {name}"))
        for w, d in daemons.items():
            assert d.proc is not None
            cpu[w] = common.cpu_seconds(d.proc.pid)
        done_at = wait_checkpointed_all(name, last, 600, daemons)
        for w, d in daemons.items():
            assert d.proc is not None
            cpu[w] = common.cpu_seconds(d.proc.pid) - cpu[w]
        total = int(db.scalar("postgres", common.PG_DSN, f"SELECT count(*) FROM {name}"))
    finally:
        for d in daemons.values():
            d.stop()
        drop(name)
    seconds = max(1e-6, done_at - balanced_at)
    return {
        "replicas": replicas,
        "records": total,
        "records_after_ready": total - rows_at_balance,
        "seconds_after_ready": seconds,
        "records_per_second": (total - rows_at_balance) / seconds,
        "daemon_cpu_seconds": sum(cpu.values()),
    }


def wait_checkpointed_all(
    name: str, last: dict[str, str], timeout: float, daemons: dict[str, Daemon]
) -> float:
    """The epoch of the commit that checkpointed the last record of the last shard."""
    deadline = time.monotonic() + timeout
    while True:
        cps = checkpoints(name)
        if all(s in cps and int(cps[s][0]) >= int(seq) for s, seq in last.items()):
            return max(cps[s][1] for s in last)
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: not all checkpointed after {timeout} s")
        for d in daemons.values():
            d.check_alive()
        time.sleep(0.1)


# --------------------------------------------------------------------------- report


def render(r: dict[str, Any]) -> str:
    p, s = r["params"], r["summary"]
    rates = s["throughput"]
    one = rates.get("1", {}).get("median")
    lines = [
        "## Figure 10 — several replicas: takeover after SIGKILL, throughput with 1, 2, 3 replicas",
        "",
        f"Recorded {r['recorded_at']} with `{r['command']}`.",
        f"kinesalite, {p['shards']} shards, `poller run` replicas → PostgreSQL, leases in `poller_leases`, "
        f"`lease_seconds: {p['lease_seconds']}` (renewed every {p['lease_seconds'] / 3:.2f} s); "
        f"{p['runs']} runs, medians.",
        "",
        "| figure | median | runs | expected |",
        "| --- | --- | --- | --- |",
        f"| SIGKILL → every shard of the killed replica read again ({p['rate']:,} records/s flowing) "
        f"| {s['read_again_s']['median']:.2f} s "
        f"| {', '.join(f'{x:.2f}' for x in s['read_again_s']['runs'])} s "
        f"| ≤ lease + renew period + one read ≈ {p['lease_seconds'] * 4 / 3 + 0.5:.1f} s |",
        f"| SIGKILL → first of them read again | {s['first_read_again_s']['median']:.2f} s | "
        f"{', '.join(f'{x:.2f}' for x in s['first_read_again_s']['runs'])} s | |",
    ]
    for n in ("1", "2", "3"):
        if n not in rates:
            continue
        rel = f" ({rates[n]['median'] / one:.2f} of one replica's)" if one and n != "1" else ""
        lines.append(
            f"| throughput, {n} replica{'s' if n != '1' else ''} ({p['records']:,} records waiting) "
            f"| {rates[n]['median']:,.0f} records/s{rel} | "
            f"{', '.join(f'{x:,.0f}' for x in rates[n]['runs'])} | |"
        )
    lines += [
        "",
        "Every replica, kinesalite and PostgreSQL share the machine's cores, so more replicas "
        "add no CPU here: the throughput figures show what leasing costs, not how it scales on "
        "separate hosts. The takeover time is bounded by the lease: a taker waits until a "
        "counter has stood still for `lease_seconds` on its own clock, and sees the victim's last "
        "renewal up to one renew period after it was made.",
        "",
        f"Machine: {common.machine_line(r['machine'])}.",
    ]
    return "\n".join(lines)


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--shards", type=int, default=12)
    p.add_argument("--lease-seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=1000, help="records/s flowing during the takeover runs")
    p.add_argument("--records", type=int, default=120_000, help="records waiting for each throughput run")
    args = p.parse_args()
    if args.smoke:
        args.shards, args.lease_seconds, args.rate, args.records, args.runs = 4, 2.0, 200, 2_000, 1
    common.aws_test_env()
    folder = common.out_dir(args)
    m = common.machine()
    m["databases"] = asyncio.run(common.database_versions())
    kl = start_kinesalite()
    throughput: dict[str, list[dict[str, Any]]] = {}
    try:
        kills = takeover_runs(kl.url, args)
        stream = f"bench-replicas-{free_port()}"
        create_stream(kl.url, stream, args.shards)
        last = fill(kl.url, stream, args.records)
        for _ in range(args.runs):
            for n in (1, 2, 3):
                run = throughput_run(kl.url, stream, n, args, last)
                throughput.setdefault(str(n), []).append(run)
                print(
                    f"{n} replica(s): {run['records_per_second']:,.0f} records/s "
                    f"({run['records_after_ready']:,} records in {run['seconds_after_ready']:.1f} s "
                    f"once every replica was ready)",
                    flush=True,
                )
    finally:
        kl.stop()
    result = {
        "params": {
            "shards": args.shards,
            "lease_seconds": args.lease_seconds,
            "rate": args.rate,
            "records": args.records,
            "runs": args.runs,
            "smoke": args.smoke,
        },
        "machine": m,
        "summary": {
            "read_again_s": common.summary([k["read_again_s"] for k in kills]),
            "first_read_again_s": common.summary([k["first_read_again_s"] for k in kills]),
            "throughput": {
                n: common.summary([r["records_per_second"] for r in runs]) for n, runs in throughput.items()
            },
        },
        "takeover_runs": kills,
        "throughput_runs": throughput,
    }
    path = common.record("replicas", result, render, folder)
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
