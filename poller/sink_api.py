"""Where records go, as the rest of poller sees it: the sink (a small
protocol, the transaction handed to it and the result it returns) and the
on-failure destination.

Sources and the failure policy commit through this interface alone; they
never import a sink module, and sinks never import a source or a processing
stage (the import-linter contracts in `pyproject.toml` keep it so). A sink
writes one `Transaction` atomically: its rows, the processed SQS ids, the
failure rows and the checkpoints — all or nothing.

With several replicas a shard's transaction carries the `Fence` of its lease:
the sink verifies it inside that same transaction (or, when the lease store
keeps the checkpoints, hands them to it there), so a commit made after the
lease passed to another worker rolls back whole and raises `Fenced`
(`poller.fencing`, re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from poller.fencing import CheckpointKeeper, Fence, Fenced, Tenure
from poller.records import Checkpoint, Failure, Record
from poller.rows import RowOp

# Marks `poller failures replay` keeps among the processed ids (`<prefix><id>`).
# A file line stays in its file for ever, so its mark does too: purged, the line
# would be replayed again. A failure-queue message is deleted after its replay
# commits; should that delete fail, the message comes back, but never after SQS's
# longest retention (14 days from its sending, which came before the mark).
FILE_REPLAY_MARK = "replay:file:"
QUEUE_REPLAY_MARK = "replay:sqs:"
QUEUE_REPLAY_MARK_SECONDS = 14 * 86_400


@dataclass(slots=True)
class MessageWrite:
    """An SQS message's rows, written only if its id has not been processed before."""

    message_id: str
    ops: list[RowOp]


@dataclass(slots=True)
class Transaction:
    stream: str
    ops: list[RowOp] = field(default_factory=list)
    messages: list[MessageWrite] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    # The records as read that this commit delivers to user code (handler and
    # lambda sinks build the Lambda event from them; SQL sinks use `ops`).
    # Filled by the failure policy, which knows what was delivered already.
    records: list[Record] = field(default_factory=list)
    fence: Fence | None = None  # the shard's lease, with several replicas


@dataclass(slots=True)
class CommitResult:
    rows: int = 0
    duplicates: int = 0  # messages already processed by an earlier delivery
    duplicate_ids: set[str] = field(default_factory=set)


class Sink(Protocol):
    """The narrow surface the sources and the failure policy use. The defaults
    below serve sinks without that bookkeeping (they may subclass this)."""

    kind: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    def coerce(self, ops: list[RowOp]) -> list[RowOp]:
        """The map stage's rows typed for the target's columns; raises
        `MappingError` for a value that does not fit (this record alone)."""
        ...

    async def commit(self, tx: Transaction) -> CommitResult: ...

    async def load_checkpoints(self, stream: str) -> dict[str, Checkpoint]: ...

    async def delete_checkpoints(self, stream: str, shard_ids: list[str]) -> None:
        """Drop tombstones of shards whose children are all processing."""

    async def processed_ids(self, stream: str, ids: list[str]) -> set[str]:
        return set()

    async def purge_processed(self, stream: str, older_than_seconds: float) -> int:
        """Drop the processed ids older than that; never a file replay's mark, and a
        queue replay's only after `QUEUE_REPLAY_MARK_SECONDS` (see below)."""
        return 0

    def commit_age(self) -> float:
        """Seconds the oldest database transaction of a commit in progress has been
        open, 0 when none is: `/readyz` reports one past the stream's bound."""
        return 0.0

    async def shard_taken(self, stream: str, shard_id: str, fence: Fence) -> None:
        """A worker starts reading the shard under a lease this process just took:
        state the sink keeps per shard (a tumbling window) is this process's now."""
        return None


class FailureDestination(Protocol):
    """Where failed records go (`poller/destinations.py` implements it).

    `in_transaction`: the sink writes them as rows of the commit itself (a
    failure table); otherwise `send` writes them just before the commit.
    `store_fallback` keeps, whole, failures the destination refused, and marks
    each with where it went (`Failure.stored_at`)."""

    name: str
    in_transaction: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, failures: list[Failure]) -> None: ...

    async def store_fallback(self, failures: list[Failure], why: str) -> None: ...


__all__ = [
    "CheckpointKeeper",
    "CommitResult",
    "FailureDestination",
    "Fence",
    "Fenced",
    "MessageWrite",
    "Sink",
    "Tenure",
    "Transaction",
]
