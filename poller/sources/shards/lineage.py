"""Shard lineage: which shards may be read now. Pure, no I/O.

Per-key order holds across splits and merges because a child is read only
once every parent has finished. A shard has finished when it left a SHARD_END
checkpoint, when the listing no longer shows it (trimmed away), or when one of
its descendants has a checkpoint — the last rule makes deleting tombstones
safe: a parent still listed after its tombstone is gone is never read again.
"""

from __future__ import annotations

from collections.abc import Iterable

from poller.records import Checkpoint, ShardState
from poller.sources.shards.api import ShardInfo
from poller.sources.shards.positions import parse_lane_id


class Lineage:
    """Which shards may be read now: a child only once every parent has finished.

    A shard has finished when it left a SHARD_END checkpoint, when the listing
    no longer shows it (trimmed away), or when one of its descendants has a
    checkpoint: children start only after their parents end, so a child with a
    checkpoint proves its parent's tombstone was cleaned up after it finished.
    """

    def __init__(self, checkpoints: Iterable[Checkpoint] = ()) -> None:
        self.ended: set[str] = set()
        self.tombstones: set[str] = set()  # SHARD_END rows still stored
        self.checkpointed: set[str] = set()  # shards with any stored row (their own or a lane's)
        self.listed: dict[str, ShardInfo] = {}
        self.children: dict[str, set[str]] = {}
        self._learned: dict[str, set[str]] = {}
        for c in checkpoints:
            lane = parse_lane_id(c.shard_id)
            self.checkpointed.add(lane[0] if lane else c.shard_id)
            if lane is None and c.state == ShardState.SHARD_END:
                self.ended.add(c.shard_id)
                self.tombstones.add(c.shard_id)

    def update(self, shards: Iterable[ShardInfo]) -> None:
        self.listed = {s.shard_id: s for s in shards}
        children: dict[str, set[str]] = {k: set(v) for k, v in self._learned.items()}
        for s in self.listed.values():
            for parent in s.parent_ids:
                children.setdefault(parent, set()).add(s.shard_id)
        self.children = children

    def learn_children(self, shard_id: str, child_ids: Iterable[str]) -> None:
        ids = set(child_ids)
        if ids:
            self._learned.setdefault(shard_id, set()).update(ids)
            self.children.setdefault(shard_id, set()).update(ids)

    def mark_checkpointed(self, shard_id: str) -> None:
        self.checkpointed.add(shard_id)

    def mark_ended(self, shard_id: str) -> None:
        self.ended.add(shard_id)
        self.tombstones.add(shard_id)
        self.checkpointed.add(shard_id)

    def finished(self, shard_id: str) -> bool:
        return self._finished(shard_id, {})

    def _finished(self, shard_id: str, memo: dict[str, bool]) -> bool:
        if shard_id in memo:
            return memo[shard_id]
        memo[shard_id] = False  # lineage has no cycles; this only guards bad input
        result = (
            shard_id in self.ended
            or shard_id not in self.listed
            or any(c in self.checkpointed or self._finished(c, memo) for c in self.children.get(shard_id, ()))
        )
        memo[shard_id] = result
        return result

    def ready(self, shard_id: str) -> bool:
        """Not finished, and every parent is."""
        memo: dict[str, bool] = {}
        info = self.listed.get(shard_id)
        return (
            info is not None
            and not self._finished(shard_id, memo)
            and all(self._finished(p, memo) for p in info.parent_ids)
        )

    def states(self, running: Iterable[str]) -> dict[str, int]:
        """Listed shards by state, for the `poller_shards` gauge."""
        running = set(running)
        memo: dict[str, bool] = {}
        counts = {"waiting_on_parent": 0, "reading": 0, "ended": 0}
        for shard_id in self.listed:
            if shard_id in running:
                counts["reading"] += 1
            elif self._finished(shard_id, memo):
                counts["ended"] += 1
            else:
                counts["waiting_on_parent"] += 1
        return counts

    def expired_tombstones(self) -> list[str]:
        """SHARD_END rows no longer needed: every child has a checkpoint of its own,
        or the shard is gone from the listing."""
        out = []
        for shard_id in sorted(self.tombstones):
            children = self.children.get(shard_id, set())
            if shard_id not in self.listed or (children and children <= self.checkpointed):
                out.append(shard_id)
        return out
