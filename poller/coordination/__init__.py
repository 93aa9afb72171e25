"""Several replicas of one stream file share its shards through leases, the
way the Kinesis Client Library does, without home-made consensus: the lease
store is a database the user already runs.

- `lease`: a lease (key, owner, counter, parents, ended) and what a worker holds.
- `store`: the store protocol; `sql_store` (the table `poller_leases` in the
  sink's database) and `dynamodb_store` (a DynamoDB table that also keeps the
  checkpoints) implement it, tested by one contract suite.
- `taker`: which leases are available, on this process's monotonic clock.
- `balancer`: how many to hold and which to take or steal — pure.
- `renewer`: renewals every third of `lease_seconds`, and losses.
- `coordinator`: the loop tying them together for one stream; the shard
  fleet asks it what to read and tells it what ended.
- `factory`: the store and worker id a stream file asks for.

Invariants: every lease write is conditional on the lease counter; expiry is
judged on the taker's monotonic clock, never by comparing wall clocks; a
commit made under a lease that passed to another worker is refused inside
its own transaction (`poller.sink_api.Fence`).
"""

from poller.coordination.balancer import Plan, Take, choose, fair_share
from poller.coordination.coordinator import LeaseCoordinator
from poller.coordination.factory import build_store, kept_checkpoints, worker_id
from poller.coordination.lease import HeldLease, Lease
from poller.coordination.store import CheckpointStore, LeaseStore
from poller.coordination.taker import LeaseTaker

__all__ = [
    "CheckpointStore",
    "HeldLease",
    "Lease",
    "LeaseCoordinator",
    "LeaseStore",
    "LeaseTaker",
    "Plan",
    "Take",
    "build_store",
    "choose",
    "fair_share",
    "kept_checkpoints",
    "worker_id",
]
