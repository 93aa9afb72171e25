"""Leases, and the checkpoints, in a DynamoDB table: the Kinesis Client
Library's layout, for sinks whose rows are user code's business (`handler`,
`lambda`) and set-ups without a shared database.

One item per (stream, shard): hash key `stream`, range key `leaseKey` (the
shard id), `leaseOwner` and `leaseToken` (the holding tenure's token; both
absent while free), `leaseCounter`, `leaseState`
(`open` | `ended`), `parentShardIds`, and the shard's checkpoint
(`checkpoint`, `checkpointSubSequenceNumber`, `checkpointState`; a lane's
row as `checkpoint#lane-i-of-N`). Rows that are not shards (the stored start
`#start`) are items of their own with a checkpoint and no counter.

The table is created (on demand) if missing. Every write is a conditional
update on `leaseCounter` — checkpoints too: a checkpoint is written only
while `leaseToken` is the writer's tenure's and `leaseCounter` is at or above
the one it took the lease at, else the commit raises `Fenced`. A holder's
writes are conditional on the token as well, never on `leaseOwner` alone.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

from poller.aws import aws_client, classify_aws, error_code
from poller.coordination.lease import Lease
from poller.fencing import Fence, Fenced
from poller.observability.logging import get_logger
from poller.records import Checkpoint, ShardState, TransientError

log = get_logger()

_CONDITION_FAILED = "ConditionalCheckFailedException"
_LANE = "checkpoint#"  # a lane's checkpoint: the attribute `checkpoint` + what its id adds to the shard's


class DynamoDBLeaseStore:
    """`LeaseStore`, `CheckpointStore` and `CheckpointKeeper` over one DynamoDB table."""

    kind = "dynamodb"
    keeps_checkpoints = True
    one_worker = False

    def __init__(self, table: str, region: str | None, endpoint_url: str | None):
        self.table = table
        self.region = region
        self.endpoint_url = endpoint_url
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    def describe(self) -> str:
        return f"the DynamoDB table {self.table}"

    async def open(self) -> None:
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                aws_client("dynamodb", self.region, self.endpoint_url, max_attempts=2)
            )
            self._stack = stack
            await self._ensure_table()
        except BaseException as e:
            await stack.aclose()
            self._stack = self._client = None
            if isinstance(e, Exception) and not isinstance(e, TransientError):
                raise classify_aws(e) from e
            raise

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()

    async def _ensure_table(self) -> None:
        try:
            await self._client.describe_table(TableName=self.table)
            return
        except Exception as e:
            if error_code(e) != "ResourceNotFoundException":
                raise
        try:
            await self._client.create_table(
                TableName=self.table,
                AttributeDefinitions=[
                    {"AttributeName": "stream", "AttributeType": "S"},
                    {"AttributeName": "leaseKey", "AttributeType": "S"},
                ],
                KeySchema=[
                    {"AttributeName": "stream", "KeyType": "HASH"},
                    {"AttributeName": "leaseKey", "KeyType": "RANGE"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
            log.info("lease table created", table=self.table)
        except Exception as e:
            if error_code(e) != "ResourceInUseException":  # another replica created it meanwhile
                raise
        for _ in range(120):
            status = (await self._client.describe_table(TableName=self.table))["Table"]["TableStatus"]
            if status == "ACTIVE":
                return
            await asyncio.sleep(0.5)
        raise TransientError(f"lease table {self.table} is not ACTIVE yet")

    # -- leases ------------------------------------------------------------------------

    async def list_leases(self, stream: str) -> list[Lease]:
        return [_lease(item) for item in await self._items(stream) if "leaseCounter" in item]

    async def get(self, stream: str, shard_id: str) -> Lease | None:
        item = await self._get(stream, shard_id)
        return _lease(item) if item is not None and "leaseCounter" in item else None

    async def create(self, stream: str, shard_id: str, parents: tuple[str, ...]) -> None:
        item: dict[str, Any] = {
            "stream": {"S": stream},
            "leaseKey": {"S": shard_id},
            "leaseCounter": {"N": "0"},
            "leaseState": {"S": "open"},
        }
        if parents:
            item["parentShardIds"] = {"L": [{"S": p} for p in parents]}
        await self._put_if_absent(item)

    async def take(self, stream: str, lease: Lease, owner: str, token: str) -> Lease | None:
        won = await self._update(
            stream,
            lease.shard_id,
            "SET leaseOwner = :me, leaseToken = :token, leaseCounter = leaseCounter + :one",
            "leaseCounter = :seen AND leaseState = :open",
            {
                ":me": {"S": owner},
                ":token": {"S": token},
                ":seen": _n(lease.counter),
                ":open": {"S": "open"},
            },
        )
        return Lease(lease.shard_id, owner, lease.counter + 1, lease.parents, token=token) if won else None

    async def renew(self, stream: str, lease: Lease) -> Lease | None:
        won = await self._held(stream, lease, "SET leaseCounter = leaseCounter + :one")
        return replace(lease, counter=lease.counter + 1) if won else None

    async def release(self, stream: str, lease: Lease) -> bool:
        return await self._held(
            stream, lease, "SET leaseCounter = leaseCounter + :one REMOVE leaseOwner, leaseToken"
        )

    async def end(self, stream: str, lease: Lease) -> bool:
        return await self._held(
            stream,
            lease,
            "SET leaseCounter = leaseCounter + :one, leaseState = :ended REMOVE leaseOwner, leaseToken",
            {":ended": {"S": "ended"}},
        )

    async def delete(self, stream: str, lease: Lease) -> bool:
        return await self._conditional(
            "DeleteItem",
            self._client.delete_item,
            TableName=self.table,
            Key=_key(stream, lease.shard_id),
            ConditionExpression="leaseCounter = :seen",
            ExpressionAttributeValues={":seen": _n(lease.counter)},
        )

    async def keep_row(self, row: Checkpoint) -> Checkpoint:
        await self._put_if_absent({**_key(row.stream, row.shard_id), **_checkpoint_attributes(row)})
        stored = await self._get(row.stream, row.shard_id)
        rows = _checkpoints(row.stream, stored) if stored is not None else {}
        if row.shard_id not in rows:
            raise TransientError(f"checkpoint row {row.shard_id} vanished as it was stored")
        return rows[row.shard_id]

    # -- checkpoints -------------------------------------------------------------------

    async def load_checkpoints(self, stream: str) -> dict[str, Checkpoint]:
        out: dict[str, Checkpoint] = {}
        for item in await self._items(stream):
            out.update(_checkpoints(stream, item))
        return out

    async def delete_checkpoints(self, stream: str, shard_ids: list[str]) -> None:
        """A shard's rows live on its lease item: they are removed from it (ids of lane
        rows name attributes of their shard's item). The item itself stays, ended, as
        long as the stream lists the shard, so that no worker creates its lease anew."""
        for shard_id in shard_ids:
            item = await self._get(stream, shard_id)
            if item is None:
                continue
            kept = [a for a in item if a.startswith("checkpoint")]
            if not kept:
                continue
            names = {f"#a{i}": a for i, a in enumerate(kept)}
            if "leaseCounter" not in item:  # a row of its own (not a shard's)
                await self._conditional(
                    "DeleteItem", self._client.delete_item, TableName=self.table, Key=_key(stream, shard_id)
                )
                continue
            await self._conditional(
                "UpdateItem",
                self._client.update_item,
                TableName=self.table,
                Key=_key(stream, shard_id),
                UpdateExpression="REMOVE " + ", ".join(names),
                ConditionExpression="leaseCounter = :seen",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={":seen": item["leaseCounter"]},
            )

    async def save_checkpoints(self, stream: str, checkpoints: list[Checkpoint], fence: Fence) -> None:
        """One conditional update of the shard's lease item: refused (`Fenced`) unless
        the item still carries this fence's tenure token, at or above the counter it
        took the lease at."""
        if not fence.current():
            raise Fenced(fence.shard_id, fence.owner, tenure_over=True)
        if not checkpoints:
            # Nothing to write, but the transaction's other rows still need the lease.
            lease = await self.get(stream, fence.shard_id)
            if lease is None or lease.ended or not fence.holds(lease.owner, lease.counter, lease.token):
                raise Fenced(fence.shard_id, lease.owner if lease is not None else None)
            return
        names: dict[str, str] = {}
        values: dict[str, Any] = {
            ":me": {"S": fence.owner},
            ":token": {"S": fence.token or ""},
            ":taken": _n(fence.counter),
        }
        sets: list[str] = []
        for i, c in enumerate(checkpoints):
            if not c.shard_id.startswith(fence.shard_id):
                raise ValueError(f"checkpoint {c.shard_id} is not of shard {fence.shard_id}")
            suffix = c.shard_id[len(fence.shard_id) :]
            lane = {_LANE + suffix.removeprefix("#"): {"M": _position(c)}}
            attributes = lane if suffix else _checkpoint_attributes(c)
            for j, (attribute, value) in enumerate(attributes.items()):
                names[f"#a{i}_{j}"] = attribute  # names, not words: some may be reserved
                values[f":a{i}_{j}"] = value
                sets.append(f"#a{i}_{j} = :a{i}_{j}")
        written = await self._conditional(
            "UpdateItem",
            self._client.update_item,
            TableName=self.table,
            Key=_key(stream, fence.shard_id),
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression="leaseOwner = :me AND leaseToken = :token AND leaseCounter >= :taken",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        if not written:
            holder = await self.get(stream, fence.shard_id)
            raise Fenced(fence.shard_id, holder.owner if holder is not None else None)

    # -- plumbing ----------------------------------------------------------------------

    async def _held(
        self, stream: str, lease: Lease, update: str, extra: dict[str, Any] | None = None
    ) -> bool:
        """A holder's write: conditional on its owner, tenure token and counter."""
        values = {
            ":me": {"S": lease.owner or ""},
            ":token": {"S": lease.token or ""},
            ":seen": _n(lease.counter),
            **(extra or {}),
        }
        condition = "leaseOwner = :me AND leaseToken = :token AND leaseCounter = :seen"
        return await self._update(stream, lease.shard_id, update, condition, values)

    async def _update(
        self, stream: str, shard_id: str, update: str, condition: str, values: dict[str, Any]
    ) -> bool:
        return await self._conditional(
            "UpdateItem",
            self._client.update_item,
            TableName=self.table,
            Key=_key(stream, shard_id),
            UpdateExpression=update,
            ConditionExpression=condition,
            ExpressionAttributeValues={":one": _n(1), **values} if ":one" in update else values,
        )

    async def _conditional(self, operation: str, method: Any, **kwargs: Any) -> bool:
        """True if written; False if its condition failed (another writer came first)."""
        if self._client is None:
            raise TransientError("lease store (dynamodb) is not open")
        try:
            await method(**kwargs)
        except Exception as e:
            if error_code(e) == _CONDITION_FAILED:
                return False
            raise _transient(operation, e) from e
        return True

    async def _get(self, stream: str, shard_id: str) -> dict[str, Any] | None:
        if self._client is None:
            raise TransientError("lease store (dynamodb) is not open")
        try:
            resp = await self._client.get_item(
                TableName=self.table, Key=_key(stream, shard_id), ConsistentRead=True
            )
        except Exception as e:
            raise _transient("GetItem", e) from e
        item: dict[str, Any] | None = resp.get("Item")
        return item

    async def _put_if_absent(self, item: dict[str, Any]) -> None:
        """Written once: a second writer's put is refused, and leaves the first one's."""
        await self._conditional(
            "PutItem",
            self._client.put_item,
            TableName=self.table,
            Item=item,
            ConditionExpression="attribute_not_exists(leaseKey)",
        )

    async def _items(self, stream: str) -> list[dict[str, Any]]:
        if self._client is None:
            raise TransientError("lease store (dynamodb) is not open")
        try:
            return await stream_items(self._client, self.table, stream)
        except Exception as e:
            raise _transient("Query", e) from e


