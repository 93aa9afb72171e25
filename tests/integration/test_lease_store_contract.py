"""One contract for every lease store, run against the real PostgreSQL and
MariaDB (the table `poller_leases`, created by the sink), SQLite, and DynamoDB
on moto's server: every write is conditional on the counter, concurrent
takers of one lease have exactly one winner, the stored start is written once,
and a commit made under a lease that passed to another worker writes nothing.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from poller.config import parse_stream
from poller.coordination import Lease, LeaseCoordinator, LeaseStore, kept_checkpoints
from poller.coordination.dynamodb_store import DynamoDBLeaseStore
from poller.coordination.sql_store import SqlLeaseStore
from poller.fencing import Fence, Fenced, Tenure, new_token
from poller.observability import metrics
from poller.records import Checkpoint, ShardState
from poller.sink_api import MessageWrite, Transaction
from poller.sinks.base import SqlSink
from poller.sinks.factory import build_sink, checkpoint_store
from tests.support import db
from tests.support.fault_proxy import DYNAMODB_ITEM_WRITES, FaultProxy
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration


@dataclass
class Backend:
    """A kind of lease store: `store()` opens one more worker's view of it;
    `sink` is where commits go (the same database, or for DynamoDB a SQLite
    checkpoint store whose checkpoints the lease store keeps)."""

    kind: str
    store: Callable[[], LeaseStore]
    sink: SqlSink


@pytest.fixture(params=["postgres", "mysql", "sqlite", "dynamodb"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, moto: MotoServer) -> AsyncIterator[Backend]:
    kind = request.param
    proxy: FaultProxy | None = None
    if kind == "dynamodb":
        sink = checkpoint_store(str(tmp_path / "checkpoints.sqlite"))
        table = f"leases-{uuid.uuid4().hex[:8]}"
        # Item writes one at a time, as DynamoDB makes them (moto may let two
        # concurrent conditional writes both succeed).
        proxy = FaultProxy(moto.url, serialize=DYNAMODB_ITEM_WRITES)
        url = await proxy.start()
        backend = Backend(kind, lambda: DynamoDBLeaseStore(table, "us-east-1", url), sink)
    else:
        dsn = {
            "postgres": lambda: request.getfixturevalue("pg_dsn"),
            "mysql": lambda: request.getfixturevalue("mysql_dsn"),
            "sqlite": lambda: str(tmp_path / "leases.sqlite"),
        }[kind]()
        sink = checkpoint_store(dsn)  # the sink creates poller_leases with its other tables
        backend = Backend(kind, lambda: SqlLeaseStore(kind, dsn), sink)
    await sink.open()
    try:
        yield backend
    finally:
        await sink.close()
        if proxy is not None:
            await proxy.stop()


@pytest.fixture
async def stores(backend: Backend) -> AsyncIterator[tuple[LeaseStore, LeaseStore]]:
    """Two workers' connections to one store."""
    a, b = backend.store(), backend.store()
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def stream() -> str:
    return f"contract-{uuid.uuid4().hex[:8]}"


async def test_a_lease_is_created_once_free_with_its_parents(stores: tuple[LeaseStore, LeaseStore]) -> None:
    a, b = stores
    s = stream()
    await a.create(s, "shard-1", ("shard-0",))
    await b.create(s, "shard-1", ())  # exists: nothing changes
    assert await a.list_leases(s) == [Lease("shard-1", None, 0, ("shard-0",))]
    assert await b.get(s, "shard-1") == Lease("shard-1", None, 0, ("shard-0",))
    assert await b.get(s, "shard-2") is None
    assert await a.list_leases(stream()) == []


