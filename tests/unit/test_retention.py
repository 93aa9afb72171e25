"""Retention gaps: which stored rows belong to vanished shards, and how the
Kinesis adapter tells a resumed position whose record is gone (against a
stand-in of the Kinesis client that serves a shard's records from a list)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from poller.records import Checkpoint, ShardState
from poller.sources.kinesis import KinesisShardApi
from poller.sources.retention import rows_of, vanished
from poller.sources.shards import (
    AFTER_SEQUENCE_NUMBER,
    AT_SEQUENCE_NUMBER,
    TRIM_HORIZON,
    ShardInfo,
    ShardStopped,
)


def test_vanished_shards_are_running_checkpoints_the_listing_no_longer_shows() -> None:
    rows = {
        "#start": Checkpoint("s", "#start", "2024-05-01T00:00:00+00:00"),
        "#snapshot": Checkpoint("s", "#snapshot", "{}"),
        "a": Checkpoint("s", "a", "10"),
        "a#lane-1-of-2": Checkpoint("s", "a#lane-1-of-2", "12"),
        "b": Checkpoint("s", "b", "20", state=ShardState.SHARD_END),
        "c": Checkpoint("s", "c", "30"),
    }
    assert vanished(rows, [ShardInfo("c"), ShardInfo("d", ("c",))]) == ["a"]
    assert rows_of(rows, ["a"]) == ["a", "a#lane-1-of-2"]


class Shard:
    """A Kinesis client for one shard whose records are `seqs` (ascending); the
    iterator is the index of the next record, as the service positions it.
    `behind`: MillisBehindLatest of an empty answer (AWS walking a trimmed stretch)."""

    def __init__(self, seqs: list[int], page: int = 2, behind: int = 0):
        self.seqs = seqs
        self.page = page
        self.behind = behind
        self.opened: list[dict[str, Any]] = []

    async def get_shard_iterator(self, **kw: Any) -> dict[str, Any]:
        self.opened.append(kw)
        if kw["ShardIteratorType"] == TRIM_HORIZON:
            return {"ShardIterator": "0"}
        at = int(kw["StartingSequenceNumber"])
        index = next((i for i, s in enumerate(self.seqs) if s >= at), len(self.seqs))
        if (
            kw["ShardIteratorType"] == AFTER_SEQUENCE_NUMBER
            and index < len(self.seqs)
            and self.seqs[index] == at
        ):
            index += 1
        return {"ShardIterator": str(index)}

    async def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        i = int(ShardIterator)
        records = [
            {
                "SequenceNumber": str(s),
                "Data": b"{}",
                "PartitionKey": "k",
                "ApproximateArrivalTimestamp": datetime(2024, 5, 1, tzinfo=UTC),
            }
            for s in self.seqs[i : i + self.page]
        ]
        behind = 0 if records else self.behind
        return {"Records": records, "NextShardIterator": str(i + len(records)), "MillisBehindLatest": behind}


def gaps(stream: str) -> float:
    return REGISTRY.get_sample_value("poller_retention_gaps_total", {"stream": stream, "shard": "s0"}) or 0.0


async def read_all(api: KinesisShardApi, iterator: str) -> list[str]:
    seen: list[str] = []
    for _ in range(10):
        result = await api.read(iterator, 100)
        seen += [r["SequenceNumber"] for r in result.records]
        assert result.next_iterator is not None
        iterator = result.next_iterator
    return seen


async def test_a_resumed_record_still_there_is_no_gap_and_after_drops_it() -> None:
    client = Shard([10, 20, 30, 40])
    api = KinesisShardApi(client, "orders", "kin-ok", "eu-west-1", on_retention_gap="continue")
    assert await read_all(api, await api.iterator("s0", AT_SEQUENCE_NUMBER, "20")) == ["20", "30", "40"]
    # AFTER is opened AT the record, which is then dropped: its presence is checked too.
    assert await read_all(api, await api.iterator("s0", AFTER_SEQUENCE_NUMBER, "20")) == ["30", "40"]
    assert client.opened[-1]["ShardIteratorType"] == AT_SEQUENCE_NUMBER
    assert gaps("kin-ok") == 0


async def test_a_resumed_record_that_is_gone_is_a_gap() -> None:
    client = Shard([30, 40, 50])  # 10 and 20 were trimmed
    api = KinesisShardApi(client, "orders", "kin-gap", "eu-west-1", on_retention_gap="continue")
    api.retention_hours = 24
    assert await read_all(api, await api.iterator("s0", AT_SEQUENCE_NUMBER, "20")) == ["30", "40", "50"]
    assert gaps("kin-gap") == 1  # once, on the first record read


async def test_the_check_waits_for_the_first_record_when_the_shard_is_quiet() -> None:
    client = Shard([])
    api = KinesisShardApi(client, "orders", "kin-quiet", "eu-west-1", on_retention_gap="continue")
    iterator = await api.iterator("s0", AFTER_SEQUENCE_NUMBER, "20")
    first = await api.read(iterator, 100)
    assert first.records == []
    client.seqs = [25, 26]  # arrives later; record 20 is gone by now
    assert first.next_iterator is not None
    await api.read(first.next_iterator, 100)
    assert gaps("kin-quiet") == 1


async def test_an_empty_answer_a_whole_retention_behind_is_a_gap_and_reading_skips_to_the_horizon() -> None:
    """AWS answers a trimmed position with empty pages, MillisBehindLatest at the
    retention, for as long as the trimmed stretch lasts."""
    client = Shard([5, 6], behind=24 * 3_600_000)
    api = KinesisShardApi(client, "orders", "kin-walk", "eu-west-1", on_retention_gap="continue")
    api.retention_hours = 24
    client.seqs = []
    result = await api.read(await api.iterator("s0", AT_SEQUENCE_NUMBER, "3"), 100)
    assert result.records == [] and gaps("kin-walk") == 1
    assert client.opened[-1]["ShardIteratorType"] == TRIM_HORIZON
    client.seqs = [5, 6]
    assert result.next_iterator is not None
    assert await read_all(api, result.next_iterator) == ["5", "6"]
    assert gaps("kin-walk") == 1


async def test_stop_stops_the_shard_before_anything_after_the_gap_is_handed_out() -> None:
    api = KinesisShardApi(Shard([30]), "orders", "kin-stop", "eu-west-1", on_retention_gap="stop")
    iterator = await api.iterator("s0", AT_SEQUENCE_NUMBER, "20")
    with pytest.raises(ShardStopped) as stopped:
        await api.read(iterator, 100)
    assert stopped.value.reason == "trimmed"
    assert gaps("kin-stop") == 1


async def test_operator_commands_do_not_check() -> None:
    client = Shard([30])
    api = KinesisShardApi(client, "orders", "kin-operator", "eu-west-1")
    await api.read(await api.iterator("s0", AFTER_SEQUENCE_NUMBER, "20"), 100)
    assert client.opened[-1]["ShardIteratorType"] == AFTER_SEQUENCE_NUMBER
    assert gaps("kin-operator") == 0
