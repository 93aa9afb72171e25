"""Sink from config."""

from __future__ import annotations

from poller import dsn as dsn_rules
from poller.config import (
    HandlerSinkConfig,
    LambdaSinkConfig,
    MysqlSinkConfig,
    PostgresSinkConfig,
    SqliteSinkConfig,
    StreamConfig,
    TableDestination,
)
from poller.rows import RowShape, TableShape
from poller.sink_api import Sink
from poller.sinks.base import SqlSink
from poller.sinks.session_bounds import SessionBounds, session_bounds
from poller.sinks.windows import window_options


def build_sink(cfg: StreamConfig, failures_table: str | None) -> Sink:
    s = cfg.sink
    if isinstance(s, PostgresSinkConfig | MysqlSinkConfig | SqliteSinkConfig):
        shape = TableShape.of(s.columns, s.key, s.on_delete, s.soft_delete_column)
        kw = {"failures_table": failures_table}
        bounds = session_bounds(cfg)
        if isinstance(s, PostgresSinkConfig):
            from poller.sinks.postgres import PostgresSink

            return PostgresSink(s.dsn, shape, s.table, pool_size=s.pool_size, bounds=bounds, **kw)
        if isinstance(s, MysqlSinkConfig):
            from poller.sinks.mysql import MysqlSink

            return MysqlSink(s.dsn, shape, s.table, pool_size=s.pool_size, bounds=bounds, **kw)
        from poller.sinks.sqlite import SqliteSink

        return SqliteSink(s.dsn, shape, s.table, **kw)
    # User code: the bounds are its checkpoint store's, which competing SQS consumers
    # and replicas sharing leases write as a database sink's bookkeeping.
    if isinstance(s, HandlerSinkConfig):
        from poller.sinks.handler import HandlerSink

        return HandlerSink(
            s,
            cfg.name,
            failures_table=failures_table,
            windows=window_options(cfg),
            bounds=session_bounds(cfg),
        )
    if isinstance(s, LambdaSinkConfig):
        from poller.sinks.lambda_sink import LambdaSink

        return LambdaSink(
            s,
            cfg.name,
            failures_table=failures_table,
            windows=window_options(cfg),
            bounds=session_bounds(cfg),
        )
    raise NotImplementedError(f"sink type {s.type!r} is not available in this build")


def checkpoint_store(
    dsn: str,
    failures_table: str | None = None,
    table: str = "",
    shape: RowShape | None = None,
    store: str | None = None,
    bounds: SessionBounds | None = None,
) -> SqlSink:
    """The store of a user-code sink: a SQL sink with no target table, only checkpoints,
    processed ids and, with a `table` destination (the default on a stream), failure rows.
    The config refuses any other DSN first (`_checkpoint_dsn`); this refuses it again
    rather than create a SQLite file named after it. `table` and `shape`: rows the store
    keeps besides (tumbling windows' state), written in the same transactions. `store`:
    the database a database sink's own config names (its DSN schemes are wider). `bounds`:
    the stream's (`session_bounds`), for a store several processes write."""
    shape = shape or TableShape.of(None, [])
    store = store or dsn_rules.kind(dsn)
    if store == "postgres":
        from poller.sinks.postgres import PostgresSink

        return PostgresSink(dsn, shape, table, pool_size=1, failures_table=failures_table, bounds=bounds)
    if store == "mysql":
        from poller.sinks.mysql import MysqlSink

        return MysqlSink(dsn, shape, table, pool_size=1, failures_table=failures_table, bounds=bounds)
    if store == "sqlite":
        from poller.sinks.sqlite import SqliteSink

        return SqliteSink(dsn, shape, table, failures_table=failures_table)
    raise ValueError(f"checkpoint_dsn: not a checkpoint store; give {dsn_rules.CHECKPOINT_DSN_FORMS}")


def failures_table_of(cfg: StreamConfig, default: bool) -> str | None:
    if isinstance(cfg.on_failure, TableDestination):
        return cfg.on_failure.table
    return "poller_failures" if default else None