async def stream_items(client: Any, table: str, stream: str) -> list[dict[str, Any]]:
    """Every item of `stream` in the lease table: a consistent Query, page by page.
    Errors are the client's own: each caller says what they mean to it."""
    kwargs: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "#s = :s",
        "ExpressionAttributeNames": {"#s": "stream"},
        "ExpressionAttributeValues": {":s": {"S": stream}},
        "ConsistentRead": True,
    }
    items: list[dict[str, Any]] = []
    while True:
        resp = await client.query(**kwargs)
        items.extend(resp.get("Items", []))
        last = resp.get("LastEvaluatedKey")
        if not last:
            return items
        kwargs["ExclusiveStartKey"] = last


def _transient(operation: str, e: BaseException) -> Exception:
    """Lease writes are retried next round whatever went wrong, except a request the
    table refuses as malformed (a bug: the stream fails and says so)."""
    err = classify_aws(e)
    if isinstance(err, TransientError):
        return TransientError(f"lease store (dynamodb): {operation}: {err}")
    return err


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _key(stream: str, shard_id: str) -> dict[str, Any]:
    return {"stream": {"S": stream}, "leaseKey": {"S": shard_id}}


def _lease(item: dict[str, Any]) -> Lease:
    return Lease(
        item["leaseKey"]["S"],
        item["leaseOwner"]["S"] if "leaseOwner" in item else None,
        int(item["leaseCounter"]["N"]),
        tuple(p["S"] for p in item.get("parentShardIds", {}).get("L", [])),
        item.get("leaseState", {}).get("S") == "ended",
        item["leaseToken"]["S"] if "leaseToken" in item else None,
    )


