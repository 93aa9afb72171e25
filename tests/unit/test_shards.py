"""The shard machinery's pure parts (prefix tracker, lineage, resume floor), and
the whole fleet run against an in-memory stream behind the `ShardApi` protocol
(`tests/support/fake_shards.py`) with a real SQLite sink: the order children
are read in, throttling, expired iterators and parallel lanes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from poller.destinations import Destination
from poller.processing.failures import Unit
from poller.processing.pipeline import Preparer
from poller.records import KINESIS, Checkpoint, Position, Record, ShardState
from poller.sinks.base import Transaction
from poller.sinks.factory import build_sink
from poller.sources.shards import (
    IteratorExpired,
    Lineage,
    PrefixTracker,
    ResumeFloor,
    ShardFleet,
    ShardInfo,
    ShardOptions,
    Throttled,
    lane_checkpoint_id,
    lane_of,
    parse_lane_id,
    record_ends,
)
from tests.support.fake_shards import FakeStream, rows, sqlite_stream


def pos(seq: int, sub: int = 0, shard: str = "s") -> Position:
    return Position(shard, str(seq), sub)


# --------------------------------------------------------------------------- PrefixTracker


def test_prefix_is_the_contiguous_completed_run() -> None:
    t = PrefixTracker()
    t.add(["1", "2", "3", "4"])
    assert t.complete([("2", pos(2)), ("4", pos(4))]) is None  # 1 is still pending
    assert len(t) == 4
    assert t.complete([("1", pos(1))]) == pos(2)
    assert len(t) == 2
    assert t.complete([("3", pos(3, 7))]) == pos(4)
    assert len(t) == 0


def test_prefix_with_looks_ahead_without_changing_anything() -> None:
    t = PrefixTracker(prefix=pos(0))
    t.add(["1", "2", "3"])
    t.complete([("2", pos(2))])
    assert t.prefix_with([]) == pos(0)
    assert t.prefix_with([("1", pos(1, 5))]) == pos(2)
    assert t.prefix_with([("3", pos(3))]) == pos(0)
    assert t.prefix == pos(0) and len(t) == 3


def test_prefix_keeps_the_last_position_of_a_record() -> None:
    t = PrefixTracker()
    t.add(["10"])
    assert t.complete([("10", pos(10, 299))]) == pos(10, 299)


# --------------------------------------------------------------------------- lanes


def test_lane_of_is_stable_and_in_range() -> None:
    assert lane_of("anything", 1) == 0
    lanes = {lane_of(f"k{i}", 4) for i in range(100)}
    assert lanes == {0, 1, 2, 3}
    # crc32, so a restarted process routes every key the same way.
    assert [lane_of(k, 4) for k in ("a", "b", "c")] == [lane_of(k, 4) for k in ("a", "b", "c")]
    assert lane_of(None, 3) == lane_of("", 3)


def test_lane_checkpoint_ids_round_trip() -> None:
    cid = lane_checkpoint_id("shardId-000000000001", 2, 4)
    assert cid == "shardId-000000000001#lane-2-of-4"
    assert parse_lane_id(cid) == ("shardId-000000000001", 2, 4)
    assert parse_lane_id("shardId-000000000001") is None
    assert parse_lane_id("odd#lane-x-of-4") is None


def test_resume_floor_takes_the_highest_covering_position() -> None:
    assert ResumeFloor.build(None, []) is None
    lane = lane_of("k", 4)
    floor = ResumeFloor.build(pos(100, 3), [(lane, 4, pos(150)), ((lane + 1) % 4, 4, pos(120))])
    assert floor is not None and floor.top == 150

    def rec(key: str) -> Record:
        return Record(KINESIS, "s", "s", "1", b"", partition_key=key)

    assert floor.covering(rec("k")) == (150, 0)
    other = next(k for k in (f"x{i}" for i in range(50)) if lane_of(k, 4) not in (lane, (lane + 1) % 4))
    assert floor.covering(rec(other)) == (100, 3)


def test_record_ends_marks_the_last_unit_of_each_source_record() -> None:
    def unit(seq: str, index: int) -> Unit:
        return Unit(source=Record(KINESIS, "s", "s", seq, b""), index=index)

    units = [unit("1", 0), unit("2", 1), unit("2", 2), unit("2", 3), unit("3", 4)]
    assert record_ends(units) == {0, 3, 4}


# --------------------------------------------------------------------------- Lineage


def info(shard: str, *parents: str, closed: bool = False) -> ShardInfo:
    return ShardInfo(shard, tuple(parents), closed)


def test_children_wait_for_every_parent() -> None:
    lineage = Lineage()
    # 0 split into 3 and 4; 1 and 2 merged into 5.
    lineage.update(
        [
            info("0", closed=True),
            info("1", closed=True),
            info("2", closed=True),
            info("3", "0"),
            info("4", "0"),
            info("5", "1", "2"),
        ]
    )
    assert [s for s in "012345" if lineage.ready(s)] == ["0", "1", "2"]
    lineage.mark_ended("0")
    lineage.mark_ended("1")
    assert [s for s in "012345" if lineage.ready(s)] == ["2", "3", "4"]
    lineage.mark_ended("2")
    assert [s for s in "012345" if lineage.ready(s)] == ["3", "4", "5"]
    assert lineage.states(["3", "4"]) == {"reading": 2, "ended": 3, "waiting_on_parent": 1}


def test_a_trimmed_parent_counts_as_finished() -> None:
    lineage = Lineage()
    lineage.update([info("3", "0"), info("5", "1", "2"), info("2", closed=True)])
    assert lineage.ready("3")
    assert not lineage.ready("5")  # 2 is still listed and not finished


def test_a_descendant_checkpoint_proves_a_parent_finished() -> None:
    # The tombstones of 0 and of its child 1 were deleted in an earlier run;
    # only the grandchild's checkpoint is left. 0 and 1 must not be read again.
    lineage = Lineage([Checkpoint("st", "2", "77")])
    lineage.update([info("0", closed=True), info("1", "0", closed=True), info("2", "1")])
    assert lineage.finished("0") and lineage.finished("1")
    assert [s for s in "012" if lineage.ready(s)] == ["2"]


def test_lane_rows_count_as_checkpoints_of_their_shard() -> None:
    lineage = Lineage([Checkpoint("st", lane_checkpoint_id("1", 0, 2), "5")])
    lineage.update([info("0", closed=True), info("1", "0")])
    assert lineage.finished("0")
    assert lineage.checkpointed == {"1"}


def test_tombstones_expire_once_all_children_have_checkpoints() -> None:
    lineage = Lineage([Checkpoint("st", "0", "9", state=ShardState.SHARD_END)])
    lineage.update([info("0", closed=True), info("1", "0"), info("2", "0")])
    assert lineage.expired_tombstones() == []
    lineage.mark_checkpointed("1")
    assert lineage.expired_tombstones() == []
    lineage.mark_checkpointed("2")
    assert lineage.expired_tombstones() == ["0"]


def test_tombstone_of_a_shard_gone_from_the_listing_expires() -> None:
    lineage = Lineage([Checkpoint("st", "0", "9", state=ShardState.SHARD_END)])
    lineage.update([info("1", "0")])
    assert lineage.expired_tombstones() == ["0"]


def test_children_learned_from_the_last_read_count() -> None:
    lineage = Lineage()
    lineage.update([info("0", closed=True)])
    lineage.mark_ended("0")
    lineage.learn_children("0", ["1"])
    assert lineage.expired_tombstones() == []
    lineage.mark_checkpointed("1")
    assert lineage.expired_tombstones() == ["0"]


# --------------------------------------------------------------------------- a whole fleet


async def run_fleet(cfg: Any, api: FakeStream, until: Callable[[], bool]) -> dict[str, Checkpoint]:
    sink = build_sink(cfg, None)
    await sink.open()
    try:
        stop = asyncio.Event()
        opts = ShardOptions.from_config(cfg, min_read_interval=0.0)
        fleet = ShardFleet(
            api, opts, cfg, sink, Destination(), Preparer(cfg, sink), lambda: None, lambda ok: None
        )
        task = asyncio.create_task(fleet.run(stop))
        for _ in range(500):
            await asyncio.sleep(0.02)
            if task.done():
                task.result()
            if until():
                break
        stop.set()
        await asyncio.wait_for(task, 10)
        return await sink.load_checkpoints(cfg.name)
    finally:
        await sink.close()


def assert_in_key_order(found: list[tuple[str, int, str]]) -> None:
    seen: dict[str, int] = {}
    for pk, n, _ in found:
        assert n == seen.get(pk, -1) + 1, f"{pk}: {n} after {seen.get(pk)}"
        seen[pk] = n


async def test_fleet_reads_children_after_parents_and_cleans_tombstones(tmp_path: Path) -> None:
    cfg, path = sqlite_stream(tmp_path, "lineage", shard_discovery_seconds=0.5)
    api = FakeStream()
    for shard in ("p0", "p1", "p2"):
        api.add_shard(shard)
    api.add_shard("c3", "p0")
    api.add_shard("c4", "p0")
    api.add_shard("c5", "p1", "p2")
    for shard in ("p0", "p1", "p2"):
        api.close(shard)
    keys = {"p0": ("c3", "c4"), "p1": ("c5",), "p2": ("c5",)}
    n = 0
    for parent, children in keys.items():
        for child in children:
            key = f"{parent}-{child}"
            for i in range(20):
                api.put(parent, key, i)
            for i in range(20, 40):
                api.put(child, key, i)
            n += 40
    checkpoints = await run_fleet(cfg, api, lambda: len(rows(path, "lineage")) == n and api.reads > 30)
    found = rows(path, "lineage")
    assert len(found) == n
    assert_in_key_order(found)
    assert set(checkpoints) == {"c3", "c4", "c5"}  # the parents' SHARD_END rows are gone


async def test_fleet_counts_throttles_and_reopens_expired_iterators(tmp_path: Path) -> None:
    cfg, path = sqlite_stream(tmp_path, "faults", max_records_per_call=5)
    api = FakeStream()
    api.add_shard("s0")
    for i in range(60):
        api.put("s0", f"k{i % 3}", i // 3)
    calls = {"n": 0}

    def faults(shard: str) -> Exception | None:
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            return Throttled("GetRecords", "slow down")
        if calls["n"] % 7 == 0:
            return IteratorExpired("too old")
        return None

    api.faults = faults
    labels = {"stream": "faults", "operation": "GetRecords"}
    before = REGISTRY.get_sample_value("poller_throttles_total", labels) or 0.0
    await run_fleet(cfg, api, lambda: len(rows(path, "faults")) == 60)
    found = rows(path, "faults")
    assert sorted(found) == sorted({(f"k{i % 3}", i // 3, "s0") for i in range(60)})
    assert_in_key_order(found)
    assert (REGISTRY.get_sample_value("poller_throttles_total", labels) or 0.0) - before >= 1


async def test_parallel_lanes_keep_key_order_and_resume_without_repeats(tmp_path: Path) -> None:
    cfg, path = sqlite_stream(tmp_path, "lanes", parallelization_factor=3)
    api = FakeStream()
    api.add_shard("s0")
    for i in range(300):
        api.put("s0", f"k{i % 10}", i // 10)
    checkpoints = await run_fleet(cfg, api, lambda: len(rows(path, "lanes")) == 300)
    assert_in_key_order(rows(path, "lanes"))
    assert checkpoints["s0"].sequence_number == "300"
    assert {parse_lane_id(c) for c in checkpoints} - {None} <= {("s0", i, 3) for i in range(3)}
    # Restarting from these checkpoints reads nothing again.
    for i in range(300, 330):
        api.put("s0", f"k{i % 10}", i // 10)
    await run_fleet(cfg, api, lambda: len(rows(path, "lanes")) == 330)
    found = rows(path, "lanes")
    assert len(found) == 330
    assert_in_key_order(found)


@pytest.mark.parametrize("lanes", [1, 3])
async def test_resume_drops_what_was_committed_before(tmp_path: Path, lanes: int) -> None:
    """A checkpoint (and lane rows) stored by an earlier run: nothing at or below
    them is written again, even where a lane ran ahead of the shard's checkpoint."""
    cfg, path = sqlite_stream(tmp_path, "resume", parallelization_factor=lanes)
    api = FakeStream()
    api.add_shard("s0")
    for i in range(40):
        api.put("s0", f"k{i % 4}", i // 4)
    ahead = "k1"
    stored = [Checkpoint("resume", "s0", "20")]
    if lanes > 1:
        lane = lane_of(ahead, lanes)
        stored.append(Checkpoint("resume", lane_checkpoint_id("s0", lane, lanes), "38"))
    sink = build_sink(cfg, None)
    await sink.open()
    await sink.commit(Transaction(stream="resume", checkpoints=stored))
    await sink.close()
    # Record i has sequence number i + 1.
    expected = {(f"k{i % 4}", i // 4) for i in range(20, 40)}
    if lanes > 1:
        expected -= {(f"k{i % 4}", i // 4) for i in range(20, 38) if lane_of(f"k{i % 4}", lanes) == lane}
    await run_fleet(cfg, api, lambda: len(rows(path, "resume")) >= len(expected) and api.reads > 3)
    assert {(pk, n) for pk, n, _ in rows(path, "resume")} == expected


def shard_series(stream: str, shard: str) -> set[str]:
    """Names of the samples /metrics would show for one shard of a stream."""
    return {
        s.name
        for family in REGISTRY.collect()
        for s in family.samples
        if s.labels.get("stream") == stream and s.labels.get("shard") == shard
    }


async def test_an_ended_shard_leaves_no_metric_series(tmp_path: Path) -> None:
    """A long-lived daemon on a stream that reshards must not keep a series for
    every shard it ever read: the parent's go when it ends, the child's stay."""
    cfg, path = sqlite_stream(tmp_path, "series")
    api = FakeStream()
    api.add_shard("p0")
    api.add_shard("c1", "p0")
    for i in range(10):
        api.put("p0", "k", i)
    for i in range(10, 20):
        api.put("c1", "k", i)
    api.close("p0")
    await run_fleet(cfg, api, lambda: len(rows(path, "series")) == 20)
    assert shard_series("series", "p0") == set()
    assert {"poller_get_records_calls_total", "poller_iterator_age_seconds"} <= shard_series("series", "c1")
