"""What a lease store offers the coordinator, and what it reports back.

Every method that writes is conditional on the lease's counter as the caller
last read it (and, for a holder, on its owner): it returns the lease as
written, or None / False when the condition failed — another worker wrote it
first. A store that cannot be reached raises `TransientError`; the
coordinator tries again at its next round.

Two implementations share one contract suite: `SqlLeaseStore` (the table
`poller_leases` in the sink's own database) and `DynamoDBLeaseStore` (a
DynamoDB table, the Kinesis Client Library's way, which also keeps the
checkpoints).
"""

from __future__ import annotations

from typing import Protocol

from poller.coordination.lease import Lease
from poller.fencing import Fence
from poller.records import Checkpoint


class LeaseStore(Protocol):
    kind: str  # postgres | mysql | sqlite | dynamodb
    # The store keeps the checkpoints too (DynamoDB): the fleet loads and deletes
    # them here, and commits hand them over as a `CheckpointKeeper`.
    keeps_checkpoints: bool
    # One process's database (SQLite): a second live worker is refused.
    one_worker: bool

    def describe(self) -> str:
        """Where the leases are, for messages (never a password)."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def list_leases(self, stream: str) -> list[Lease]: ...

    async def get(self, stream: str, shard_id: str) -> Lease | None: ...

    async def create(self, stream: str, shard_id: str, parents: tuple[str, ...]) -> None:
        """A free lease, unless one exists already (then nothing changes)."""

    async def take(self, stream: str, lease: Lease, owner: str, token: str) -> Lease | None:
        """Owner := `owner` and token := `token` (a new tenure's), if the counter is
        still `lease.counter` and it has not ended."""

    async def renew(self, stream: str, lease: Lease) -> Lease | None:
        """Counter + 1, if owner, token and counter are still `lease`'s."""

    async def release(self, stream: str, lease: Lease) -> bool:
        """Owner and token := None, if owner, token and counter are still `lease`'s."""

    async def end(self, stream: str, lease: Lease) -> bool:
        """Ended, owner and token := None, if owner, token and counter are still `lease`'s."""

    async def delete(self, stream: str, lease: Lease) -> bool:
        """Gone, if the counter is still `lease.counter`."""

    async def keep_row(self, row: Checkpoint) -> Checkpoint:
        """Store this checkpoint row unless one of its id exists; return the stored one
        (so that whoever writes first, every worker uses the same value)."""
        ...


class CheckpointStore(Protocol):
    """A store that keeps the checkpoints (DynamoDB): what the fleet reads and drops there."""

    async def load_checkpoints(self, stream: str) -> dict[str, Checkpoint]: ...

    async def delete_checkpoints(self, stream: str, shard_ids: list[str]) -> None: ...

    async def save_checkpoints(self, stream: str, checkpoints: list[Checkpoint], fence: Fence) -> None: ...
