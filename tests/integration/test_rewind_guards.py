"""A rewind or a replay against what runs the stream: a lease taken while the
rewind is being written, a daemon running without `coordination:`, and the
positions a rewind prints so that it can be undone.

Races are made deterministic, never timed: the test holds what the rewind's
write must wait for (the stream's checkpoint rows locked in PostgreSQL, the
DynamoDB write held at a proxy), acts, then lets the rewind go on.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from poller.coordination.dynamodb_store import DynamoDBLeaseStore
from poller.coordination.sql_store import SqlLeaseStore
from poller.fencing import new_token
from poller.records import TransientError
from poller.sinks.daemons import STALE_SECONDS
from tests.integration.test_operator_commands import (
    LEASE,
    _checkpointed,
    config_dir,
    count,
    handler_stream,
    kinesis_stream,
    make_table,
    new_kinesis,
    ok,
    poller,
    put,
)
from tests.support import db
from tests.support.daemon import Daemon, wait_for
from tests.support.fault_proxy import FaultProxy
from tests.support.servers import MotoServer
from tests.support.threaded import LoopThread

pytestmark = pytest.mark.integration


def _rewind_process(folder: Path, name: str) -> subprocess.Popen[str]:
    command = ("checkpoints", "--config", str(folder), "rewind", "--stream", name, "--trim-horizon")
    return subprocess.Popen(
        [sys.executable, "-m", "poller", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _blocked_by(dsn: str, pid: int) -> bool:
    """Some session waits for a lock the session `pid` holds."""
    return bool(
        db.scalar(
            "postgres",
            dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (pid,),
        )
    )


async def _sql_take(dsn: str, stream: str, shard: str, owner: str) -> bool:
    """A worker's take, through the lease store the workers use: False when it did not
    win (its bounded wait for a locked row ran out: it tries again next round)."""
    store = SqlLeaseStore("postgres", dsn)
    await store.open()
    try:
        lease = await store.get(stream, shard)
        assert lease is not None and lease.owner is None, lease
        try:
            return await store.take(stream, lease, owner, new_token()) is not None
        except TransientError:
            return False
    finally:
        await store.close()


def test_a_lease_taken_while_a_rewind_writes_is_never_silently_written_over(
    moto: MotoServer, pg_dsn: str
) -> None:
    """Leases in the sink's database. The rewind is stopped between its lease check and
    its write (this test holds the checkpoint rows locked), a worker takes the free
    lease meanwhile: either the take waits for the rewind (and its worker reads the
    rewound rows), or the rewind sees the take and is refused. Never both written."""
    kind, dsn = "postgres", pg_dsn
    kinesis, stream = new_kinesis(moto, 1)
    name = f"race_{uuid.uuid4().hex[:6]}"
    make_table(kind, dsn, name)
    cfg = kinesis_stream(
        name, kind, dsn, stream, moto.url, coordination={"lease_seconds": LEASE, "worker_id": "race-w1"}
    )
    _, last = put(kinesis, stream, [{"id": "r0", "n": 0}])
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: _checkpointed(kind, dsn, name) == last, 30, message="checkpoint")
    (shard,) = last  # SIGTERM released its lease: free, as a rewind wants it
    folder = config_dir(cfg)

    with db.connect(kind, dsn) as holder:
        with holder.transaction():
            holder.execute("SELECT * FROM poller_checkpoints WHERE stream = %s FOR UPDATE", (name,))
            rewind = _rewind_process(folder, name)
            pid = holder.info.backend_pid
            wait_for(lambda: _blocked_by(dsn, pid) or rewind.poll() is not None, 60, message="rewind waits")
            assert rewind.poll() is None, rewind.communicate()
            taken = asyncio.run(_sql_take(dsn, name, shard, "race-w2"))
        out, err = rewind.communicate(timeout=60)

    if taken:
        assert rewind.returncode == 1 and "'race-w2'" in err, (rewind.returncode, out, err)
        assert _checkpointed(kind, dsn, name) == last
    else:
        assert rewind.returncode == 0, err
        assert _checkpointed(kind, dsn, name) == {}  # rewound: the next take reads it
        owner = db.scalar(kind, dsn, "SELECT owner FROM poller_leases WHERE stream = %s", (name,))
        assert owner is None


def test_a_dynamodb_lease_taken_while_a_rewind_writes_fails_the_rewind(
    moto: MotoServer, tmp_path: Path
) -> None:
    """Checkpoints in the DynamoDB lease table. The rewind's write is held at a proxy
    after it checked the leases; a worker takes a lease meanwhile: the write is
    conditional on the counters the rewind saw, so the rewind fails (exit 1) and
    writes nothing rather than leave a worker reading from the rows it replaced."""
    kinesis, stream = new_kinesis(moto, 2)
    name = f"ddbrace_{uuid.uuid4().hex[:6]}"
    cfg = handler_stream(name, stream, moto, tmp_path)
    _, last = put(kinesis, stream, [{"id": f"h{i}"} for i in range(4)])
    env = {"HANDLER_LOG": str(tmp_path / "handled.jsonl")}
    folder = config_dir(cfg)

    def shown() -> dict[str, str | None]:
        rows = json.loads(ok("checkpoints", "--config", str(folder), "show", "--json"))[name]
        return {r["shard_id"]: r["sequence_number"] for r in rows}

    with Daemon([cfg], env=env) as d:
        d.wait_ready()
        wait_for(lambda: {k: v for k, v in shown().items() if v} == last, 30, message="checkpoints")
    before = shown()

    loop = LoopThread()
    proxy = FaultProxy(moto.url)
    proxy_url = loop.run(proxy.start())
    try:
        via_proxy = {**cfg, "coordination": {**cfg["coordination"], "endpoint_url": proxy_url}}
        writes = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"}
        loop.call(proxy.hold, writes)
        rewind = _rewind_process(config_dir(via_proxy), name)
        wait_for(
            lambda: sum(loop.call(lambda: dict(proxy.held)).values()) > 0 or rewind.poll() is not None,
            60,
            message="the rewind's write reaches the proxy",
        )
        assert rewind.poll() is None, rewind.communicate()
        taken = asyncio.run(_ddb_take(cfg, moto.url, name, sorted(last)[0], "ddb-w2"))
        assert taken
        loop.call(proxy.release)
        out, err = rewind.communicate(timeout=60)
    finally:
        loop.run(proxy.stop())
        loop.close()
    assert rewind.returncode == 1, (out, err)
    assert "not rewound" in err and sorted(last)[0] in err, err
    assert shown() == before  # nothing of it written


async def _ddb_take(cfg: dict[str, Any], endpoint: str, stream: str, shard: str, owner: str) -> bool:
    c = cfg["coordination"]
    store = DynamoDBLeaseStore(c["table"], c["region"], endpoint)
    await store.open()
    try:
        lease = await store.get(stream, shard)
        assert lease is not None and lease.owner is None, lease
        return await store.take(stream, lease, owner, new_token()) is not None
    finally:
        await store.close()


def test_rewind_and_replay_are_refused_while_a_daemon_runs_the_stream(
    moto: MotoServer, database: tuple[str, str]
) -> None:
    """No `coordination:`: a running daemon keeps its place in memory. Rewind and replay
    are refused (exit 1) naming its host, pid and start; `--force` goes through; once it
    stopped (SIGTERM) they go through at once."""
    kind, dsn = database
    kinesis, stream = new_kinesis(moto, 1)
    name = f"live_{kind}_{uuid.uuid4().hex[:6]}"
    make_table(kind, dsn, name, check=True)
    cfg = kinesis_stream(name, kind, dsn, stream, moto.url)
    _, last = put(kinesis, stream, [{"id": "ok", "n": 1}, {"id": "neg", "n": -1}])
    folder = config_dir(cfg)
    rewind = ("checkpoints", "--config", str(folder), "rewind", "--stream", name, "--trim-horizon")
    replay = ("failures", "--config", str(folder), "replay", "--stream", name, "--json")
    failures_sql = f"SELECT count(*) FROM poller_failures WHERE stream = '{name}'"
    host = socket.gethostname()

    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: count(kind, dsn, failures_sql) == 1, 30, message="the failure row")
        wait_for(lambda: _checkpointed(kind, dsn, name) == last, 30, message="checkpoint")
        assert d.proc is not None
        names_it = f"host {host!r}, pid {d.proc.pid} (since "

        refused = poller(*rewind)
        assert refused.returncode == 1, refused
        assert "not rewound" in refused.stderr and names_it in refused.stderr, refused.stderr
        (error,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert "--force" in error and names_it in error
        assert _checkpointed(kind, dsn, name) == last  # nothing written
        refused = poller(*replay)
        assert refused.returncode == 1 and "not replayed" in refused.stderr, refused.stderr
        assert names_it in refused.stderr
        assert count(kind, dsn, failures_sql) == 1

        forced = poller(*replay, "--force")
        assert forced.returncode == 0, forced.stderr
        assert len(json.loads(forced.stdout)["failed_again"]) == 1  # the CHECK still stands
        assert "warning:" in forced.stderr and names_it in forced.stderr
        forced = poller(*rewind, "--force")
        assert forced.returncode == 0 and names_it in forced.stderr, forced.stderr
    ok(*replay)
    ok(*rewind)


def test_a_killed_daemon_blocks_a_rewind_only_until_its_row_is_stale(moto: MotoServer, pg_dsn: str) -> None:
    kind, dsn = "postgres", pg_dsn
    kinesis, stream = new_kinesis(moto, 1)
    name = f"killed_{uuid.uuid4().hex[:6]}"
    make_table(kind, dsn, name)
    cfg = kinesis_stream(name, kind, dsn, stream, moto.url)
    _, last = put(kinesis, stream, [{"id": "a", "n": 1}])
    folder = config_dir(cfg)
    dry = ("checkpoints", "--config", str(folder), "rewind", "--stream", name, "--trim-horizon", "--dry-run")
    d = Daemon([cfg]).start()
    try:
        d.wait_ready()
        wait_for(lambda: _checkpointed(kind, dsn, name) == last, 30, message="checkpoint")
        d.kill()
        # Renewed within the last few seconds when killed: still counted as running.
        assert poller(*dry).returncode == 1
        # Generous: STALE_SECONDS is the bound; a loaded machine only makes the wait look longer.
        wait_for(lambda: poller(*dry).returncode == 0, STALE_SECONDS + 30, interval=1, message="stale")
    finally:
        d.stop()
    assert _checkpointed(kind, dsn, name) == last  # dry runs wrote nothing


def test_a_rewind_prints_the_positions_it_replaces(moto: MotoServer, pg_dsn: str) -> None:
    """Per row: the stored sequence number, sub-sequence and state before → after, in
    text and JSON, so that the rewind can be undone; `--dry-run` prints the same and
    writes nothing."""
    kind, dsn = "postgres", pg_dsn
    kinesis, stream = new_kinesis(moto, 2)
    name = f"undo_{uuid.uuid4().hex[:6]}"
    make_table(kind, dsn, name)
    cfg = kinesis_stream(name, kind, dsn, stream, moto.url)
    _, last = put(kinesis, stream, [{"id": f"u{i}", "n": i} for i in range(8)])
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(lambda: _checkpointed(kind, dsn, name) == last, 30, message="checkpoints")
    folder = config_dir(cfg)
    rewind = ("checkpoints", "--config", str(folder), "rewind", "--stream", name, "--trim-horizon")
    stored = {
        r[0]: (r[1], int(r[2]), r[3])
        for r in db.fetch(
            kind,
            dsn,
            "SELECT shard_id, sequence_number, sub_sequence, state FROM poller_checkpoints WHERE stream = %s",
            (name,),
        )
    }

    dry = ok(*rewind, "--dry-run")
    assert "dry run, nothing written" in dry
    assert _checkpointed(kind, dsn, name) == last
    changes = {c["shard_id"]: c for c in json.loads(ok(*rewind, "--json", "--dry-run"))}
    for shard, (sequence, sub, state) in stored.items():
        assert changes[shard]["old"] == {"sequence_number": sequence, "sub_sequence": sub, "state": state}
    assert _checkpointed(kind, dsn, name) == last

    text = ok(*rewind)
    for shard, (sequence, sub, state) in stored.items():
        line = next(line for line in text.splitlines() if line.split()[:1] == [shard])
        assert f"{sequence}/{sub} {state}" in line, text
    assert "start at 1970-01-01" in text
    assert _checkpointed(kind, dsn, name) == {}
