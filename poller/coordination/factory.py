"""The lease store and the worker id a stream file asks for."""

from __future__ import annotations

import os
import secrets
import socket

from poller import dsn as dsn_rules
from poller.config import CoordinationConfig, StreamConfig
from poller.coordination.dynamodb_store import DynamoDBLeaseStore
from poller.coordination.sql_store import SqlLeaseStore
from poller.coordination.store import CheckpointStore, LeaseStore

# Drawn once per process: a stream restarted in it keeps its id, and takes back
# at once the leases its failed run left.
_PROCESS_TOKEN = secrets.token_hex(3)


def worker_id(c: CoordinationConfig) -> str:
    """The configured id, or hostname-pid-random: unique among live processes even
    where two containers share a hostname and both run as PID 1 (host networking)."""
    return c.worker_id or f"{socket.gethostname()}-{os.getpid()}-{_PROCESS_TOKEN}"


def build_store(cfg: StreamConfig) -> LeaseStore:
    """`lease_store: sink` is the database of the sink, or of a handler or lambda
    sink's `checkpoint_dsn`; `dynamodb` is the table named in `coordination`."""
    c = cfg.coordination
    assert c is not None
    if c.lease_store == "dynamodb":
        return DynamoDBLeaseStore(c.table, c.region, c.endpoint_url)
    sink = cfg.sink
    dsn = sink.dsn if sink.type in ("postgres", "mysql", "sqlite") else sink.checkpoint_dsn  # type: ignore[union-attr]
    kind = dsn_rules.kind(dsn)
    if kind is None:
        raise ValueError(f"stream {cfg.name!r}: no lease store for this sink's database")
    return SqlLeaseStore(kind, dsn)


def kept_checkpoints(store: LeaseStore) -> CheckpointStore | None:
    """The store itself when it keeps the checkpoints (DynamoDB), else None (the sink keeps them)."""
    return store if isinstance(store, DynamoDBLeaseStore) else None
