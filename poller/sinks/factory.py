"""Sink from config."""

from __future__ import annotations

from poller import dsn as dsn_rules
from poller.config import HandlerSink as HandlerCfg
from poller.config import LambdaSink as LambdaCfg
from poller.config import MysqlSink as MysqlCfg
from poller.config import PostgresSink as PostgresCfg
from poller.config import SqliteSink as SqliteCfg
from poller.config import StreamConfig, TableDestination
from poller.processing.mapping import Mapper
from poller.sinks.base import Sink, SqlSink


def build_sink(cfg: StreamConfig, failures_table: str | None) -> Sink:
    s = cfg.sink
    if isinstance(s, PostgresCfg | MysqlCfg | SqliteCfg):
        mapper = Mapper(s.columns, s.key, s.on_delete, s.soft_delete_column)
        kw = {"failures_table": failures_table}
        if isinstance(s, PostgresCfg):
            from poller.sinks.postgres import PostgresSink

            return PostgresSink(s.dsn, mapper, s.table, pool_size=s.pool_size, **kw)
        if isinstance(s, MysqlCfg):
            from poller.sinks.mysql import MysqlSink

            return MysqlSink(s.dsn, mapper, s.table, pool_size=s.pool_size, **kw)
        from poller.sinks.sqlite import SqliteSink

        return SqliteSink(s.dsn, mapper, s.table, **kw)
    if isinstance(s, HandlerCfg):
        from poller.sinks.handler import HandlerSink

        return HandlerSink(s, cfg.name)
    if isinstance(s, LambdaCfg):
        from poller.sinks.lambda_sink import LambdaSink

        return LambdaSink(s, cfg.name)
    raise NotImplementedError(f"sink type {s.type!r} is not available in this build")


def checkpoint_store(dsn: str) -> SqlSink:
    """The store of a user-code sink: a SQL sink with no target table, only checkpoints
    and processed ids (no failures table: `table` destinations are refused for these
    sinks). The config refuses any other DSN first (`_checkpoint_dsn`); this refuses it
    again rather than create a SQLite file named after it."""
    mapper = Mapper(None, [])
    store = dsn_rules.kind(dsn)
    if store == "postgres":
        from poller.sinks.postgres import PostgresSink

        return PostgresSink(dsn, mapper, "", pool_size=1, failures_table=None)
    if store == "mysql":
        from poller.sinks.mysql import MysqlSink

        return MysqlSink(dsn, mapper, "", pool_size=1, failures_table=None)
    if store == "sqlite":
        from poller.sinks.sqlite import SqliteSink

        return SqliteSink(dsn, mapper, "", failures_table=None)
    raise ValueError(f"checkpoint_dsn: not a checkpoint store; give {dsn_rules.CHECKPOINT_DSN_FORMS}")


def failures_table_of(cfg: StreamConfig, default: bool) -> str | None:
    if isinstance(cfg.on_failure, TableDestination):
        return cfg.on_failure.table
    return "poller_failures" if default else None
