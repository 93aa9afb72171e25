"""A stream's shard leases as the operator commands see them: who holds each
one, and whether that holder is alive as seen now.

- `lease_store: sink` (`poller_leases` in the sink's database): the age of a
  lease's last write comes from the database's own clock (`updated_at`
  against its `now()`, in the session the workers write with): one clock, so
  no host's wall clock is compared with another's. Held while younger than
  `lease_seconds`; a holder renews every third of it.
- `lease_store: dynamodb`: the items carry no time, so the counters are
  watched by the workers' own rule (`LeaseTaker`): a counter that moves is
  held; one that stood still for `lease_seconds` has expired. The watch ends
  as soon as the question asked is answered, and within `lease_seconds`.

States: `free` (no owner: never taken, or released), `held`, `expired` (the
owner named has not renewed for `lease_seconds`: any worker may take it),
`ended` (the shard was read to its end). Nothing here writes a lease.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from poller.config import StreamConfig
from poller.coordination import LeaseTaker, build_store
from poller.coordination.lease import Lease
from poller.coordination.sql_store import SqlLeaseStore
from poller.fencing import holder_of
from poller.operator.errors import OperatorError
from poller.operator.lease_table import open_lease_table
from poller.records import TransientError

WATCH_INTERVAL = 0.5
# The watcher's name for `LeaseTaker`: never a worker's (worker ids cannot hold parentheses).
_WATCHER = "(operator)"


@dataclass(frozen=True, slots=True)
class LeaseView:
    shard_id: str
    owner: str | None
    counter: int
    state: str  # free | held | expired | ended
    renewed_ago: float | None = None  # seconds since its last write, by the database's clock (SQL)
    holder: str | None = None  # the process of the holding tenure (host and pid, from its token)


def where(cfg: StreamConfig) -> str:
    """The lease store of a stream, for people (never a password)."""
    c = cfg.coordination
    assert c is not None
    if c.lease_store == "dynamodb":
        return f"the DynamoDB table {c.table}"
    return f"{_sql_store(cfg).describe()} (table poller_leases)"


def _sql_store(cfg: StreamConfig) -> SqlLeaseStore:
    try:
        store = build_store(cfg)
    except ValueError as e:
        raise OperatorError(str(e)) from e
    assert isinstance(store, SqlLeaseStore)
    return store


async def observe(
    cfg: StreamConfig,
    shards: Collection[str] | None = None,
    *,
    first_held: bool = False,
    watch: bool = True,
) -> dict[str, LeaseView]:
    """The stream's leases, judged as of now (those of `shards`, if given, are the ones
    watched). `first_held`: stop watching once one of them is seen held; `watch=False`:
    one read (a lease store that needs watching then calls every owned lease held)."""
    c = cfg.coordination
    assert c is not None
    try:
        if c.lease_store == "dynamodb":
            async with open_lease_table(cfg) as table:
                return await _watch(
                    lambda: table.leases(cfg.name), c.lease_seconds, shards, first_held, watch
                )
        return await _aged(cfg, c.lease_seconds)
    except TransientError as e:
        raise OperatorError(f"{cfg.name}: the leases cannot be read from {where(cfg)}: {e}") from e


async def _aged(cfg: StreamConfig, lease_seconds: float) -> dict[str, LeaseView]:
    store = _sql_store(cfg)
    await store.open()
    try:
        aged = await store.list_aged(cfg.name)
    finally:
        await store.close()
    out: dict[str, LeaseView] = {}
    for lease, age in aged:
        state = _unowned(lease) or ("held" if age < lease_seconds else "expired")
        out[lease.shard_id] = LeaseView(
            lease.shard_id, lease.owner, lease.counter, state, round(age, 1), _holder(lease)
        )
    return out


def _holder(lease: Lease) -> str | None:
    """Which process holds it: two processes may share a `worker_id`, never a token."""
    return holder_of(lease.token) if lease.owner is not None and lease.token else None


def _unowned(lease: Lease) -> str | None:
    if lease.ended:
        return "ended"
    return "free" if lease.owner is None else None


async def _watch(
    read: Callable[[], Awaitable[list[Lease]]],
    lease_seconds: float,
    shards: Collection[str] | None,
    first_held: bool,
    watch: bool,
) -> dict[str, LeaseView]:
    taker = LeaseTaker(_WATCHER, lease_seconds)
    deadline = time.monotonic() + lease_seconds + 2 * WATCH_INTERVAL
    while True:
        leases = await read()
        now = time.monotonic()
        taker.observe(leases, now)
        views: dict[str, LeaseView] = {}
        undecided = renewing = False
        for lease in leases:
            state = _judged(taker, lease, now)
            if shards is None or lease.shard_id in shards:
                undecided = undecided or state is None
                renewing = renewing or state == "held"
            # Not judged yet: a lease first seen with an owner counts as just renewed.
            views[lease.shard_id] = LeaseView(
                lease.shard_id, lease.owner, lease.counter, state or "held", holder=_holder(lease)
            )
        if not (watch and undecided) or (first_held and renewing) or now >= deadline:
            return views
        await asyncio.sleep(WATCH_INTERVAL)


def _judged(taker: LeaseTaker, lease: Lease, now: float) -> str | None:
    """free, ended, held (seen renewing) or expired; None while not judged yet."""
    if (unowned := _unowned(lease)) is not None:
        return unowned
    if taker.live_holder(lease, now):
        return "held"
    return "expired" if taker.expired(lease, now) else None


def refusal(stream: str, held: list[LeaseView]) -> str:
    """Why a rewind is not written, naming each worker and its shards (one line)."""
    by_owner: dict[str, list[LeaseView]] = {}
    for v in held:
        by_owner.setdefault(v.owner or "", []).append(v)
    who = "; ".join(f"worker {owner!r} holds {_shards(views)}" for owner, views in sorted(by_owner.items()))
    return (
        f"{stream}: not rewound: {who}. A running worker overwrites the checkpoints of its shards "
        "with its next commits: stop it (SIGTERM releases its leases) and rewind then, or pass "
        "--force to write the rewind anyway"
    )


def _shards(views: list[LeaseView]) -> str:
    ids = sorted(v.shard_id for v in views)
    listed = ", ".join(ids[:4]) + (f" and {len(ids) - 4} more" if len(ids) > 4 else "")
    ages = [v.renewed_ago for v in views if v.renewed_ago is not None]
    renewed = f" (renewed {min(ages):.1f}s ago)" if ages else ""
    return f"the lease{'s' if len(ids) > 1 else ''} of {listed}{renewed}"
