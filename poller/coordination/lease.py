"""A shard lease as the store holds it, and what one worker holds of it.

A lease is keyed by (stream, shard). `owner` is None while it is free;
`counter` moves on with every write (take, renew, release, end), and every
write is conditional on it, so two writers never both succeed from the same
view. `token` is the holder's tenure token (`poller.fencing`): a holder's
writes are conditional on it too, so a process that merely shares the
owner's `worker_id` can neither renew, release nor commit under it.
`ended`: the shard was read to its end; the lease is never taken again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from poller.fencing import Fence


@dataclass(frozen=True, slots=True)
class Lease:
    shard_id: str
    owner: str | None = None
    counter: int = 0
    parents: tuple[str, ...] = ()
    ended: bool = False
    token: str | None = None  # the holding tenure's; None while free (or written by an older poller)


@dataclass(slots=True)
class HeldLease:
    """A lease this worker holds: the row as it last wrote it, its fence (the
    counter it took it at and its tenure), when it took it and when it last
    renewed it (monotonic clock)."""

    lease: Lease
    fence: Fence
    renewed_at: float
    taken_at: float = 0.0  # a worker starts only from checkpoints loaded after this
    readable_at: float = 0.0  # a stolen shard is read once its last holder has seen the loss
    # One write of this lease at a time (a renewal, its end, its release): each is
    # conditional on the counter the one before it left.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
