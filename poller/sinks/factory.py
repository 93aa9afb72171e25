"""Sink from config."""

from __future__ import annotations

from poller.config import HandlerSink as HandlerCfg
from poller.config import LambdaSink as LambdaCfg
from poller.config import MysqlSink as MysqlCfg
from poller.config import PostgresSink as PostgresCfg
from poller.config import SqliteSink as SqliteCfg
from poller.config import StreamConfig, TableDestination
from poller.processing.mapping import Mapper
from poller.sinks.base import Sink


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


def failures_table_of(cfg: StreamConfig, default: bool) -> str | None:
    if isinstance(cfg.on_failure, TableDestination):
        return cfg.on_failure.table
    return "poller_failures" if default else None
