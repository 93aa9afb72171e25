"""How many leases this worker should hold, and which to take — pure.

As the Kinesis Client Library balances: the fair share (target) is the leases
of the stream over the workers that hold any (this one included), rounded up.
A worker below it takes available leases first (free, expired, or its own
from an earlier life of its stream in this process), up to the target, in random order so that workers
starting together do not all reach for the same ones (and one that loses a
race for a lease tries the next in the same round). Only when none is
available does it steal, and at most one lease per round: from the most
loaded worker, when that worker holds more than the target, or exactly the
target while the thief is two or more below it. A steal therefore never
leaves the victim below the thief, so two workers never trade a lease back
and forth.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from poller.coordination.lease import Lease

How = Literal["free", "expired", "mine", "stolen"]


@dataclass(frozen=True, slots=True)
class Take:
    lease: Lease
    how: How


@dataclass(frozen=True, slots=True)
class Plan:
    """Leases to take this round, in order, and how many of them to win: a take
    lost to a faster worker is made up from the next one."""

    takes: list[Take]
    need: int

    def __bool__(self) -> bool:
        return bool(self.takes)


def fair_share(leases: int, workers: int) -> int:
    if leases == 0:
        return 0
    if workers >= leases:
        return 1
    return -(-leases // workers)


def choose(
    me: str,
    leases: list[Lease],
    available: Mapping[str, How],
    held: Collection[str],
    wanted: Collection[str],
    rng: random.Random,
    may_steal: bool = True,
) -> Plan:
    """What to take this round. `leases`: the stream's leases as just listed;
    `available`: those this worker may take now, and how (see `taker`);
    `held`: those it holds; `wanted`: the shards it may read now (lineage)."""
    live = [lease for lease in leases if not lease.ended]
    counts: Counter[str] = Counter({me: len(held)})
    for lease in live:
        if lease.shard_id not in held and lease.shard_id not in available and lease.owner is not None:
            counts[lease.owner] += 1
    target = fair_share(len(live), len(counts))
    need = target - len(held)
    if need <= 0:
        return Plan([], 0)
    candidates = [lease for lease in live if lease.shard_id in available and lease.shard_id in wanted]
    if candidates:
        rng.shuffle(candidates)
        return Plan([Take(lease, available[lease.shard_id]) for lease in candidates], need)
    others = {worker: n for worker, n in counts.items() if worker != me}
    if not may_steal or not others:
        return Plan([], 0)
    victim = max(others, key=lambda worker: (others[worker], worker))
    most = others[victim]
    if most > target or (most == target and need > 1):
        theirs = sorted(
            (lease for lease in live if lease.owner == victim and lease.shard_id in wanted),
            key=lambda lease: lease.shard_id,
        )
        if theirs:
            return Plan([Take(rng.choice(theirs), "stolen")], 1)
    return Plan([], 0)
