"""The lease store and the worker id a stream file asks for."""

from __future__ import annotations

import os
import socket

from poller import dsn as dsn_rules
from poller.config import CoordinationConfig, StreamConfig
from poller.coordination.dynamodb_store import DynamoDBLeaseStore
from poller.coordination.sql_store import SqlLeaseStore
from poller.coordination.store import CheckpointStore, LeaseStore


def worker_id(c: CoordinationConfig) -> str:
    """The configured id, or hostname-pid: unique among live processes."""
    return c.worker_id or f"{socket.gethostname()}-{os.getpid()}"


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
