"""How long one process may keep another waiting in the database.

Where several processes write the same rows — replicas sharing shards through
leases (`coordination:`), competing consumers of an SQS queue — a process
frozen inside a transaction (SIGSTOP, `docker pause`, a VM stopped) keeps its
TCP connection alive and, with it, every lock its transaction took: the rows,
the checkpoint, the lease row a taker needs, the `poller_processed` entry of
an SQS message that another replica received again. Two bounds, set on the
sink's sessions by the server, make that wait finite and visible:

- `idle_in_transaction`: the server ends a session idle inside a transaction
  this long, rolling it back and freeing its locks (PostgreSQL
  `idle_in_transaction_session_timeout`; MariaDB `idle_transaction_timeout`;
  MySQL 8, which has neither, `wait_timeout`).
- `lock_wait`: a statement waiting this long for a lock fails (PostgreSQL
  `lock_timeout`; InnoDB `innodb_lock_wait_timeout`, whole seconds), so a
  commit blocked by a frozen peer becomes a counted transient error, retried
  with backoff, rather than a silent hang.

Invariants: `lock_wait <= idle_in_transaction / 3`, so a commit blocked by a
frozen peer fails, is counted and is retried before the server frees the
peer's locks; `lock_wait <= 5 s`, far beyond a healthy commit's wait for
another's row and below SQS's default visibility timeout (30 s); with leases,
`lock_wait <= lease_seconds / 3` (the renewal period), and with an SQS
`visibility_timeout_seconds` given, below a third of it. A commit (the
database transaction) running longer than `idle_in_transaction` is not waiting
on a frozen peer — the server would have ended the peer's session — so
`/readyz` reports it (`long_commit`).
"""

from __future__ import annotations

from dataclasses import dataclass

from poller.config import SqsSource, StreamConfig

DEFAULT_IDLE_SECONDS = 30
MAX_LOCK_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class SessionBounds:
    idle_in_transaction: int  # seconds
    lock_wait: float  # seconds
    # False for a single worker with no bound given: nobody shares its rows, and the
    # server's defaults stand (the readiness bound still applies).
    enforced: bool

    @property
    def long_commit(self) -> float:
        """Seconds past which a running commit makes the stream not ready."""
        return float(self.idle_in_transaction)


def session_bounds(cfg: StreamConfig) -> SessionBounds:
    coordination = cfg.coordination
    given: int | None = getattr(cfg.sink, "idle_in_transaction_seconds", None)
    if given is not None:
        idle = given
    elif coordination is not None:
        # Three lease periods: far beyond any pause between a commit's statements.
        idle = max(DEFAULT_IDLE_SECONDS, int(3 * coordination.lease_seconds))
    else:
        idle = DEFAULT_IDLE_SECONDS
    lock_wait = min(MAX_LOCK_WAIT_SECONDS, idle / 3)
    if coordination is not None:
        lock_wait = min(lock_wait, coordination.lease_seconds / 3)
    source = cfg.source
    if isinstance(source, SqsSource) and source.visibility_timeout_seconds:
        lock_wait = min(lock_wait, source.visibility_timeout_seconds / 3)
    shared = coordination is not None or isinstance(source, SqsSource)
    return SessionBounds(idle, lock_wait, enforced=shared or given is not None)
