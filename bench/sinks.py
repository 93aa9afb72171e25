"""Figure 3: sink throughput against hand-written database code.

The poller side drives the real sink classes as the pipeline does: per record
`sink.coerce(mapper.ops(record))` (mapping through `columns` + per-column coercion), then
per batch `sink.commit(Transaction(ops, checkpoints=[...]))` — rows and a
checkpoint in one transaction.

The hand-written side gets the same decoded records and batch size and does the
least a careful engineer would for the same exactly-once result:
- PostgreSQL (asyncpg): build tuples by hand, binary COPY into a TEMP table
  (`ON COMMIT DELETE ROWS`), `INSERT ... SELECT ... ON CONFLICT DO UPDATE`,
  upsert one checkpoint row, commit.
- MySQL/MariaDB (aiomysql): build tuples by hand, `executemany` of
  `INSERT ... ON DUPLICATE KEY UPDATE c = VALUES(c)`, upsert one checkpoint
  row, commit.

Every run writes new rows into an emptied table; runs alternate sides (and
which side goes first), and the figure is the median of the runs and the
ratio poller / hand-written.

    .venv/bin/python -m bench.sinks [--rows 100000] [--batch 500] [--runs 5] [--db postgres,mysql]
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiomysql
import asyncpg

from bench import common
from bench.payloads import COLUMNS, KEY, mysql_table_sql, order, pg_table_sql
from poller.processing.mapping import Mapper
from poller.records import KINESIS, Checkpoint, Record
from poller.sinks.base import SqlSink, Transaction
from poller.sinks.mysql import MysqlSink, parse_dsn
from poller.sinks.postgres import PostgresSink

STREAM = "bench_sink"
SHARD = "shardId-000000000000"
COLS = list(COLUMNS)
TARGET = 0.8


def make_records(n: int) -> list[Record]:
    return [
        Record(
            source=KINESIS,
            stream=STREAM,
            shard_id=SHARD,
            sequence_number=str(10**20 + i),
            data=order(i),
            partition_key=f"pk-{i}",
            arrival_time=1.7e9,
        )
        for i in range(n)
    ]


def batches(records: list[Record], size: int) -> list[list[Record]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


# --------------------------------------------------------------------------- poller side


async def run_poller_sink(sink: SqlSink, mapper: Mapper, parts: list[list[Record]]) -> None:
    for part in parts:
        ops = []
        for r in part:
            ops.extend(sink.coerce(mapper.ops(r)))
        last = part[-1]
        await sink.commit(
            Transaction(
                stream=STREAM,
                ops=ops,
                checkpoints=[Checkpoint(STREAM, SHARD, last.sequence_number, 0)],
            )
        )


# --------------------------------------------------------------------------- hand-written


def _ts(s: str) -> datetime:
    return datetime.fromisoformat(s)


class HandPostgres:
    def __init__(self, dsn: str, table: str):
        self.dsn = dsn
        self.table = table
        self.conn: asyncpg.Connection | None = None

    async def open(self) -> None:
        self.conn = await asyncpg.connect(self.dsn)
        await self.conn.execute(
            f"CREATE TEMP TABLE hand_stage (LIKE {self.table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await self.conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_hand_checkpoints "
            "(stream text, shard_id text, sequence_number text, PRIMARY KEY (stream, shard_id))"
        )
        cols = ", ".join(COLS)
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLS if c not in KEY)
        self.merge = (
            f"INSERT INTO {self.table} ({cols}) SELECT {cols} FROM hand_stage "
            f"ON CONFLICT (order_id) DO UPDATE SET {sets}"
        )
        self.checkpoint = (
            "INSERT INTO bench_hand_checkpoints VALUES ($1, $2, $3) "
            "ON CONFLICT (stream, shard_id) DO UPDATE SET sequence_number = EXCLUDED.sequence_number"
        )

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def run(self, parts: list[list[Record]]) -> None:
        conn = self.conn
        assert conn is not None
        for part in parts:
            rows = [
                (
                    d["order_id"],
                    d["customer"],
                    d["status"],
                    d["amount"],
                    _ts(d["created_at"]),
                    d["items"],
                    d["note"],
                )
                for d in (r.data for r in part)
            ]
            async with conn.transaction():
                await conn.copy_records_to_table("hand_stage", records=rows, columns=COLS)
                await conn.execute(self.merge)
                await conn.execute(self.checkpoint, STREAM, SHARD, part[-1].sequence_number)


class HandMysql:
    def __init__(self, dsn: str, table: str):
        self.args = parse_dsn(dsn)
        self.table = table
        self.conn: Any = None

    async def open(self) -> None:
        self.conn = await aiomysql.connect(**self.args, autocommit=False)
        async with self.conn.cursor() as cur:
            await cur.execute("SET time_zone = '+00:00'")
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS bench_hand_checkpoints (stream VARCHAR(64), "
                "shard_id VARCHAR(64), sequence_number VARCHAR(64), PRIMARY KEY (stream, shard_id))"
            )
        await self.conn.commit()
        cols = ", ".join(COLS)
        sets = ", ".join(f"{c} = VALUES({c})" for c in COLS if c not in KEY)
        ph = ", ".join(["%s"] * len(COLS))
        self.upsert = f"INSERT INTO {self.table} ({cols}) VALUES ({ph}) ON DUPLICATE KEY UPDATE {sets}"
        self.checkpoint = (
            "INSERT INTO bench_hand_checkpoints VALUES (%s, %s, %s) "
            "ON DUPLICATE KEY UPDATE sequence_number = VALUES(sequence_number)"
        )

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    async def run(self, parts: list[list[Record]]) -> None:
        conn = self.conn
        async with conn.cursor() as cur:
            for part in parts:
                rows = [
                    (
                        d["order_id"],
                        d["customer"],
                        d["status"],
                        d["amount"],
                        _ts(d["created_at"]).astimezone(UTC).replace(tzinfo=None),
                        d["items"],
                        d["note"],
                    )
                    for d in (r.data for r in part)
                ]
                await cur.executemany(self.upsert, rows)
                await cur.execute(self.checkpoint, (STREAM, SHARD, part[-1].sequence_number))
                await conn.commit()


# --------------------------------------------------------------------------- driver


async def _pg_exec(*sql: str) -> None:
    conn = await asyncpg.connect(common.PG_DSN)
    try:
        for s in sql:
            await conn.execute(s)
    finally:
        await conn.close()


async def _my_exec(*sql: str) -> None:
    conn = await aiomysql.connect(**parse_dsn(common.MYSQL_DSN), autocommit=True)
    try:
        async with conn.cursor() as cur:
            for s in sql:
                await cur.execute(s)
    finally:
        conn.close()


async def _timed(fn: Callable[[], Awaitable[None]], rows: int) -> tuple[float, float]:
    """(rows per second, client CPU µs per row) of one run."""
    gc.collect()
    cpu0, t0 = common.cpu_seconds(), time.perf_counter()
    await fn()
    wall, cpu = time.perf_counter() - t0, common.cpu_seconds() - cpu0
    return rows / wall, cpu / rows * 1e6


async def bench_db(db: str, rows: int, batch: int, runs: int) -> dict[str, Any]:
    records = make_records(rows)
    parts = batches(records, batch)
    warm = parts[: max(1, min(len(parts), 4))]
    ours_table, hand_table = f"bench_sink_{db}", f"bench_hand_{db}"
    exec_sql = _pg_exec if db == "postgres" else _my_exec
    table_sql = pg_table_sql if db == "postgres" else mysql_table_sql
    await exec_sql(*table_sql(ours_table), *table_sql(hand_table))
    mapper = Mapper(COLUMNS, KEY)
    sink: SqlSink
    hand: HandPostgres | HandMysql
    if db == "postgres":
        sink = PostgresSink(common.PG_DSN, mapper, ours_table, pool_size=1)
        hand = HandPostgres(common.PG_DSN, hand_table)
    else:
        sink = MysqlSink(common.MYSQL_DSN, mapper, ours_table, pool_size=1)
        hand = HandMysql(common.MYSQL_DSN, hand_table)
    await sink.open()
    await hand.open()
    truncate = "TRUNCATE TABLE {}"
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    try:
        await run_poller_sink(sink, mapper, warm)
        await hand.run(warm)
        for run in range(runs):
            order_ = ("poller", "hand") if run % 2 == 0 else ("hand", "poller")
            for side in order_:
                if side == "poller":
                    await exec_sql(truncate.format(ours_table))
                    ours.append(await _timed(lambda: run_poller_sink(sink, mapper, parts), rows))
                else:
                    await exec_sql(truncate.format(hand_table))
                    theirs.append(await _timed(lambda: hand.run(parts), rows))
    finally:
        await sink.close()
        await hand.close()
    ours_rate, theirs_rate = [o[0] for o in ours], [t[0] for t in theirs]
    return {
        "rows": rows,
        "batch": batch,
        "poller_rows_per_s": common.summary(ours_rate),
        "hand_rows_per_s": common.summary(theirs_rate),
        "ratio": common.ratio(ours_rate, theirs_rate),
        "poller_client_cpu_us_per_row": common.summary([o[1] for o in ours]),
        "hand_client_cpu_us_per_row": common.summary([t[1] for t in theirs]),
    }


def render(r: dict[str, Any]) -> str:
    lines = [
        "## Figure 3 — sink throughput against hand-written code",
        "",
        f"Recorded {r['recorded_at']} with `{r['command']}`.",
        f"{r['params']['rows']:,} new rows of ~200 B JSON, batches of {r['params']['batch']}, "
        f"{r['params']['runs']} interleaved runs per side; rows + one checkpoint per transaction "
        "on both sides.",
        "",
        "| database | poller rows/s (median) | hand-written rows/s (median) | ratio (of medians; "
        "median of pairs) | target | client CPU µs/row poller / hand |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for db, d in r["databases"].items():
        rr = d["ratio"]
        lines.append(
            f"| {db} ({'asyncpg COPY + merge' if db == 'postgres' else 'aiomysql executemany upsert'}) "
            f"| {common.fmt(d['poller_rows_per_s']['median'])} "
            f"| {common.fmt(d['hand_rows_per_s']['median'])} "
            f"| {common.fmt(rr['of_medians'])}; {common.fmt(rr['median_of_pairs'])} "
            f"| ≥ {TARGET} {common.verdict(rr['of_medians'], TARGET, True)} "
            f"| {common.fmt(d['poller_client_cpu_us_per_row']['median'], 1)} / "
            f"{common.fmt(d['hand_client_cpu_us_per_row']['median'], 1)} |"
        )
    lines += ["", f"Machine: {common.machine_line(r['machine'])}."]
    return "\n".join(lines)


async def amain() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--db", default="postgres,mysql")
    args = p.parse_args()
    if args.smoke:
        args.rows, args.runs = min(args.rows, 2_000), 1
    folder = common.out_dir(args)
    m = common.machine()
    m["databases"] = await common.database_versions()
    result: dict[str, Any] = {
        "params": {"rows": args.rows, "batch": args.batch, "runs": args.runs, "smoke": args.smoke},
        "machine": m,
        "databases": {},
    }
    for db in [d.strip() for d in args.db.split(",") if d.strip()]:
        d = await bench_db(db, args.rows, args.batch, args.runs)
        result["databases"][db] = d
        print(
            f"{db}: poller {d['poller_rows_per_s']['median']:,.0f} rows/s, "
            f"hand-written {d['hand_rows_per_s']['median']:,.0f} rows/s, "
            f"ratio {d['ratio']['of_medians']} (pairs {d['ratio']['pairs']}); "
            f"client CPU µs/row {d['poller_client_cpu_us_per_row']['median']} vs "
            f"{d['hand_client_cpu_us_per_row']['median']}",
            flush=True,
        )
    path = common.record("sinks", result, render, folder)
    print(f"recorded {path}")


def main() -> None:
    asyncio.run(amain())


if __name__ == "__main__":
    main()
