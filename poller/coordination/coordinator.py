"""One worker's side of a stream's leases (KCL's LeaseCoordinator): every third
of `lease_seconds` it renews what it holds (`renewer`), lists the stream's
leases, creates the missing ones of the shards its fleet may read, drops
those of shards gone from the listing, and takes what it should (`taker`
says what is available, `balancer` how many and which). The fleet reads what
it holds (`holding`, `fence`), stops the workers of leases lost
(`take_lost`), and reports ends, refused commits and shutdown.

Invariants:
- every lease write is conditional on the counter (see `store`); expiry is
  judged on this process's monotonic clock alone;
- a lease is held by a tenure, not a name: each take writes a fresh tenure
  token (`poller.fencing`), and every fencing check and holder's write
  compares it, so a second process sharing this `worker_id` never passes the
  fence; seeing this id on a live lease under another process's token is a
  duplicate-id alarm (error log naming both processes, a metric), and no
  lease is taken while it lasts;
- a shard is never taken while this process still runs a worker for it
  (`running`): two tenures of one process never overlap;
- a worker starts only from checkpoints loaded after its lease was taken
  (`loaded_for`), so it resumes from what its previous holder committed;
- a stolen shard becomes readable one renew period after the steal, by when
  its previous holder's renewal has failed and it has stopped reading: at
  most one reader per shard at a time (DynamoDB Streams allows two in all);
- on a graceful stop the leases are released (owner cleared), so other
  workers take them at their next round instead of after expiry.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Collection

from poller.config import ConfigError
from poller.coordination.balancer import choose
from poller.coordination.lease import HeldLease, Lease
from poller.coordination.renewer import NOT_RENEWED, LeaseRenewer
from poller.coordination.store import LeaseStore
from poller.coordination.taker import LeaseTaker
from poller.fencing import CheckpointKeeper, Fence, Tenure, holder_of, process_prefix
from poller.observability import metrics
from poller.observability.logging import get_logger
from poller.records import Checkpoint, TransientError

log = get_logger()


class LeaseCoordinator:
    def __init__(
        self,
        stream: str,
        store: LeaseStore,
        owner: str,
        lease_seconds: float,
        *,
        on_change: Callable[[], None] = lambda: None,
        keeper: CheckpointKeeper | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ):
        self.stream = stream
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.renew_every = lease_seconds / 3
        self.on_change = on_change
        self.keeper = keeper
        self.clock = clock
        self.rng = rng or random.Random()
        self.taker = LeaseTaker(owner, lease_seconds)
        self.renewer = LeaseRenewer(stream, store, owner, lease_seconds, clock)
        self.held: dict[str, HeldLease] = {}
        self.wanted: dict[str, tuple[str, ...]] = {}  # shard → parents: what the fleet may read now
        self.listed: set[str] | None = None  # the shards of the last listing
        self.running: Callable[[], Collection[str]] = lambda: ()  # shards with a worker here
        self._lost: set[str] = set()
        # Stopping: the workers are finishing their batches. Renew what is held until it
        # is released, but take and steal nothing (a steal would stop a victim's worker
        # for a lease released moments later).
        self.draining = False
        self._next_expiry: float | None = None  # of a lease this worker would take
        self._poke = asyncio.Event()
        self._held_gauge = metrics.LEASES_HELD.labels(stream)
        self._held_gauge.set(0)
        self._duplicate_gauge = metrics.DUPLICATE_WORKER_ID.labels(stream)
        self._duplicate_gauge.set(0)
        self._duplicate_logged_at: float | None = None  # the alarm's last error line

    def _event(self, event: str) -> None:
        metrics.LEASE_EVENTS.labels(self.stream, event).inc()

    # -- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds every third of `lease_seconds` — sooner when poked, or when a lease
        it would take expires before then — until `stop`. A round that fails (the
        store unreachable) is tried again at the next."""
        while not stop.is_set():
            started = self.clock()
            self._poke.clear()
            try:
                await self.round()
            except TransientError as e:
                log.warning("lease round failed; trying again", stream=self.stream, error=str(e))
            wake = started + self.renew_every
            if self._next_expiry is not None:
                wake = min(wake, self._next_expiry)
            await self._sleep(stop, max(0.0, wake - self.clock()))

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._poke.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def poke(self) -> None:
        """Run a round now (the fleet has shards it may read that have no lease yet)."""
        self._poke.set()

    async def round(self) -> None:
        lost = await self.renewer.renew(self.held)
        for shard_id, found in lost.items():
            self._lose(shard_id, found)
        if self.draining:
            self._held_gauge.set(len(self.held))
            self.on_change()
            return
        leases = await self.store.list_leases(self.stream)
        if await self._create_missing(leases):
            leases = await self.store.list_leases(self.stream)
        now = self.clock()
        self.taker.observe(leases, now)
        if self.store.one_worker:
            self._refuse_a_second_worker(leases, now)
        await self._drop_gone(leases, now)
        if not self._duplicates(leases, now):
            await self._take(leases, now)
        running = set(self.running())
        self._next_expiry = self.taker.next_expiry(
            (lease for lease in leases if lease.shard_id in self.wanted and lease.shard_id not in running),
            now,
        )
        self._held_gauge.set(len(self.held))
        self.on_change()

    def _forget(self, shard_id: str) -> HeldLease | None:
        """No longer held here: its tenure is over, so commits still under it are refused."""
        h = self.held.pop(shard_id, None)
        if h is not None and h.fence.tenure is not None:
            h.fence.tenure.end()
        return h

    def _lose(self, shard_id: str, found: Lease | str | None) -> None:
        h = self._forget(shard_id)
        if h is None:
            return
        self._lost.add(shard_id)
        self._event("lost")
        if found == NOT_RENEWED:
            log.warning(
                "lease lost: not renewed within lease_seconds, another worker may hold it now",
                stream=self.stream,
                shard=shard_id,
            )
        else:
            holder = found.owner if isinstance(found, Lease) else None
            log.warning("lease lost", stream=self.stream, shard=shard_id, to=holder)

    def _duplicates(self, leases: list[Lease], now: float) -> bool:
        """Another live process holds leases under this worker id: raise the alarm,
        and take nothing until they expire. Its commits and this process's never
        both pass a fence (tokens differ), but balancing by name would be wrong."""
        others = [lease for lease in leases if self.taker.duplicate(lease, now)]
        self._duplicate_gauge.set(1 if others else 0)
        if not others:
            self._duplicate_logged_at = None
            return False
        if self._duplicate_logged_at is None or now - self._duplicate_logged_at >= 60:
            self._duplicate_logged_at = now
            self._event("duplicate_id")
            log.error(
                "duplicate worker_id: another live process holds leases under this worker's id; "
                "taking no lease until they expire. Give each process its own worker_id "
                "(or leave it unset: hostname-pid-random)",
                stream=self.stream,
                worker=self.owner,
                this_process=holder_of(process_prefix()),
                other_process=sorted({holder_of(lease.token) for lease in others}),
                shards=sorted(lease.shard_id for lease in others),
            )
        return True

    async def _create_missing(self, leases: list[Lease]) -> bool:
        known = {lease.shard_id for lease in leases}
        missing = {s: p for s, p in self.wanted.items() if s not in known}
        for shard_id, parents in missing.items():
            await self.store.create(self.stream, shard_id, parents)
        return bool(missing)

    async def _drop_gone(self, leases: list[Lease], now: float) -> None:
        """Leases of shards the stream no longer lists (trimmed away), unless held."""
        if self.listed is None:
            return
        for lease in leases:
            if lease.shard_id in self.listed or lease.shard_id in self.held:
                continue
            unheld = lease.owner is None or lease.ended or self.taker.expired(lease, now)
            if unheld and await self.store.delete(self.stream, lease):
                log.info("lease of an unlisted shard deleted", stream=self.stream, shard=lease.shard_id)

    async def _take(self, leases: list[Lease], now: float) -> None:
        running = set(self.running())
        available = {
            lease.shard_id: how
            for lease in leases
            if lease.shard_id not in running
            and (how := self.taker.availability(lease, self.held, now)) is not None
        }
        # A shard whose worker still runs here is neither taken nor stolen back: that
        # worker may be committing under its old tenure's fence, which names this
        # owner too, so a new tenure must not begin until it has stopped.
        takeable = self.wanted.keys() - running
        plan = choose(
            self.owner,
            leases,
            available,
            self.held,
            takeable,
            self.rng,
            may_steal=not self.store.one_worker,
        )
        won = 0
        for take in plan.takes:
            if won == plan.need:
                break
            started = self.clock()
            tenure = Tenure()
            try:
                taken = await self.store.take(self.stream, take.lease, self.owner, tenure.token)
            except TransientError as e:
                # This row may be locked by a holder frozen mid-commit (the 1 s lock wait
                # ran out): the other takes of the round still go ahead.
                log.warning(
                    "could not take a lease", stream=self.stream, shard=take.lease.shard_id, error=str(e)
                )
                continue
            if taken is None:
                continue  # another worker wrote it first: the next one makes up for it
            won += 1
            stolen = take.how == "stolen"
            self.held[taken.shard_id] = HeldLease(
                taken,
                Fence(taken.shard_id, self.owner, taken.counter, self.keeper, tenure),
                renewed_at=started,
                taken_at=started,
                readable_at=started + self.renew_every if stolen else 0.0,
            )
            self._event("stolen" if stolen else "taken")
            log.info(
                "lease stolen" if stolen else "lease taken",
                stream=self.stream,
                shard=taken.shard_id,
                worker=self.owner,
                previous_owner=take.lease.owner,
                how=take.how,
                held=len(self.held),
            )

    def _refuse_a_second_worker(self, leases: list[Lease], now: float) -> None:
        for lease in leases:
            if self.taker.live_holder(lease, now):
                raise ConfigError(
                    [
                        f"stream {self.stream!r}: worker {lease.owner!r} is reading this stream with its "
                        f"leases in {self.store.describe()} too. SQLite is one process's database: one "
                        "worker only may run a stream on it. Stop the other worker, or keep the leases "
                        "where replicas can share them: a PostgreSQL or MySQL sink (or checkpoint_dsn), "
                        "or coordination.lease_store: dynamodb"
                    ]
                )

    # -- what the fleet asks -----------------------------------------------------------

    def want(self, wanted: dict[str, tuple[str, ...]], listed: set[str]) -> None:
        """The shards the fleet may read now (with their parents), and the listing."""
        new = wanted.keys() - self.wanted.keys()
        self.wanted = wanted
        self.listed = listed
        if new:
            self.poke()

    def holding(self) -> set[str]:
        return set(self.held)

    def readable(self, shard_id: str) -> bool:
        h = self.held.get(shard_id)
        return h is not None and self.clock() >= h.readable_at

    def next_readable(self) -> float | None:
        """Seconds until the next held shard becomes readable, if one is waiting."""
        now = self.clock()
        waits = [h.readable_at - now for h in self.held.values() if h.readable_at > now]
        return min(waits) if waits else None

    def fence(self, shard_id: str) -> Fence | None:
        h = self.held.get(shard_id)
        return h.fence if h is not None else None

    def loaded_for(self, shard_id: str, load_began: float) -> bool:
        """Checkpoints whose load began at `load_began` (this coordinator's clock) were
        read after the shard's lease was taken: what its last holder committed is in
        them, so its worker may start from them."""
        h = self.held.get(shard_id)
        return h is not None and load_began >= h.taken_at

    def abandon(self) -> None:
        """The stream stops without releasing (an error): end every tenure, so nothing
        still running here commits under them; the leases expire for others."""
        for shard_id in list(self.held):
            self._forget(shard_id)
        self._held_gauge.set(0)

    def take_lost(self) -> set[str]:
        """Leases lost since the last call: their workers must stop."""
        lost, self._lost = self._lost, set()
        return lost

    async def ended(self, shard_id: str) -> None:
        """The shard was read to its end (its SHARD_END checkpoint is committed):
        the lease is marked ended and never taken again."""
        h = self._forget(shard_id)
        self._held_gauge.set(len(self.held))
        if h is None:
            return
        try:
            done = await self._write_held(h, self.store.end)
        except TransientError as e:
            # Whoever takes it next finds the shard finished and ends it then.
            log.warning("could not mark a lease ended", stream=self.stream, shard=shard_id, error=str(e))
            return
        log.info("lease ended: shard read to its end", stream=self.stream, shard=shard_id, done=done)

    def fenced(self, shard_id: str) -> None:
        """A commit of this shard was refused: the lease is another worker's."""
        self._event("fenced")
        log.warning(
            "commit refused: the lease has passed to another worker", stream=self.stream, shard=shard_id
        )
        if self._forget(shard_id) is not None:
            self._event("lost")
        self._held_gauge.set(len(self.held))

    async def release_all(self) -> None:
        """Graceful stop: clear the owner of every held lease (after its worker stopped),
        so other workers take them at once rather than after expiry."""
        held = {shard_id: h for shard_id in list(self.held) if (h := self._forget(shard_id)) is not None}
        self._held_gauge.set(0)
        for shard_id, h in held.items():
            try:
                released = await self._write_held(h, self.store.release)
            except TransientError as e:
                log.warning("could not release a lease", stream=self.stream, shard=shard_id, error=str(e))
                continue
            if released:
                self._event("released")
                log.info("lease released", stream=self.stream, shard=shard_id, worker=self.owner)

    async def _write_held(self, h: HeldLease, write: Callable[[str, Lease], Awaitable[bool]]) -> bool:
        """A holder's conditional write; if the counter moved under it by a write of
        this worker whose answer was lost, once more from the counter as read back."""
        async with h.lock:
            if await write(self.stream, h.lease):
                return True
            current = await self.store.get(self.stream, h.lease.shard_id)
            if (
                current is None
                or current.owner != self.owner
                or current.token != h.lease.token
                or current.ended
                or current.counter < h.fence.counter
            ):
                return False
            return await write(self.stream, current)

    async def keep_row(self, row: Checkpoint) -> Checkpoint:
        return await self.store.keep_row(row)
