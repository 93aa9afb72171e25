"""Builders for realistic payloads the decoders read: CloudWatch Logs subscription
deliveries, KPL aggregates and server_audit lines. Shared by unit and integration
tests so both exercise the same shapes AWS produces."""

from __future__ import annotations

import gzip
import importlib
import json
import sys
from typing import Any

__all__ = [
    "AURORA_TIMESTAMP_US",
    "audit_quote",
    "aurora_audit_line",
    "cloudwatch_payload",
    "kpl_aggregate",
]

# 2017-08-24T17:32:36Z, the example in the Aurora MySQL audit log documentation.
AURORA_TIMESTAMP_US = 1_503_595_956_000_000


def cloudwatch_payload(
    events: list[str],
    *,
    control: bool = False,
    log_group: str = "/aws/rds/cluster/c/audit",
    log_stream: str = "s",
    owner: str = "123456789012",
    first_timestamp_ms: int = AURORA_TIMESTAMP_US // 1000,
) -> bytes:
    """A gzip'd subscription delivery as CloudWatch Logs puts it on a Kinesis stream.

    Events get timestamps one millisecond apart and 56-digit ids like the real ones.
    `control=True` builds the health-check message the service sends first (its
    `events` are ignored: a control message carries the service's own text).
    """
    doc: dict[str, Any]
    if control:
        doc = {
            "messageType": "CONTROL_MESSAGE",
            "owner": "CloudwatchLogs",
            "logGroup": "",
            "logStream": "",
            "subscriptionFilters": [],
            "logEvents": [
                {
                    "id": "",
                    "timestamp": first_timestamp_ms,
                    "message": ("CWL CONTROL MESSAGE: Checking health of destination Kinesis stream."),
                }
            ],
        }
    else:
        doc = {
            "messageType": "DATA_MESSAGE",
            "owner": owner,
            "logGroup": log_group,
            "logStream": log_stream,
            "subscriptionFilters": ["poller-test"],
            "logEvents": [
                {
                    "id": f"{first_timestamp_ms + i:d}".ljust(56, "0"),
                    "timestamp": first_timestamp_ms + i,
                    "message": message,
                }
                for i, message in enumerate(events)
            ],
        }
    return gzip.compress(json.dumps(doc).encode())


def _record_aggregator_class() -> Any:
    # aws_kinesis_agg.aggregator puts its package directory and site-packages at the
    # front of sys.path on import; undo that so tests see the same sys.path as the daemon.
    saved = sys.path[:]
    try:
        return importlib.import_module("aws_kinesis_agg.aggregator").RecordAggregator
    finally:
        sys.path[:] = saved


_RecordAggregator = _record_aggregator_class()


def kpl_aggregate(records: list[tuple[str, bytes]], *, max_size: int | None = None) -> list[bytes]:
    """Encode (partition key, data) user records as KPL aggregates, in order.

    Several blobs come back when the records exceed one aggregate's size limit
    (1 MB, or `max_size` to force a split with small inputs).
    """
    aggregator = _RecordAggregator() if max_size is None else _RecordAggregator(max_size=max_size)
    blobs: list[bytes] = []
    for partition_key, data in records:
        full = aggregator.add_user_record(partition_key, data)
        if full is not None:
            blobs.append(full.get_contents()[2])
    last = aggregator.clear_and_get()
    if last is not None:
        blobs.append(last.get_contents()[2])
    return blobs


def audit_quote(sql: str) -> str:
    """SQL text as the audit log writes `object`: single-quoted, ' and \\ escaped,
    newlines left raw (Aurora)."""
    return "'" + sql.replace("\\", "\\\\").replace("'", "\\'") + "'"


def aurora_audit_line(
    sql: str | None,
    *,
    timestamp: int | str = AURORA_TIMESTAMP_US,
    serverhost: str = "ip-10-0-0-1",
    username: str = "admin",
    host: str = "10.0.0.2",
    connection_id: int = 42,
    query_id: int = 7,
    operation: str = "QUERY",
    database: str = "app",
    retcode: int | str = 0,
) -> str:
    """One server_audit line. `sql=None` leaves `object` empty (CONNECT and the like);
    a str `timestamp` gives MariaDB's `YYYYMMDD hh:mm:ss` form."""
    obj = "" if sql is None else audit_quote(sql)
    return (
        f"{timestamp},{serverhost},{username},{host},{connection_id},{query_id},"
        f"{operation},{database},{obj},{retcode}"
    )
