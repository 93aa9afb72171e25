"""A shard's checkpoints, written in the same transaction as its rows.

`ShardProgress` is the shard's side: what was read and not yet committed (a
`PrefixTracker`), the shard row as last committed, and the lock that
serializes the commits of the shard's lanes. `LaneCheckpointer` is what one
lane's failure policy is handed: it builds the lane's transactions and, around
each commit, adds the checkpoint rows under the shard's lock and learns that
they committed.

Invariants:
- the rows of a commit are computed under the lock, so each accounts for
  every commit before it; neither the shard row nor a lane row moves backwards;
- with one lane the shard row is the commit's last position; with several, it
  is the contiguous committed prefix, and the lane's own row holds the lane's
  last position (see `positions`);
- progress changes only after the sink reports the commit done: a failed
  commit leaves everything as it was for the retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from poller.processing.failures import Unit
from poller.records import Checkpoint, Failure, Position, ShardState
from poller.rows import RowOp
from poller.sink_api import Fence, Transaction
from poller.sources.shards.api import ShardInfo
from poller.sources.shards.positions import PrefixTracker, lane_checkpoint_id


@dataclass(slots=True)
class ShardTransaction(Transaction):
    """A transaction of one lane of a shard: what its checkpoint rows are computed from."""

    lane: int = 0
    last: Position | None = None  # the last unit's position
    completed: list[tuple[str, Position]] = field(default_factory=list)  # source records it finishes


class ShardProgress:
    """What one shard has read and committed."""

    def __init__(
        self,
        stream: str,
        info: ShardInfo,
        lanes: int,
        checkpoint: Position | None,
        on_checkpointed: Callable[[str], None],
    ):
        self.stream = stream
        self.info = info
        self.shard_id = info.shard_id
        self.lanes = lanes
        self.tracker = PrefixTracker(checkpoint)
        self.written = checkpoint  # the shard row as last committed
        self.lock = asyncio.Lock()
        self.on_checkpointed = on_checkpointed
        # The shard's lease, checked by the sink inside each commit (`Transaction.fence`);
        # None while one process reads every shard.
        self.fence: Fence | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    def read(self, sequence_numbers: Iterable[str]) -> None:
        """Records handed to the lanes, in read order."""
        self.tracker.add(sequence_numbers)
        self._drained.clear()

    def pending(self) -> int:
        """Records read and not yet committed."""
        return len(self.tracker)

    async def drained(self) -> None:
        """Wait until everything read so far is committed."""
        while self.tracker:
            self._drained.clear()
            await self._drained.wait()

    def complete(self, completed: list[tuple[str, Position]]) -> None:
        """Records that need no commit (committed before a restart) or just committed."""
        if completed:
            self.tracker.complete(completed)
            if not self.tracker:
                self._drained.set()

    def rows_for(self, tx: ShardTransaction) -> list[Checkpoint]:
        """What this commit writes, computed under the shard's commit lock: with one
        lane, its last position; with several, the lane's own row and the shard's
        contiguous prefix. Neither ever moves backwards."""
        assert tx.last is not None
        rows: list[Checkpoint] = []
        if self.lanes == 1:
            shard_position: Position | None = tx.last
        else:
            rows.append(self._row(lane_checkpoint_id(self.shard_id, tx.lane, self.lanes), tx.last))
            shard_position = self.tracker.prefix_with(tx.completed)
        if shard_position is not None and shard_position.is_after(self.written):
            rows.append(self._row(self.shard_id, shard_position))
        return rows

    def _row(self, checkpoint_id: str, position: Position) -> Checkpoint:
        parents = self.info.parent_ids if checkpoint_id == self.shard_id else ()
        return Checkpoint(
            self.stream,
            checkpoint_id,
            position.sequence_number,
            position.sub_sequence,
            ShardState.RUNNING,
            parents,
        )

    def committed(self, tx: ShardTransaction) -> None:
        for row in tx.checkpoints:
            if row.shard_id == self.shard_id:
                self.written = row.position
        if tx.checkpoints:
            self.on_checkpointed(self.shard_id)
        self.complete(tx.completed)


class LaneCheckpointer:
    """The checkpointer one lane's failure policy commits with."""

    def __init__(self, progress: ShardProgress, lane: int, failures_in_transaction: bool):
        self.progress = progress
        self.lane = lane
        self.failures_in_transaction = failures_in_transaction
        self.ends: set[int] = set()  # unit indexes that end a source record, in the batch committing

    def build_tx(self, active: list[Unit]) -> Transaction:
        ends = self.ends
        in_tx = self.failures_in_transaction
        ops: list[RowOp] = []
        failures: list[Failure] = []
        completed: list[tuple[str, Position]] = []
        for u in active:
            if u.failure is None:
                ops.extend(u.ops)
            elif in_tx:
                failures.append(u.failure)
            if u.index in ends:
                completed.append((u.source.sequence_number, u.token))
        return ShardTransaction(
            stream=self.progress.stream,
            ops=ops,
            failures=failures,
            lane=self.lane,
            last=active[-1].token,
            completed=completed,
        )

    @asynccontextmanager
    async def checkpoint(self, tx: Transaction) -> AsyncIterator[None]:
        """Around the sink's commit of `tx`: its checkpoint rows, then, once it
        committed, the shard's progress. Commits of one shard take turns."""
        assert isinstance(tx, ShardTransaction)
        progress = self.progress
        async with progress.lock:
            tx.checkpoints = progress.rows_for(tx)
            tx.fence = progress.fence
            yield
            progress.committed(tx)
