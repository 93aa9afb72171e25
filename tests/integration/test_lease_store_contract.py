"""One contract for every lease store, run against the real PostgreSQL and
MariaDB (the table `poller_leases`, created by the sink), SQLite, and DynamoDB
on moto's server: every write is conditional on the counter, concurrent
takers of one lease have exactly one winner, the stored start is written once,
and a commit made under a lease that passed to another worker writes nothing.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from poller.config import parse_stream
from poller.coordination import Lease, LeaseCoordinator, LeaseStore, kept_checkpoints
from poller.coordination.dynamodb_store import DynamoDBLeaseStore
from poller.coordination.sql_store import SqlLeaseStore
from poller.records import Checkpoint, ShardState
from poller.sink_api import Fence, Fenced, MessageWrite, Tenure, Transaction
from poller.sinks.base import SqlSink
from poller.sinks.factory import build_sink, checkpoint_store
from tests.support import db
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
    if kind == "dynamodb":
        sink = checkpoint_store(str(tmp_path / "checkpoints.sqlite"))
        table = f"leases-{uuid.uuid4().hex[:8]}"
        backend = Backend(kind, lambda: DynamoDBLeaseStore(table, "us-east-1", moto.url), sink)
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
    taken = await a.take(s, seen, "worker-a")
    assert taken == Lease("shard-1", "worker-a", 1)
    assert await b.take(s, seen, "worker-b") is None  # the counter moved: b's view is stale

    renewed = await a.renew(s, taken)
    assert renewed == Lease("shard-1", "worker-a", 2)
    assert await a.renew(s, taken) is None  # stale counter
    assert await b.renew(s, Lease("shard-1", "worker-b", 2)) is None  # not the owner
    assert not await b.release(s, Lease("shard-1", "worker-b", 2))

    stolen = await b.take(s, renewed, "worker-b")  # what a steal or an expired take does
    assert stolen == Lease("shard-1", "worker-b", 3)
    assert await a.renew(s, renewed) is None  # a's renewal finds it lost
    assert await a.get(s, "shard-1") == stolen

    assert await b.release(s, stolen)
    assert await a.get(s, "shard-1") == Lease("shard-1", None, 4)
    again = await a.take(s, Lease("shard-1", None, 4), "worker-a")
    assert again == Lease("shard-1", "worker-a", 5)
    assert not await a.end(s, Lease("shard-1", "worker-a", 4))  # stale counter
    assert await a.end(s, again)
    ended = await b.get(s, "shard-1")
    assert ended == Lease("shard-1", None, 6, (), ended=True)
    assert await b.take(s, ended, "worker-b") is None  # an ended lease is never taken again


async def test_delete_is_conditional_on_the_counter(stores: tuple[LeaseStore, LeaseStore]) -> None:
    a, b = stores
    s = stream()
    await a.create(s, "gone", ())
    taken = await a.take(s, Lease("gone"), "worker-a")
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
            *(w.take(s, Lease("contested"), f"worker-{i}") for i, w in enumerate(workers))
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
    held = await a.take(s, Lease("shard-1"), "zombie")
    assert held is not None
    keeper = kept_checkpoints(a)
    zombie = Fence("shard-1", "zombie", held.counter, keeper)

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

    taken = await b.take(s, renewed, "successor")  # the zombie's lease expired elsewhere
    assert taken is not None
    successor = Fence("shard-1", "successor", taken.counter, kept_checkpoints(b))
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
        await sink.commit(commit(Fence("shard-1", "zombie", 0, keeper), "117", "m-6"))  # never held
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
        assert current is not None and await b.take(s, current, "other") is not None
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
    first = await a.take(s, Lease("shard-1"), "w")
    assert first is not None
    old_tenure = Tenure()
    old = Fence("shard-1", "w", first.counter, kept_checkpoints(a), old_tenure)

    def commit(fence: Fence, sequence: str) -> Transaction:
        return Transaction(
            stream=s, checkpoints=[Checkpoint(s, "shard-1", sequence, 0, ShardState.RUNNING)], fence=fence
        )

    await sink.commit(commit(old, "100"))
    old_tenure.end()  # lost
    other = await b.take(s, first, "other")
    assert other is not None
    again = await a.take(s, other, "w")
    assert again is not None and again.owner == "w"
    new = Fence("shard-1", "w", again.counter, kept_checkpoints(a), Tenure())
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