async def test_take_renew_release_and_end_are_conditional_on_the_counter(
    stores: tuple[LeaseStore, LeaseStore],
) -> None:
    a, b = stores
    s = stream()
    await a.create(s, "shard-1", ())
    seen = await b.get(s, "shard-1")
    assert seen is not None
    ta, tb, ta2 = new_token(), new_token(), new_token()
    taken = await a.take(s, seen, "worker-a", ta)
    assert taken == Lease("shard-1", "worker-a", 1, token=ta)
    assert await b.take(s, seen, "worker-b", tb) is None  # the counter moved: b's view is stale

    renewed = await a.renew(s, taken)
    assert renewed == Lease("shard-1", "worker-a", 2, token=ta)
    assert await a.renew(s, taken) is None  # stale counter
    assert await b.renew(s, Lease("shard-1", "worker-b", 2, token=tb)) is None  # not the owner
    assert not await b.release(s, Lease("shard-1", "worker-b", 2, token=tb))

    stolen = await b.take(s, renewed, "worker-b", tb)  # what a steal or an expired take does
    assert stolen == Lease("shard-1", "worker-b", 3, token=tb)
    assert await a.renew(s, renewed) is None  # a's renewal finds it lost
    assert await a.get(s, "shard-1") == stolen

    assert await b.release(s, stolen)
    assert await a.get(s, "shard-1") == Lease("shard-1", None, 4)  # owner and token cleared
    again = await a.take(s, Lease("shard-1", None, 4), "worker-a", ta2)
    assert again == Lease("shard-1", "worker-a", 5, token=ta2)
    assert not await a.end(s, Lease("shard-1", "worker-a", 4, token=ta2))  # stale counter
    assert await a.end(s, again)
    ended = await b.get(s, "shard-1")
    assert ended == Lease("shard-1", None, 6, (), ended=True)
    assert await b.take(s, ended, "worker-b", tb) is None  # an ended lease is never taken again


async def test_delete_is_conditional_on_the_counter(stores: tuple[LeaseStore, LeaseStore]) -> None:
    a, b = stores
    s = stream()
    await a.create(s, "gone", ())
    taken = await a.take(s, Lease("gone"), "worker-a", new_token())
    assert taken is not None
    assert not await b.delete(s, Lease("gone"))  # counter 0 was seen; it is 1 now
    assert await b.delete(s, taken)
    assert await a.list_leases(s) == []