def _position(c: Checkpoint) -> dict[str, Any]:
    sequence = {"S": c.sequence_number} if c.sequence_number is not None else {"NULL": True}
    return {"sequence": sequence, "sub": _n(c.sub_sequence)}


def _checkpoint_attributes(c: Checkpoint) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "checkpoint": {"S": c.sequence_number} if c.sequence_number is not None else {"NULL": True},
        "checkpointSubSequenceNumber": _n(c.sub_sequence),
        "checkpointState": {"S": str(c.state)},
    }
    return attributes


def _text(value: dict[str, Any] | None) -> str | None:
    return None if value is None or "NULL" in value else str(value["S"])


def _checkpoints(stream: str, item: dict[str, Any]) -> dict[str, Checkpoint]:
    """The checkpoint rows an item holds: its shard's, and its lanes'."""
    shard_id = item["leaseKey"]["S"]
    parents = tuple(p["S"] for p in item.get("parentShardIds", {}).get("L", []))
    out: dict[str, Checkpoint] = {}
    if "checkpointState" in item:
        out[shard_id] = Checkpoint(
            stream,
            shard_id,
            _text(item.get("checkpoint")),
            int(item.get("checkpointSubSequenceNumber", {"N": "0"})["N"]),
            ShardState(item["checkpointState"]["S"]),
            parents,
        )
    for attribute, value in item.items():
        if attribute.startswith(_LANE):
            lane_id = f"{shard_id}#{attribute[len(_LANE) :]}"
            position = value["M"]
            out[lane_id] = Checkpoint(
                stream, lane_id, _text(position.get("sequence")), int(position["sub"]["N"])
            )
    return out


# The item layout, for the operator commands (`poller.operator.lease_table`), which
# read the leases and rewind the checkpoints kept here without holding a lease.
LANE_PREFIX = _LANE
item_key = _key
lease_of_item = _lease
checkpoints_of_item = _checkpoints
checkpoint_attributes = _checkpoint_attributes
