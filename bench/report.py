"""The summary table at the top of RESULTS.md, from the recorded results JSON.

`common.record` refreshes it after every benchmark; run it by hand with

    .venv/bin/python -m bench.report [--out FOLDER]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench import common


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / "results" / f"{name}.json"
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def rows(folder: Path) -> list[tuple[str, str, str, str, str]]:
    """(figure, target, measured, verdict, recorded) per figure."""
    out: list[tuple[str, str, str, str, str]] = []
    e2e = _load(folder, "kinesis_e2e")
    if e2e is not None:
        pol = e2e["summary"].get("poller", {}).get("cpu_us_per_record", {}).get("median")
        peers = ", ".join(
            f"{k} {e2e['summary'][k]['cpu_us_per_record']['median']:.1f}"
            for k in ("bare", "async-kinesis")
            if k in e2e["summary"]
        )
        out.append(
            (
                "1. client CPU per record, Kinesis → PostgreSQL",
                "≤ 15 µs",
                f"{common.fmt(pol, 1)} µs (peers: {peers} µs)",
                common.verdict(pol, 15.0, False),
                e2e["recorded_at"],
            )
        )
        r = e2e["ratios"].get("poller_over_bare_records_per_second", {})
        out.append(
            (
                "2. throughput ÷ bare get_records loop",
                "≥ 0.9",
                f"{common.fmt(r.get('of_medians'))} (pairs {r.get('pairs')})",
                common.verdict(r.get("of_medians"), 0.9, True),
                e2e["recorded_at"],
            )
        )
    sinks = _load(folder, "sinks")
    if sinks is not None:
        for db, label in (("postgres", "asyncpg COPY + merge"), ("mysql", "aiomysql executemany upsert")):
            d = sinks["databases"].get(db)
            if d is None:
                continue
            v = d["ratio"]["of_medians"]
            out.append(
                (
                    f"3. sink throughput ÷ hand-written {label}",
                    "≥ 0.8",
                    f"{common.fmt(v)} (pairs {d['ratio']['pairs']})",
                    common.verdict(v, 0.8, True),
                    sinks["recorded_at"],
                )
            )
    lat = _load(folder, "latency")
    if lat is not None:
        s = lat["summary"]
        out.append(
            (
                "4. latency put → row committed, 1,000 records/s",
                "p50 ≤ 250 ms, p99 ≤ 1 s",
                f"p50 {s['p50']['median'] * 1000:.0f} ms, p99 {s['p99']['median'] * 1000:.0f} ms",
                "**met**" if s["p50"]["median"] <= 0.25 and s["p99"]["median"] <= 1.0 else "**not met**",
                lat["recorded_at"],
            )
        )
    mem = _load(folder, "memory")
    if mem is not None:
        v = mem["summary"]["peak_rss_mb"]["median"]
        out.append(
            (
                f"5. peak RSS, {mem['params']['records']:,}-record backlog",
                "≤ 200 MB",
                f"{v:.0f} MB",
                common.verdict(v, 200, False),
                mem["recorded_at"],
            )
        )
    idle = _load(folder, "idle")
    if idle is not None:
        v = idle["summary"]["cpu_percent"]["median"]
        out.append(
            (
                f"6. CPU at idle, {idle['params']['shards']} open shards",
                "≤ 5 % of a core",
                f"{v:.2f} %",
                common.verdict(v, 5.0, False),
                idle["recorded_at"],
            )
        )
    sqs = _load(folder, "sqs")
    if sqs is not None:
        v = sqs["summary"]["msgs_per_core_second"]["median"]
        out.append(
            (
                "7. SQS messages per core-second of daemon CPU",
                "≥ 10,000",
                f"{common.fmt(v)} ({sqs['summary']['daemon_cpu_us_per_msg']['median']:.0f} µs/message)",
                common.verdict(v, 10_000, True),
                sqs["recorded_at"],
            )
        )
    snap = _load(folder, "snapshot")
    if snap is not None:
        v = snap["ratio"]["of_medians"]
        out.append(
            (
                "8. DynamoDB snapshot items/s ÷ hand-written parallel scan + COPY",
                "≥ 0.8",
                f"{v:.2f} (pairs {snap['ratio']['pairs']})",
                common.verdict(v, 0.8, True),
                snap["recorded_at"],
            )
        )
    rep = _load(folder, "replicas")
    if rep is not None:
        s = rep["summary"]
        lease = rep["params"]["lease_seconds"]
        bound = lease + lease / 3 + 0.5
        v = s["read_again_s"]["median"]
        tput = ", ".join(f"{n}: {common.fmt(s['throughput'][n]['median'])}" for n in sorted(s["throughput"]))
        out.append(
            (
                f"10. SIGKILL of a replica → its shards read again ({lease:.0f} s leases, 12 shards)",
                f"≤ lease + renew period ({bound:.1f} s)",
                f"{v:.1f} s; records/s with 1, 2, 3 replicas: {tput}",
                common.verdict(v, bound, False),
                rep["recorded_at"],
            )
        )
    contain = _load(folder, "containment")
    if contain is not None:
        quiet = [c for c in contain["conditions"] if c["hogs"] == 0]
        for c in quiet:
            s = c["summary"]
            out.append(
                (
                    f"11. /healthz while bad records are contained ({c['database']}, no hog)",
                    "< 100 ms throughout",
                    f"p50 {s['p50'] * 1000:.1f} ms, p99 {s['p99'] * 1000:.0f} ms, slowest "
                    f"{s['max'] * 1000:.0f} ms; {s['over_target']} of {s['probes']} probes ≥ 100 ms",
                    "**met**" if s["over_target"] == 0 and not c["errors"] else "**not met**",
                    contain["recorded_at"],
                )
            )
    return out


def render(folder: Path) -> str:
    lines = [
        "## Summary",
        "",
        "| figure | target | measured (median of runs) | | recorded |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows(folder)]
    return "\n".join(lines)


def refresh(folder: Path) -> None:
    common.update_section(folder / "RESULTS.md", "summary", render(folder))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=common.BENCH_DIR)
    refresh(p.parse_args().out)


if __name__ == "__main__":
    main()
