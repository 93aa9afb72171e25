"""A shard worker's life (`WorkerState`) and why it stops (`StopReason`), run
against the in-memory stream service (`tests/support/fake_shards.py`) and a
real SQLite sink: what a user sees is the rows, the checkpoint rows and the
metric series each way of stopping leaves behind."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from poller.destinations import Destination
from poller.processing.pipeline import Preparer
from poller.records import Checkpoint, ShardState
from poller.sinks.base import Sink
from poller.sinks.factory import build_sink
from poller.sources.shards import (
    TRIM_HORIZON,
    PollingPublisher,
    ShardFleet,
    ShardOptions,
    ShardStopped,
    ShardWorker,
    StartAt,
    StopReason,
    StreamParts,
    WorkerState,
    can_move,
)
from tests.support.fake_shards import FakeStream, rows, sqlite_stream

S = WorkerState


def test_states_only_move_forward_and_final_states_are_final() -> None:
    path = [S.INITIALIZING, S.READING, S.DRAINING, S.ENDING, S.DONE]
    for current, following in itertools.pairwise(path):
        assert can_move(current, following)
    assert not can_move(S.READING, S.ENDING)  # no tombstone before everything read is committed
    assert not can_move(S.DRAINING, S.READING)
    for state in path[:-1]:
        assert can_move(state, S.STOPPED) and can_move(state, S.FAILED)
    for final in (S.DONE, S.STOPPED, S.FAILED):
        assert not any(can_move(final, s) for s in S)


# --------------------------------------------------------------------------- one worker


def get_records_calls(stream: str, shard: str) -> float | None:
    return REGISTRY.get_sample_value("poller_get_records_calls_total", {"stream": stream, "shard": shard})


class Run:
    """One worker of a stream on the fake service, with its real sink."""

    def __init__(self, cfg: Any, api: FakeStream, sink: Sink, shard: str):
        self.cfg = cfg
        self.sink = sink
        self.ended: list[tuple[str, tuple[str, ...]]] = []
        opts = ShardOptions.from_config(cfg, min_read_interval=0.0)
        parts = StreamParts(
            cfg.name,
            cfg,
            api,
            opts,
            sink,
            Destination(),
            Preparer(cfg, sink),
            lambda info: PollingPublisher(api, cfg.name, info.shard_id, opts),
            lambda ok: None,
            lambda shard_id: None,
            lambda shard_id, children: self.ended.append((shard_id, children)),
        )
        self.stop = asyncio.Event()
        self.worker = ShardWorker(parts, api.shards[shard], StartAt(TRIM_HORIZON))
        self.task: asyncio.Task[StopReason] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def until(self, condition: Callable[[], bool], seconds: float = 20) -> None:
        for _ in range(int(seconds / 0.02)):
            if condition():
                return
            assert self.task is not None
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.02)
        raise AssertionError("condition not reached")

    async def result(self) -> StopReason:
        assert self.task is not None
        return await asyncio.wait_for(self.task, 20)

    async def checkpoints(self) -> dict[str, Checkpoint]:
        return await self.sink.load_checkpoints(self.cfg.name)


async def open_sink(cfg: Any) -> Sink:
    sink = build_sink(cfg, None)
    await sink.open()
    return sink


def fill(api: FakeStream, shard: str, n: int) -> None:
    for i in range(n):
        api.put(shard, f"{shard}-k{i % 3}", i // 3)


async def test_a_shard_read_to_its_end_is_done_once_its_tombstone_is_committed(tmp_path: Path) -> None:
    cfg, path = sqlite_stream(tmp_path, "w_end")
    api = FakeStream()
    api.add_shard("p0")
    api.add_shard("c1", "p0")
    fill(api, "p0", 30)
    api.close("p0")
    sink = await open_sink(cfg)
    try:
        run = Run(cfg, api, sink, "p0")
        assert run.worker.state is S.INITIALIZING
        run.start()
        assert await run.result() is StopReason.SHARD_END
        assert run.worker.state is S.DONE and run.worker.stop_reason is StopReason.SHARD_END
        assert run.ended == [("p0", ("c1",))]
        end = (await run.checkpoints())["p0"]
        assert (end.state, end.sequence_number) == (ShardState.SHARD_END, "30")
    finally:
        await sink.close()
    assert len(rows(path, "w_end")) == 30
    assert get_records_calls("w_end", "p0") is None  # the ended shard's series are gone


async def test_a_requested_stop_while_reading_keeps_the_checkpoint_and_writes_no_tombstone(
    tmp_path: Path,
) -> None:
    cfg, path = sqlite_stream(tmp_path, "w_stop")
    api = FakeStream()
    api.add_shard("s0")
    fill(api, "s0", 20)
    sink = await open_sink(cfg)
    try:
        run = Run(cfg, api, sink, "s0")
        run.start()
        await run.until(lambda: len(rows(path, "w_stop")) == 20)
        assert run.worker.state is S.READING  # an open shard never ends
        run.stop.set()
        assert await run.result() is StopReason.REQUESTED
        assert run.worker.state is S.STOPPED
        row = (await run.checkpoints())["s0"]
        assert (row.state, row.sequence_number) == (ShardState.RUNNING, "20")
        assert run.ended == []
    finally:
        await sink.close()
    assert (get_records_calls("w_stop", "s0") or 0) >= 1  # a shard stopped, not done: series kept


async def test_a_lost_lease_stops_the_worker_and_drops_the_shards_series(tmp_path: Path) -> None:
    cfg, path = sqlite_stream(tmp_path, "w_lease")
    api = FakeStream()
    api.add_shard("s0")
    fill(api, "s0", 14)
    sink = await open_sink(cfg)
    try:
        run = Run(cfg, api, sink, "s0")
        run.start()
        await run.until(lambda: len(rows(path, "w_lease")) == 14)
        run.worker.request_stop(StopReason.LEASE_LOST)
        assert await run.result() is StopReason.LEASE_LOST
        assert run.worker.state is S.STOPPED
        assert (await run.checkpoints())["s0"].state == ShardState.RUNNING
    finally:
        await sink.close()
    assert get_records_calls("w_lease", "s0") is None


async def rename(path: str, table: str, to: str) -> None:
    """From another connection, in a thread: the sink's own connection must be
    free to roll back its failed commits meanwhile."""

    def alter() -> None:
        with sqlite3.connect(path, timeout=30) as conn:
            conn.execute(f"ALTER TABLE {table} RENAME TO {to}")

    await asyncio.to_thread(alter)


async def test_a_stop_while_draining_commits_the_batch_in_flight_and_drops_the_rest(tmp_path: Path) -> None:
    """The shard has ended but the table is gone (an operator's migration): the
    worker waits in DRAINING. A stop lets the batch it is committing commit once
    the table is back, drops the batches still queued, and writes no tombstone."""
    cfg, path = sqlite_stream(tmp_path, "w_drain", retry={"backoff_max_seconds": 0.2})
    api = FakeStream()
    api.add_shard("s0")
    fill(api, "s0", 20)
    api.close("s0")
    sink = await open_sink(cfg)
    await rename(path, "w_drain", "w_drain_away")
    try:
        run = Run(cfg, api, sink, "s0")
        run.start()
        await run.until(lambda: run.worker.state is S.DRAINING)
        run.stop.set()
        await asyncio.sleep(0.3)
        assert not run.task or not run.task.done()  # the batch in flight holds the stop
        await rename(path, "w_drain_away", "w_drain")
        assert await run.result() is StopReason.REQUESTED
        assert run.worker.state is S.STOPPED
        checkpoints = await run.checkpoints()
    finally:
        await sink.close()
    assert [c.state for c in checkpoints.values()] == [ShardState.RUNNING]
    assert checkpoints["s0"].sequence_number == "7"  # one batch of 7
    assert len(rows(path, "w_drain")) == 7


async def test_a_reader_that_dies_of_a_bug_fails_the_worker(tmp_path: Path) -> None:
    cfg, _ = sqlite_stream(tmp_path, "w_bug")
    api = FakeStream()
    api.add_shard("s0")
    api.records["s0"].append({"SequenceNumber": "1", "PartitionKey": "k"})  # no Data: to_record fails
    sink = await open_sink(cfg)
    try:
        run = Run(cfg, api, sink, "s0")
        run.start()
        with pytest.raises(KeyError):
            await run.result()
        assert run.worker.state is S.FAILED and run.worker.stop_reason is None
    finally:
        await sink.close()


# --------------------------------------------------------------------------- the fleet acts on it


async def test_a_shard_the_source_stops_for_trimming_stops_the_whole_stream(tmp_path: Path) -> None:
    """DynamoDB's `on_trimmed: stop`: the adapter raises `ShardStopped(TRIMMED)`;
    that worker stops, the fleet stops the others and returns TRIMMED, with no
    stop requested from outside."""
    cfg, path = sqlite_stream(tmp_path, "w_trim", shard_discovery_seconds=0.5)
    api = FakeStream()
    for shard in ("s0", "s1"):
        api.add_shard(shard)
        fill(api, shard, 21)
    trimming = {"on": False}
    api.faults = lambda shard: ShardStopped(StopReason.TRIMMED) if trimming["on"] and shard == "s1" else None
    sink = await open_sink(cfg)
    try:
        opts = ShardOptions.from_config(cfg, min_read_interval=0.0)
        fleet = ShardFleet(
            api, opts, cfg, sink, Destination(), Preparer(cfg, sink), lambda: None, lambda ok: None
        )
        stop = asyncio.Event()
        task = asyncio.create_task(fleet.run(stop))
        for _ in range(1000):
            if len(rows(path, "w_trim")) == 42:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("both shards' records not written")
        trimming["on"] = True
        assert await asyncio.wait_for(task, 20) is StopReason.TRIMMED
        assert not stop.is_set() and not fleet.workers
        checkpoints = await sink.load_checkpoints("w_trim")
    finally:
        await sink.close()
    assert {k: (c.state, c.sequence_number) for k, c in checkpoints.items()} == {
        "s0": (ShardState.RUNNING, "21"),  # sequence numbers run across the shards
        "s1": (ShardState.RUNNING, "42"),
    }