async def test_of_many_concurrent_takers_exactly_one_wins(backend: Backend) -> None:
    workers = [backend.store() for _ in range(5)]
    await asyncio.gather(*(w.open() for w in workers))
    try:
        s = stream()
        await workers[0].create(s, "contested", ())
        results = await asyncio.gather(
            *(w.take(s, Lease("contested"), f"worker-{i}", new_token()) for i, w in enumerate(workers))
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await workers[0].get(s, "contested") == winners[0]
    finally:
        await asyncio.gather(*(w.close() for w in workers))


async def test_the_stored_start_is_the_first_one_written(stores: tuple[LeaseStore, LeaseStore]) -> None:
    a, b = stores
    s = stream()
    first = Checkpoint(s, "#start", datetime(2024, 5, 1, 12, 0, tzinfo=UTC).isoformat())
    later = Checkpoint(s, "#start", datetime(2024, 5, 1, 12, 0, 3, tzinfo=UTC).isoformat())
    assert (await a.keep_row(first)).sequence_number == first.sequence_number
    assert (await b.keep_row(later)).sequence_number == first.sequence_number


async def test_a_commit_under_a_lease_that_passed_on_writes_nothing(
    backend: Backend, stores: tuple[LeaseStore, LeaseStore]
) -> None:
    """The fencing check: the zombie's transaction (a processed id and a checkpoint
    here) rolls back whole and raises Fenced; the new holder's commits go through."""
    a, b = stores
    sink = backend.sink
    s = stream()
    await a.create(s, "shard-1", ())
    zombie_tenure = Tenure()
    held = await a.take(s, Lease("shard-1"), "zombie", zombie_tenure.token)
    assert held is not None
    keeper = kept_checkpoints(a)
    zombie = Fence("shard-1", "zombie", held.counter, keeper, zombie_tenure)

    def commit(fence: Fence, sequence: str, message: str) -> Transaction:
        row = Checkpoint(s, "shard-1", sequence, 0, ShardState.RUNNING)
        return Transaction(stream=s, checkpoints=[row], messages=[MessageWrite(message, [])], fence=fence)

    async def checkpoint() -> str | None:
        where = kept_checkpoints(b) or sink
        rows = await where.load_checkpoints(s)
        return rows["shard-1"].sequence_number if "shard-1" in rows else None

    await sink.commit(commit(zombie, "100", "m-1"))
    renewed = await a.renew(s, held)
    assert renewed is not None
    await sink.commit(commit(zombie, "110", "m-2"))  # renewals keep the fence valid
    assert await checkpoint() == "110"

    successor_tenure = Tenure()
    taken = await b.take(s, renewed, "successor", successor_tenure.token)  # expired elsewhere
    assert taken is not None
    successor = Fence("shard-1", "successor", taken.counter, kept_checkpoints(b), successor_tenure)
    await sink.commit(commit(successor, "120", "m-3"))

    with pytest.raises(Fenced) as refused:
        await sink.commit(commit(zombie, "115", "m-4"))
    assert refused.value.holder == "successor"
    assert await checkpoint() == "120"  # no regression
    assert await sink.processed_ids(s, ["m-1", "m-2", "m-3", "m-4"]) == {"m-1", "m-2", "m-3"}

    assert await b.release(s, taken)
    with pytest.raises(Fenced):
        await sink.commit(commit(zombie, "116", "m-5"))  # released: no one's, still not the zombie's
    with pytest.raises(Fenced):
        await sink.commit(commit(Fence("shard-1", "zombie", 0, keeper, Tenure()), "117", "m-6"))  # never held
    assert await checkpoint() == "120"


@pytest.mark.parametrize("backend", ["postgres", "mysql", "dynamodb"], indirect=True)  # SQLite never steals
async def test_a_shard_still_read_here_is_not_taken_back_until_its_worker_stopped(
    backend: Backend, stores: tuple[LeaseStore, LeaseStore]
) -> None:
    """A worker that wakes from a pause finds both its leases taken and their
    workers still stopping: it steals neither back (their stale commits would
    carry a fence naming it again); once they stopped, it steals one, under a
    new counter."""
    a, b = stores
    s = stream()
    coordinator = LeaseCoordinator(s, a, "paused", 3.0, rng=random.Random(1))
    coordinator.want({"x": (), "y": ()}, {"x", "y"})
    await coordinator.round()
    assert coordinator.holding() == {"x", "y"}
    before = {shard: coordinator.fence(shard) for shard in ("x", "y")}
    coordinator.running = lambda: {"x", "y"}  # their workers have not stopped yet

    for shard in ("x", "y"):  # taken elsewhere while it was paused
        current = await b.get(s, shard)
        assert current is not None and await b.take(s, current, "other", new_token()) is not None
    await coordinator.round()
    assert coordinator.take_lost() == {"x", "y"}
    assert coordinator.holding() == set()
    assert not any(f is not None and f.current() for f in before.values())  # their tenures are over
    assert {lease.owner for lease in await b.list_leases(s)} == {"other"}

    coordinator.running = lambda: ()  # both stopped
    await coordinator.round()
    (stolen,) = coordinator.holding()
    fence = coordinator.fence(stolen)
    old = before[stolen]
    assert fence is not None and old is not None and fence.counter > old.counter


async def test_a_commit_of_a_tenure_that_is_over_is_refused_though_the_lease_names_its_owner_again(
    backend: Backend, stores: tuple[LeaseStore, LeaseStore]
) -> None:
    """Lost, then taken back by the same worker id: the row names that owner with
    a higher counter, which the old tenure's fence alone would accept."""
    a, b = stores
    sink = backend.sink
    s = stream()
    await a.create(s, "shard-1", ())
    old_tenure = Tenure()
    first = await a.take(s, Lease("shard-1"), "w", old_tenure.token)
    assert first is not None
    old = Fence("shard-1", "w", first.counter, kept_checkpoints(a), old_tenure)

    def commit(fence: Fence, sequence: str) -> Transaction:
        return Transaction(
            stream=s, checkpoints=[Checkpoint(s, "shard-1", sequence, 0, ShardState.RUNNING)], fence=fence
        )

    await sink.commit(commit(old, "100"))
    old_tenure.end()  # lost
    other = await b.take(s, first, "other", new_token())
    assert other is not None
    new_tenure = Tenure()
    again = await a.take(s, other, "w", new_tenure.token)
    assert again is not None and again.owner == "w"
    new = Fence("shard-1", "w", again.counter, kept_checkpoints(a), new_tenure)
    await sink.commit(commit(new, "200"))

    with pytest.raises(Fenced, match="is over"):
        await sink.commit(commit(old, "150"))
    rows = await (kept_checkpoints(b) or sink).load_checkpoints(s)
    assert rows["shard-1"].sequence_number == "200"


async def test_a_replica_frozen_mid_commit_is_cut_off_by_the_database(database: tuple[str, str]) -> None:
    """With `coordination:` a database sink's sessions may not sit idle inside a
    transaction past three lease periods: the server ends them, and with them the
    locks a frozen replica would hold over its successor's commits."""
    kind, dsn = database
    db.execute(kind, dsn, "DROP TABLE IF EXISTS frozen_t")
    db.execute(kind, dsn, "CREATE TABLE frozen_t (id VARCHAR(20) PRIMARY KEY)")
    sink_cfg = {"type": kind, "dsn": dsn, "table": "frozen_t", "key": ["id"], "columns": {"id": "data.id"}}
    source = {"type": "kinesis", "stream": "s"}

    async def idle_limit(coordination: dict[str, object] | None) -> int:
        data: dict[str, object] = {"name": "frozen", "source": source, "sink": sink_cfg}
        if coordination is not None:
            data["coordination"] = coordination
        sink = build_sink(parse_stream(data, "frozen.yaml", env={}), None)
        assert isinstance(sink, SqlSink)
        await sink.open()
        try:
            async with sink.transaction() as conn:
                if kind == "postgres":
                    setting = (
                        "SELECT setting FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout'"
                    )
                    return int(await conn.fetchval(setting)) // 1000
                await conn.execute("SELECT @@SESSION.idle_transaction_timeout")
                return int((await conn.fetchone())[0])
        finally:
            await sink.close()

    assert await idle_limit({"lease_seconds": 20}) == 60
    assert await idle_limit({"lease_seconds": 3}) == 30
    assert await idle_limit(None) == 0  # one worker: nothing to wait on it


@pytest.mark.parametrize("backend", ["postgres", "mysql", "dynamodb"], indirect=True)
async def test_a_stopping_worker_renews_what_it_holds_and_takes_nothing_more(
    stores: tuple[LeaseStore, LeaseStore],
) -> None:
    """While its workers finish their batches on SIGTERM: a steal would stop a
    victim's worker for a lease released moments later."""
    a, b = stores
    s = stream()
    coordinator = LeaseCoordinator(s, a, "leaving", 3.0, rng=random.Random(2))
    coordinator.want({"x": ()}, {"x"})
    await coordinator.round()
    assert coordinator.holding() == {"x"}
    counter = (await b.get(s, "x")).counter  # type: ignore[union-attr]
    for shard in ("y", "z"):  # free leases appear while it drains
        await b.create(s, shard, ())
    coordinator.want({"x": (), "y": (), "z": ()}, {"x", "y", "z"})
    coordinator.draining = True
    await coordinator.round()
    assert coordinator.holding() == {"x"}
    leases = {lease.shard_id: lease for lease in await b.list_leases(s)}
    assert leases["x"].counter == counter + 1  # renewed
    assert leases["y"].owner is None and leases["z"].owner is None


# --------------------------------------------------------------------------- tenure tokens


def _commit(s: str, fence: Fence, sequence: str, message: str) -> Transaction:
    row = Checkpoint(s, "shard-1", sequence, 0, ShardState.RUNNING)
    return Transaction(stream=s, checkpoints=[row], messages=[MessageWrite(message, [])], fence=fence)


async def test_a_namesake_under_another_token_can_neither_write_the_lease_nor_commit(
    backend: Backend, stores: tuple[LeaseStore, LeaseStore]
) -> None:
    """Two processes sharing one worker_id: the row names them both alike, but only
    the tenure whose token the take wrote may renew, release, end or commit."""
    a, b = stores
    sink = backend.sink
    s = stream()
    await a.create(s, "shard-1", ())
    holder, namesake = Tenure(), Tenure()
    held = await a.take(s, Lease("shard-1"), "shared-id", holder.token)
    assert held is not None and held.token == holder.token
    impostor = replace(held, token=namesake.token)  # same name, same counter, another tenure
    assert await b.renew(s, impostor) is None
    assert not await b.release(s, impostor)
    assert not await b.end(s, impostor)
    assert await b.get(s, "shard-1") == held

    mine = Fence("shard-1", "shared-id", held.counter, kept_checkpoints(a), holder)
    theirs = Fence("shard-1", "shared-id", held.counter, kept_checkpoints(b), namesake)
    await sink.commit(_commit(s, mine, "100", "m-1"))
    with pytest.raises(Fenced):
        await sink.commit(_commit(s, theirs, "200", "m-2"))
    renewed = await a.renew(s, held)
    assert renewed is not None and renewed.token == holder.token
    with pytest.raises(Fenced):  # a higher counter under the same name changes nothing
        await sink.commit(_commit(s, theirs, "300", "m-3"))
    await sink.commit(_commit(s, mine, "110", "m-4"))

    rows = await (kept_checkpoints(b) or sink).load_checkpoints(s)
    assert rows["shard-1"].sequence_number == "110"
    assert await sink.processed_ids(s, ["m-1", "m-2", "m-3", "m-4"]) == {"m-1", "m-4"}


OTHER_PROCESS = "otherhost/4242/0badcafe/"  # a token prefix no process here draws


@pytest.mark.parametrize("backend", ["postgres", "mysql", "dynamodb"], indirect=True)
async def test_a_live_namesake_raises_the_duplicate_alarm_and_nothing_is_taken_until_it_expires(
    stores: tuple[LeaseStore, LeaseStore],
) -> None:
    """Another process renews a lease under this worker's id: the coordinator
    counts the alarm and takes nothing (not even a free lease) while it lasts;
    once the namesake stops renewing, its lease expires and is taken as anyone's."""
    a, b = stores
    s = stream()
    now = [0.0]
    coordinator = LeaseCoordinator(s, a, "shared-id", 3.0, clock=lambda: now[0], rng=random.Random(3))
    await b.create(s, "x", ())
    other = await b.take(s, Lease("x"), "shared-id", OTHER_PROCESS + "0123456789abcdef")
    assert other is not None
    coordinator.want({"x": ()}, {"x"})
    alarms = metrics.LEASE_EVENTS.labels(s, "duplicate_id")

    await coordinator.round()  # first sight: not known to be live yet
    await b.create(s, "free", ())
    coordinator.want({"x": (), "free": ()}, {"x", "free"})
    for _ in range(3):
        now[0] += 1.0
        renewed = await b.renew(s, other)
        assert renewed is not None
        other = renewed
        await coordinator.round()
        assert coordinator.holding() == set()  # not even the free one
        assert metrics.DUPLICATE_WORKER_ID.labels(s)._value.get() == 1
    assert alarms._value.get() == 1  # one error line a minute, not one a round
    assert (await b.get(s, "x")) == other  # never taken from the live namesake

    now[0] += 3.0  # the namesake stopped renewing: its lease expires
    await coordinator.round()
    assert metrics.DUPLICATE_WORKER_ID.labels(s)._value.get() == 0
    now[0] += 3.0
    await coordinator.round()
    assert coordinator.holding() == {"x", "free"}
    x = await b.get(s, "x")
    assert x is not None and x.token is not None and x.token != other.token


@pytest.mark.parametrize("backend", ["postgres", "mysql", "sqlite"], indirect=True)  # DynamoDB: no schema
async def test_a_lease_table_of_an_older_poller_gains_the_token_column_in_place(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A `poller_leases` created before tenure tokens: the sink adds the column at
    start (twice is harmless), and a lease held under it by an old process (no
    token) is another holder's, never this process's."""
    old_ddl = (
        "CREATE TABLE poller_leases (stream VARCHAR(255) NOT NULL, shard_id VARCHAR(255) NOT NULL, "
        "owner VARCHAR(255), lease_counter BIGINT NOT NULL DEFAULT 0, "
        "parent_shard_ids VARCHAR(1024) NOT NULL DEFAULT '', state VARCHAR(255) NOT NULL DEFAULT 'open', "
        "updated_at TIMESTAMP NULL, PRIMARY KEY (stream, shard_id))"
    )
    old_row = "INSERT INTO poller_leases (stream, shard_id, owner, lease_counter) VALUES ('s', 'x', 'w', 7)"
    namespace = f"mig_{uuid.uuid4().hex[:8]}"
    if backend.kind == "sqlite":
        dsn = str(tmp_path / "old.sqlite")
        with sqlite3.connect(dsn) as conn:
            conn.execute(old_ddl)
            conn.execute(old_row)
    elif backend.kind == "postgres":
        base = request.getfixturevalue("pg_dsn")
        db.execute("postgres", base, f"CREATE SCHEMA {namespace}")
        request.addfinalizer(lambda: db.execute("postgres", base, f"DROP SCHEMA {namespace} CASCADE"))
        dsn = f"{base}?search_path={namespace}"  # asyncpg passes it on as a server setting
        in_namespace = f"SET search_path TO {namespace}"
        db.execute("postgres", base, f"{in_namespace}; {old_ddl}; {old_row}")
    else:
        base = request.getfixturevalue("mysql_dsn")
        db.execute("mysql", base, f"CREATE DATABASE {namespace}")
        request.addfinalizer(lambda: db.execute("mysql", base, f"DROP DATABASE {namespace}"))
        dsn = base.rsplit("/", 1)[0] + "/" + namespace
        db.execute("mysql", dsn, old_ddl)
        db.execute("mysql", dsn, old_row)
    for _ in range(2):
        sink = checkpoint_store(dsn)
        await sink.open()
        await sink.close()
    store = SqlLeaseStore(backend.kind, dsn)  # type: ignore[arg-type]
    await store.open()
    try:
        kept = await store.get("s", "x")
        assert kept == Lease("x", "w", 7)  # the old holder's row, token None
        assert await store.renew("s", replace(kept, token=new_token())) is None
        mine = Tenure()
        taken = await store.take("s", kept, "w", mine.token)  # what an expired take does
        assert taken is not None and (await store.get("s", "x")) == taken
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
async def test_a_worker_starts_only_from_checkpoints_read_after_its_lease_was_taken(
    stores: tuple[LeaseStore, LeaseStore],
) -> None:
    """Checkpoints read before a take may miss what the previous holder committed:
    a load that began before the take (or before a take *again* after a loss)
    is not one its worker may start from."""
    a, b = stores
    s = stream()
    now = [10.0]
    coordinator = LeaseCoordinator(s, a, "w", 3.0, clock=lambda: now[0], rng=random.Random(4))
    coordinator.want({"x": ()}, {"x"})
    load_before_take = now[0]
    now[0] += 0.5
    await coordinator.round()
    assert coordinator.holding() == {"x"}
    assert not coordinator.loaded_for("x", load_before_take)
    now[0] += 0.5
    assert coordinator.loaded_for("x", now[0])
    load_of_first_tenure = now[0]

    current = await b.get(s, "x")  # lost to another process, which commits, then lets go
    assert current is not None
    taken = await b.take(s, current, "other", new_token())
    assert taken is not None and await b.release(s, taken)
    now[0] += 1.0
    await coordinator.round()  # the loss
    now[0] += 1.0
    await coordinator.round()  # taken again: a new tenure
    assert coordinator.holding() == {"x"}
    assert not coordinator.loaded_for("x", load_of_first_tenure)
    assert coordinator.loaded_for("x", now[0])
