"""The DynamoDB lease table of a stream file (`coordination.lease_store: dynamodb`)
as the operator commands use it: its leases, and the checkpoints it keeps.

The layout is the coordinator's (`poller.coordination.dynamodb_store`). Unlike a
worker, a command never creates the table (missing: no replica has run yet,
nothing is stored) and never takes a lease. A rewind rewrites checkpoints
here without a lease, as it rewrites `poller_checkpoints` without one:

- a shard's row is written onto the shard's lease item, which is created free
  (counter 0, open) if missing: the coordinator must find a lease there, not a
  bare item its create-if-absent would refuse;
- rows of their own (`#start`) are whole items, put or deleted;
- a lease marked ended whose shard the rewind makes unfinished is opened again
  (owner cleared, counter moved on, conditional on the counter as read), after
  the checkpoints are written: no worker takes an ended lease, so without this
  a parent rewound to before a split would never be read again and its
  children would wait for it forever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from poller.aws import aws_client, classify_aws, error_code
from poller.config import StreamConfig
from poller.coordination.dynamodb_store import (
    LANE_PREFIX,
    checkpoint_attributes,
    checkpoints_of_item,
    item_key,
    lease_of_item,
    stream_items,
)
from poller.coordination.lease import Lease
from poller.operator.errors import OperatorError
from poller.operator.stores import CheckpointRow
from poller.records import Checkpoint
from poller.sources.shards.positions import parse_lane_id

_SHARD_ROW = ("checkpoint", "checkpointSubSequenceNumber", "checkpointState")
_CONDITION_FAILED = "ConditionalCheckFailedException"


def keeps_checkpoints(cfg: StreamConfig) -> bool:
    """The stream's checkpoints live in its DynamoDB lease table, not in the sink's database."""
    return cfg.coordination is not None and cfg.coordination.lease_store == "dynamodb"


class LeaseTable:
    def __init__(self, client: Any, table: str):
        self.client = client
        self.table = table

    async def _write(self, operation: str, method: Any, **kwargs: Any) -> bool:
        """True if written; False if its condition failed."""
        try:
            await method(**kwargs)
        except Exception as e:
            if error_code(e) == _CONDITION_FAILED:
                return False
            raise OperatorError(f"lease table {self.table}: {operation}: {classify_aws(e)}") from e
        return True

    async def items(self, stream: str) -> list[dict[str, Any]]:
        try:
            return await stream_items(self.client, self.table, stream)
        except Exception as e:
            if error_code(e) == "ResourceNotFoundException":
                return []  # no replica has created it yet: nothing stored
            raise OperatorError(f"lease table {self.table}: Query: {classify_aws(e)}") from e

    async def leases(self, stream: str) -> list[Lease]:
        return [lease_of_item(i) for i in await self.items(stream) if "leaseCounter" in i]

    async def checkpoint_rows(self, stream: str) -> dict[str, CheckpointRow]:
        """Every checkpoint row, as `poller_checkpoints` would hold it; the items carry no time."""
        out: dict[str, CheckpointRow] = {}
        for item in await self.items(stream):
            for row_id, c in checkpoints_of_item(stream, item).items():
                out[row_id] = CheckpointRow(c, None)
        return out

    async def rewrite(self, stream: str, drop: list[str], new: list[Checkpoint], reopen: list[Lease]) -> None:
        """Drop these rows, write these, then open these ended leases again."""
        removes: dict[str, set[str]] = {}
        own_rows = {row_id for row_id in drop if row_id.startswith("#")}
        for row_id in drop:
            if row_id in own_rows:
                continue
            lane = parse_lane_id(row_id)
            shard_id = lane[0] if lane else row_id
            attributes = {LANE_PREFIX + row_id[len(shard_id) + 1 :]} if lane else set(_SHARD_ROW)
            removes.setdefault(shard_id, set()).update(attributes)
        sets: dict[str, Checkpoint] = {}
        for c in new:
            if c.shard_id.startswith("#"):
                own_rows.discard(c.shard_id)
                await self._write(
                    "PutItem",
                    self.client.put_item,
                    TableName=self.table,
                    Item={**item_key(stream, c.shard_id), **checkpoint_attributes(c)},
                )
            else:
                sets[c.shard_id] = c
        for row_id in sorted(own_rows):
            await self._write(
                "DeleteItem", self.client.delete_item, TableName=self.table, Key=item_key(stream, row_id)
            )
        for shard_id in sorted(removes.keys() | sets.keys()):
            await self._write_shard(stream, shard_id, sets.get(shard_id), removes.get(shard_id, set()))
        for lease in reopen:
            # Not written: changed meanwhile (deleted, its shard trimmed away): nothing to open.
            await self._write(
                "UpdateItem",
                self.client.update_item,
                TableName=self.table,
                Key=item_key(stream, lease.shard_id),
                UpdateExpression="SET leaseState = :open, leaseCounter = leaseCounter + :one "
                "REMOVE leaseOwner",
                ConditionExpression="leaseCounter = :seen AND leaseState = :ended",
                ExpressionAttributeValues={
                    ":open": {"S": "open"},
                    ":ended": {"S": "ended"},
                    ":one": {"N": "1"},
                    ":seen": {"N": str(lease.counter)},
                },
            )

    async def _write_shard(
        self, stream: str, shard_id: str, row: Checkpoint | None, remove: set[str]
    ) -> None:
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        sets: list[str] = []
        if row is not None:
            for i, (attribute, value) in enumerate(checkpoint_attributes(row).items()):
                names[f"#c{i}"] = attribute
                values[f":c{i}"] = value
                sets.append(f"#c{i} = :c{i}")
            remove = remove - set(checkpoint_attributes(row))
            # A lease for the coordinator to find (free), unless there is one already.
            values.update({":zero": {"N": "0"}, ":open": {"S": "open"}})
            sets += [
                "leaseCounter = if_not_exists(leaseCounter, :zero)",
                "leaseState = if_not_exists(leaseState, :open)",
            ]
            if row.parent_shard_ids:
                values[":parents"] = {"L": [{"S": p} for p in row.parent_shard_ids]}
                sets.append("parentShardIds = if_not_exists(parentShardIds, :parents)")
        clauses = ["SET " + ", ".join(sets)] if sets else []
        if remove:
            names.update({f"#r{i}": attribute for i, attribute in enumerate(sorted(remove))})
            clauses.append("REMOVE " + ", ".join(n for n in names if n.startswith("#r")))
        if not clauses:
            return
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Key": item_key(stream, shard_id),
            "UpdateExpression": " ".join(clauses),
            "ExpressionAttributeNames": names,
        }
        if values:
            kwargs["ExpressionAttributeValues"] = values
        if row is None:
            # Never create a bare item; not written: the item is gone, nothing to remove.
            kwargs["ConditionExpression"] = "attribute_exists(leaseKey)"
        await self._write("UpdateItem", self.client.update_item, **kwargs)


@asynccontextmanager
async def open_lease_table(cfg: StreamConfig) -> AsyncIterator[LeaseTable]:
    c = cfg.coordination
    assert c is not None and c.lease_store == "dynamodb"
    async with aws_client("dynamodb", c.region, c.endpoint_url, max_attempts=2) as client:
        yield LeaseTable(client, c.table)
