"""What a rewind (or a replay) must find before it writes, and what `--force`
wrote over.

The checks run where the write can no longer be raced:

- With `coordination:` a rewind is refused while a worker holds a live lease
  on what it rewrites (the whole stream, or the shard and its descendants).
  SQL stores decide it inside the transaction that rewrites the checkpoints,
  with the stream's lease rows locked (`stores.Store.rewrite`): a take waits
  for that transaction, so it either came before the check (and is seen) or
  after the commit (and its worker reads the rewound rows). The DynamoDB
  lease table makes each write conditional on the lease counter the check
  saw (`lease_table.LeaseTable.rewrite`): a lease taken or renewed in
  between fails the write, and the rewind with it.
- Without `coordination:` a rewind or a replay is refused while a daemon is
  live on the stream: its `poller_daemons` row renewed within
  `daemons.STALE_SECONDS` by the database's clock (`poller.sinks.daemons`),
  read in the same transaction as the writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from poller.config import StreamConfig
from poller.coordination.lease import Lease
from poller.operator import leases
from poller.operator.errors import OperatorError
from poller.operator.stores import as_utc
from poller.records import Checkpoint, ShardState
from poller.sinks.daemons import STALE_SECONDS, DaemonRow


@dataclass(slots=True)
class Guard:
    cfg: StreamConfig
    # The new row of each shard a rewind rewrites (None: no row); None: the whole stream.
    plan: dict[str, Checkpoint | None] | None
    force: bool
    forced_leases: list[leases.LeaseView] = field(default_factory=list)
    forced_daemons: list[DaemonRow] = field(default_factory=list)

    def in_scope(self, shard_id: str) -> bool:
        return self.plan is None or shard_id in self.plan

    async def leases(self) -> tuple[dict[str, leases.LeaseView], list[Lease]]:
        """The leases in scope as seen now, and the ended ones to open again (the
        shards the rewind makes unfinished). Refused while one is live, unless forced."""
        cfg = self.cfg
        if cfg.coordination is None:
            return {}, []
        views = await leases.observe(cfg, self.plan, first_held=not self.force, watch=not self.force)
        seen = {k: v for k, v in views.items() if self.in_scope(k)}
        held = [v for v in seen.values() if v.state == "held"]
        if held and not self.force:
            raise OperatorError(leases.refusal(cfg.name, held))
        self.forced_leases = held
        reopen = [
            Lease(v.shard_id, None, v.counter, ended=True)
            for v in seen.values()
            if v.state == "ended" and self._unfinished(v.shard_id)
        ]
        return seen, reopen

    def _unfinished(self, shard_id: str) -> bool:
        """Read again after the rewind: every shard of a whole-stream rewind (no tombstone
        is left), a planned shard whose new row is not SHARD_END."""
        if self.plan is None:
            return True
        row = self.plan.get(shard_id)
        return row is None or row.state != ShardState.SHARD_END

    def daemons(self, live: list[DaemonRow], refused: str) -> None:
        """Refused (`refused`: "not rewound", "not replayed") while a daemon is live on
        the stream, unless forced."""
        if live and not self.force:
            raise OperatorError(
                f"{self.cfg.name}: {refused}: {running(live)}. A running daemon keeps its place "
                "in memory and writes over what this would write: stop it (a daemon killed with "
                f"SIGKILL counts as running for up to {STALE_SECONDS:.0f}s) and run this then, or "
                "pass --force to write anyway"
            )
        self.forced_daemons = live


def running(live: list[DaemonRow]) -> str:
    """The daemons of a stream, for people: host, pid, since when."""
    return "; ".join(
        f"a daemon runs the stream on host {d.host!r}, pid {d.pid} (since {_when(d)}, "
        f"renewed {d.renewed_ago:.1f}s ago)"
        for d in live
    )


def _when(d: DaemonRow) -> str:
    at = as_utc(d.started_at)
    return at.isoformat(timespec="seconds") if at is not None else str(d.started_at)


def forced_text(name: str, guard: Guard) -> str | None:
    """The warning of a rewind or replay forced over live leases or daemons (stderr)."""
    parts: list[str] = []
    if guard.forced_leases:
        held = guard.forced_leases
        owners = ", ".join(sorted({repr(v.owner) for v in held}))
        parts.append(
            f"written while worker(s) {owners} held the lease of {len(held)} shard(s): a worker "
            "still running keeps reading from where it is and overwrites a shard's checkpoint at "
            "its next commit; the rewind holds for the shards none commits to before the stream restarts"
        )
    if guard.forced_daemons:
        parts.append(
            f"written while {running(guard.forced_daemons)}: a daemon still running keeps its "
            "place in memory and writes over this"
        )
    return f"warning: {name}: " + "; ".join(parts) if parts else None
