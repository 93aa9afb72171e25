"""Keeps this worker's leases: renews each one every third of `lease_seconds`
(a write conditional on owner and counter, moving the counter on) and reports
the ones it lost.

A renewal that fails its condition reads the lease back: another owner or
token, or none, means the lease was taken (or ended) — lost; this tenure's
own token with the counter one renewal on means an earlier renewal of its own
whose answer was lost on the way, and the counter is adopted (anything else,
under its name or not, is another tenure: lost). A lease that could not be
renewed for `lease_seconds` (the store unreachable) counts as lost too: by
then another worker may have taken it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from poller.coordination.lease import HeldLease, Lease
from poller.coordination.store import LeaseStore
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.records import TransientError

log = get_logger()

NOT_RENEWED = "not renewed within lease_seconds"


class LeaseRenewer:
    def __init__(
        self, stream: str, store: LeaseStore, owner: str, lease_seconds: float, clock: Callable[[], float]
    ):
        self.stream = stream
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._renewed = metrics.LEASE_EVENTS.labels(stream, "renewed")

    async def renew(self, held: dict[str, HeldLease]) -> dict[str, Lease | str | None]:
        """Renew every held lease; returns the lost ones: shard → the lease as read
        back (None: gone), or `NOT_RENEWED`."""
        shards = list(held)
        results = await asyncio.gather(*(self._renew(held[s]) for s in shards))
        return {s: found for s, (lost, found) in zip(shards, results, strict=True) if lost}

    async def _renew(self, h: HeldLease) -> tuple[bool, Lease | str | None]:
        """(lost, what `renew` reports for it)."""
        async with h.lock:
            return await self._renew_held(h)

    async def _renew_held(self, h: HeldLease) -> tuple[bool, Lease | str | None]:
        started = self.clock()
        try:
            renewed = await self.store.renew(self.stream, h.lease)
            if renewed is not None:
                h.lease = renewed
                h.renewed_at = started
                self._renewed.inc()
                return False, None
            current = await self.store.get(self.stream, h.lease.shard_id)
        except TransientError as e:
            if self.clock() - h.renewed_at >= self.lease_seconds:
                return True, NOT_RENEWED
            log.warning(
                "could not renew a lease; trying again",
                stream=self.stream,
                shard=h.lease.shard_id,
                error=str(e),
            )
            return False, None
        if (
            current is not None
            and current.owner == self.owner
            and current.token == h.lease.token  # this tenure's: never a namesake's
            and not current.ended
            and current.counter == h.lease.counter + 1  # one renewal of its own, never another's
        ):
            log.info(
                "lease counter moved by a write of this worker whose answer was lost; adopting it",
                stream=self.stream,
                shard=h.lease.shard_id,
                counter=current.counter,
            )
            h.lease = current
            return False, None
        return True, current
