"""Which leases this worker may take now — judged on its own monotonic clock only.

KCL's rule: a lease has expired when its counter has not moved for
`lease_seconds` since this worker first saw that counter value. No wall clock
is read, so hosts whose clocks disagree still agree on nothing but counters.

- A lease seen for the first time with an owner counts as renewed just now
  (its holder may be alive); one seen for the first time without an owner is
  free at once.
- A lease with no owner (released, or never taken) is free at once.
- A lease is *ours* only if its tenure token was issued by this process (a
  stream that ran here before and stopped): that one may be taken back at once.
  A lease that names this worker id under a token of another process is
  another holder's, whatever its name: taken only once expired, and while
  its counter moves it is a *duplicate*: two live processes share one
  `worker_id` (the coordinator raises the alarm and takes nothing).

Pure: no I/O; `now` is passed in.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Literal

from poller.coordination.lease import Lease
from poller.fencing import issued_here

Availability = Literal["free", "expired", "mine"]

_NEVER = float("-inf")


class LeaseTaker:
    """Watches every lease of a stream across rounds and says which are available."""

    def __init__(self, owner: str, lease_seconds: float):
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._seen: dict[str, tuple[int, float]] = {}  # shard → (counter, monotonic time first seen)
        self._moved: set[str] = set()  # counters seen to move while watched: a live holder

    def observe(self, leases: Iterable[Lease], now: float) -> None:
        seen: dict[str, tuple[int, float]] = {}
        moved: set[str] = set()
        for lease in leases:
            before = self._seen.get(lease.shard_id)
            if before is not None and before[0] == lease.counter:
                seen[lease.shard_id] = before
                if lease.shard_id in self._moved:
                    moved.add(lease.shard_id)
            elif before is None:
                seen[lease.shard_id] = (lease.counter, _NEVER if lease.owner is None else now)
            else:
                seen[lease.shard_id] = (lease.counter, now)
                moved.add(lease.shard_id)
        self._seen = seen
        self._moved = moved

    def expired(self, lease: Lease, now: float) -> bool:
        counter, since = self._seen.get(lease.shard_id, (lease.counter, now))
        return counter == lease.counter and now - since >= self.lease_seconds

    def next_expiry(self, leases: Iterable[Lease], now: float) -> float | None:
        """The earliest moment one of these (held by others, not expired yet) expires
        if its counter does not move: a round then sees it at once."""
        moments = []
        for lease in leases:
            if lease.owner is None or self.ours(lease) or lease.ended:
                continue
            counter, since = self._seen.get(lease.shard_id, (lease.counter, now))
            if counter == lease.counter and since + self.lease_seconds > now:
                moments.append(since + self.lease_seconds)
        return min(moments) if moments else None

    def availability(self, lease: Lease, held: Collection[str], now: float) -> Availability | None:
        """How this worker may take `lease` now, or None."""
        if lease.ended or lease.shard_id in held:
            return None
        if lease.owner is None:
            return "free"
        if self.ours(lease):
            return "mine"
        return "expired" if self.expired(lease, now) else None

    def ours(self, lease: Lease) -> bool:
        """Held under this worker id by a tenure of this very process."""
        return lease.owner == self.owner and issued_here(lease.token)

    def live_holder(self, lease: Lease, now: float) -> bool:
        """Another process holds it and was seen renewing it: it is alive."""
        return (
            lease.owner is not None
            and not self.ours(lease)
            and not lease.ended
            and lease.shard_id in self._moved
            and not self.expired(lease, now)
        )

    def duplicate(self, lease: Lease, now: float) -> bool:
        """A live holder that is another process using this worker's id."""
        return lease.owner == self.owner and self.live_holder(lease, now)
