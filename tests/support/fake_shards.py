"""An in-memory stream service behind the shard machinery's `ShardApi` protocol:
a fake of what Kinesis and DynamoDB Streams offer (shards with parents,
iterators, reads that end a closed shard and name its children), with faults
injected per read. The shard machinery is tested against it the way it runs
against AWS, without mocking any of its own parts; `sqlite_stream` is a
stream config writing into a real SQLite table whose `ord` column records
commit order (`rows` reads it back in that order)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from poller.config import parse_stream
from poller.records import KINESIS, Record
from poller.sources.shards import (
    AFTER_SEQUENCE_NUMBER,
    AT_SEQUENCE_NUMBER,
    TRIM_HORIZON,
    ReadResult,
    ShardInfo,
)


class FakeStream:
    """An in-memory stream behind the ShardApi protocol. Iterators are
    "shard|index"; `faults` injects errors into reads."""

    def __init__(self) -> None:
        self.shards: dict[str, ShardInfo] = {}
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.seq = 0
        self.faults: Callable[[str], Exception | None] = lambda shard: None
        self.reads = 0

    def add_shard(self, shard_id: str, *parents: str) -> None:
        self.shards[shard_id] = ShardInfo(shard_id, parents, False)
        self.records[shard_id] = []

    def close(self, shard_id: str) -> None:
        self.shards[shard_id] = ShardInfo(shard_id, self.shards[shard_id].parent_ids, True)

    def put(self, shard_id: str, key: str, n: int) -> None:
        self.seq += 1
        data = json.dumps({"id": f"{key}:{n}", "n": n}).encode()
        self.records[shard_id].append({"SequenceNumber": str(self.seq), "PartitionKey": key, "Data": data})

    async def list_shards(self) -> list[ShardInfo]:
        return list(self.shards.values())

    async def iterator(
        self, shard_id: str, kind: str, sequence_number: str | None = None, timestamp: datetime | None = None
    ) -> str:
        seqs = [int(r["SequenceNumber"]) for r in self.records[shard_id]]
        if kind == TRIM_HORIZON:
            index = 0
        elif kind == AT_SEQUENCE_NUMBER:
            index = seqs.index(int(sequence_number or 0))
        elif kind == AFTER_SEQUENCE_NUMBER:
            index = seqs.index(int(sequence_number or 0)) + 1
        else:
            index = len(seqs)
        return f"{shard_id}|{index}"

    async def read(self, iterator: str, limit: int) -> ReadResult:
        shard_id, _, index = iterator.partition("|")
        fault = self.faults(shard_id)
        if fault is not None:
            raise fault
        self.reads += 1
        start = int(index)
        batch = self.records[shard_id][start : start + limit]
        end = start + len(batch)
        if self.shards[shard_id].closed and end == len(self.records[shard_id]):
            children = tuple(s for s, i in self.shards.items() if shard_id in i.parent_ids)
            return ReadResult(batch, None, 0, children)
        return ReadResult(batch, f"{shard_id}|{end}", 0)

    def to_record(self, raw: dict[str, Any], shard_id: str) -> Record:
        data = raw["Data"]
        seq = raw["SequenceNumber"]
        return Record(KINESIS, "fake", shard_id, seq, data, data, 0, raw["PartitionKey"], 1.0e9, {}, raw)


def sqlite_stream(
    tmp_path: Path, name: str, retry: dict[str, Any] | None = None, **source: Any
) -> tuple[Any, str]:
    path = tmp_path / "rows.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(
            f"CREATE TABLE {name} (id TEXT PRIMARY KEY, pk TEXT, n INTEGER, shard TEXT, "
            f"ord INTEGER UNIQUE DEFAULT NULL)"
        )
        # Commit order, visible to the assertions: SQLite runs the batch's inserts in order.
        conn.execute(
            f"CREATE TRIGGER {name}_ord AFTER INSERT ON {name} BEGIN "
            f"UPDATE {name} SET ord = (SELECT coalesce(max(ord), 0) + 1 FROM {name}) WHERE id = NEW.id; END"
        )
    cfg = parse_stream(
        {
            "name": name,
            "source": {"type": "kinesis", "stream": "fake", "idle_poll_seconds": 0.05, **source},
            "batch": {"size": 7, "window_seconds": 0.01},
            **({"retry": retry} if retry else {}),
            "sink": {
                "type": "sqlite",
                "dsn": str(path),
                "table": name,
                "key": ["id"],
                "columns": {"id": "data.id", "pk": "partition_key", "n": "data.n", "shard": "shard_id"},
            },
        },
        "test",
        env={},
    )
    return cfg, str(path)


def rows(path: str, name: str) -> list[tuple[str, int, str]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(f"SELECT pk, n, shard FROM {name} ORDER BY ord"))
