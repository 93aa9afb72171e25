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
- all of it is one `TransactWriteItems` (`TRANSACTION_ITEMS` writes at a
  time), each shard item's update conditional on the lease counter the
  rewind's check saw (or on no lease), and a `ConditionCheck` on every other
  lease in scope: a lease taken, renewed or released since fails the whole
  transaction (unless forced) rather than let a worker read the rows it
  replaces;
- a lease marked ended whose shard the rewind makes unfinished is opened again
  (owner cleared, counter moved on, conditional on the counter as read), after
  the checkpoints are written: no worker takes an ended lease, so without this
  a parent rewound to before a split would never be read again and its
  children would wait for it forever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from poller.operator.guard import Guard

_SHARD_ROW = ("checkpoint", "checkpointSubSequenceNumber", "checkpointState")
_CONDITION_FAILED = "ConditionalCheckFailedException"
_CANCELLED = "TransactionCanceledException"
TRANSACTION_ITEMS = 100  # DynamoDB's limit on the writes of one TransactWriteItems


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

    async def rewrite(
        self, stream: str, drop: list[str], new: list[Checkpoint], guard: Guard, *, dry_run: bool = False
    ) -> None:
        """Drop these rows and write these, conditional on the leases `guard` saw (unless
        forced), then open the ended leases it names again."""
        seen, reopen = await guard.leases()
        if dry_run:
            return
        counters = {} if guard.force else {k: v.counter for k, v in seen.items()}
        removes: dict[str, set[str]] = {}
        own_rows = {row_id for row_id in drop if row_id.startswith("#")}
        for row_id in drop:
            if row_id in own_rows:
                continue
            lane = parse_lane_id(row_id)
            shard_id = lane[0] if lane else row_id
            attributes = {LANE_PREFIX + row_id[len(shard_id) + 1 :]} if lane else set(_SHARD_ROW)
            removes.setdefault(shard_id, set()).update(attributes)
        writes: list[tuple[str, dict[str, Any]]] = []  # (what it is, for people; the write)
        sets: dict[str, Checkpoint] = {}
        for c in new:
            if c.shard_id.startswith("#"):
                own_rows.discard(c.shard_id)
                item = {**item_key(stream, c.shard_id), **checkpoint_attributes(c)}
                writes.append((c.shard_id, {"Put": {"TableName": self.table, "Item": item}}))
            else:
                sets[c.shard_id] = c
        for row_id in sorted(own_rows):
            writes.append((row_id, {"Delete": {"TableName": self.table, "Key": item_key(stream, row_id)}}))
        for shard_id in sorted(removes.keys() | sets.keys()):
            update = self._shard_update(stream, shard_id, sets.get(shard_id), removes.get(shard_id, set()))
            if update is not None:
                writes.append(
                    (shard_id, {"Update": _conditional(update, counters.pop(shard_id, None), guard)})
                )
        # The leases in scope that nothing above writes: checked all the same (a take of one
        # would start its worker from the rows this replaces).
        for shard_id, counter in sorted(counters.items()):
            check = {
                "TableName": self.table,
                "Key": item_key(stream, shard_id),
                "ConditionExpression": "leaseCounter = :seen",
                "ExpressionAttributeValues": {":seen": {"N": str(counter)}},
            }
            writes.append((shard_id, {"ConditionCheck": check}))
        await self._transact(stream, writes)
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

    async def _transact(self, stream: str, writes: list[tuple[str, dict[str, Any]]]) -> None:
        """All or nothing, `TRANSACTION_ITEMS` at a time (one transaction for a stream of
        fewer shards); a failed condition names what changed and what was written before it."""
        done = 0
        for start in range(0, len(writes), TRANSACTION_ITEMS):
            part = writes[start : start + TRANSACTION_ITEMS]
            try:
                await self.client.transact_write_items(TransactItems=[w for _, w in part])
            except Exception as e:
                if error_code(e) != _CANCELLED:
                    raise OperatorError(
                        f"lease table {self.table}: TransactWriteItems: {classify_aws(e)}"
                    ) from e
                reasons = getattr(e, "response", {}).get("CancellationReasons") or []
                failed = [
                    part[i][0] for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"
                ] or ["(unknown)"]
                written = f"{done} of {len(writes)} writes were made before it" if done else "nothing written"
                raise OperatorError(
                    f"{stream}: not rewound: {', '.join(failed)} changed after the leases were checked "
                    f"(a worker took or renewed a lease, or the row changed): {written}. Run it again: "
                    "a live holder is then named"
                ) from e
            done += len(part)

    def _shard_update(
        self, stream: str, shard_id: str, row: Checkpoint | None, remove: set[str]
    ) -> dict[str, Any] | None:
        """The UpdateItem of a shard's lease item that writes `row` and removes `remove`."""
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
            return None
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
        return kwargs


def _conditional(update: dict[str, Any], counter: int | None, guard: Guard) -> dict[str, Any]:
    """`update`, also conditional on the shard's lease as the guard saw it: its counter
    (no take, renewal or release since), or no lease at all. Forced: as it is."""
    if guard.force:
        return update
    if counter is None:
        condition = "attribute_not_exists(leaseCounter)"
    else:
        condition = "leaseCounter = :seen"
        update["ExpressionAttributeValues"] = {
            **update.get("ExpressionAttributeValues", {}),
            ":seen": {"N": str(counter)},
        }
    existing = update.get("ConditionExpression")
    update["ConditionExpression"] = f"({existing}) AND {condition}" if existing else condition
    return update


@asynccontextmanager
async def open_lease_table(cfg: StreamConfig) -> AsyncIterator[LeaseTable]:
    c = cfg.coordination
    assert c is not None and c.lease_store == "dynamodb"
    async with aws_client("dynamodb", c.region, c.endpoint_url, max_attempts=2) as client:
        yield LeaseTable(client, c.table)
