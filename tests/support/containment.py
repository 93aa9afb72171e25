"""The containment workload, shared by `tests/integration/test_containment.py`
(which checks that bad records never block a stream) and `bench/containment.py`
(which measures how `/healthz` answers meanwhile).

200 good records with a bad one every ~15 (the catalogue in
`tests/support/bad_values.py`), read by `poller run` into PostgreSQL or
MariaDB, while `HealthProbe` sends `GET /healthz` from a thread as an
orchestrator would. Every payload is unique, so each row and each failure row
names the record it came from.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import db
from tests.support.bad_values import BAD_RECORDS, BadRecord
from tests.support.daemon import Daemon, metric, wait_for, with_overrides
from tests.support.tables import create_logged_table

GOOD = 200
BAD_ID_BASE = 100_000


def make_table(kind: str, dsn: str, table: str) -> None:
    if kind == "postgres":
        columns = "id bigint PRIMARY KEY, n int, amount numeric(12,2), ts timestamptz, name text"
    else:
        columns = "id BIGINT PRIMARY KEY, n INT, amount DECIMAL(12,2), ts DATETIME(6), name TEXT"
    create_logged_table(kind, dsn, table, columns=columns, log_columns="id bigint", logged=["id"])


def stream_cfg(
    name: str, kind: str, dsn: str, source: dict[str, Any], fallback: Path, **over: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "source": source,
        "batch": {"size": 50, "window_seconds": 0.1},
        "retry": {"max_attempts": 2, "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.5},
        "on_failure": {"type": "table", "table": "poller_failures", "fallback_path": str(fallback)},
        "sink": {
            "type": kind,
            "dsn": dsn,
            "table": name,
            "key": ["id"],
            "columns": {
                "id": "data.id",
                "n": "data.n",
                "amount": "data.amount",
                "ts": "data.ts",
                "name": "data.name",
            },
        },
    }
    return with_overrides(cfg, over)


def good(i: int) -> bytes:
    return json.dumps(
        {"id": i, "n": i, "amount": f"{i}.25", "ts": f"2024-05-01T12:00:{i % 60:02d}Z", "name": f"name-{i}"}
    ).encode()


def workload(for_sqs: bool) -> tuple[list[bytes], dict[bytes, BadRecord]]:
    """The payloads in order, and which of them are bad (every payload is unique)."""
    bad = [b for b in BAD_RECORDS if b.sqs or not for_sqs]
    spacing = GOOD // (len(bad) + 1)
    payloads: list[bytes] = []
    bad_payloads: dict[bytes, BadRecord] = {}
    pending = list(enumerate(bad))
    for i in range(1, GOOD + 1):
        payloads.append(good(i))
        if pending and i % spacing == 0:
            j, b = pending.pop(0)
            p = b.payload(BAD_ID_BASE + j)
            payloads.append(p)
            bad_payloads[p] = b
    assert not pending and len(set(payloads)) == len(payloads)
    return payloads, bad_payloads


def put_all(kinesis: Any, stream: str, payloads: list[bytes]) -> str:
    """Put in order, one partition key; returns the last sequence number."""
    last = ""
    for start in range(0, len(payloads), 100):
        chunk = [{"Data": p, "PartitionKey": "k"} for p in payloads[start : start + 100]]
        resp = kinesis.put_records(StreamName=stream, Records=chunk)
        assert not resp.get("FailedRecordCount"), resp
        last = resp["Records"][-1]["SequenceNumber"]
    return last


@dataclass(frozen=True)
class Probe:
    at: float  # when it was sent, on the wall clock (to compare with the daemon's log)
    latency: float  # seconds until the answer, or until it failed
    error: str | None  # why it got no 200, if it did not


class HealthProbe:
    """`GET /healthz` every `interval` seconds (from one probe's start to the
    next's) on a new connection, as an orchestrator probes; keeps every probe."""

    def __init__(self, port: int, interval: float = 0.1):
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.interval = interval
        self.probes: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            at, started = time.time(), time.monotonic()
            error = None
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    r.read()
                    if r.status != 200:
                        error = f"status {r.status}"
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
            self.probes.append(Probe(at, time.monotonic() - started, error))
            self._stop.wait(max(0.0, started + self.interval - time.monotonic()))

    @contextmanager
    def running(self) -> Iterator[HealthProbe]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)

    def since(self, moment: float) -> list[Probe]:
        """The probes sent at `moment` (wall clock) or later."""
        return [p for p in list(self.probes) if p.at >= moment]


def slowest(probes: list[Probe], n: int = 3) -> str:
    """The `n` slowest probes with their wall-clock moments, for a message."""
    worst = sorted(probes, key=lambda p: p.latency, reverse=True)[:n]
    return ", ".join(
        f"{p.latency * 1000:.0f} ms at {time.strftime('%H:%M:%S', time.gmtime(p.at))}"
        f".{int(p.at % 1 * 1000):03d}Z"
        for p in worst
    )


@dataclass
class KinesisRun:
    """What one run of the Kinesis workload left to check."""

    table: str
    bad: dict[bytes, BadRecord]
    probe: HealthProbe
    contained_from: float  # wall clock: the daemon ready, the records about to be put
    failed_metric: float


def run_kinesis(
    kinesis: Any,
    endpoint_url: str,
    kind: str,
    dsn: str,
    table: str,
    stream: str,
    fallback: Path,
    probe_interval: float = 0.1,
) -> KinesisRun:
    """The workload through `poller run` from a 1-shard stream (created by the
    caller) into `table`, probed from start-up to a second after the checkpoint
    reached the last record (the probes from `contained_from` on are those sent
    while records were contained); the daemon is stopped (exit 0) before it returns."""
    payloads, bad = workload(for_sqs=False)
    source = {
        "type": "kinesis",
        "stream": stream,
        "endpoint_url": endpoint_url,
        "region": "us-east-1",
        "idle_poll_seconds": 0.2,
    }
    cfg = stream_cfg(table, kind, dsn, source, fallback)

    def checkpoint() -> int:
        seq = db.scalar(
            kind,
            dsn,
            "SELECT sequence_number FROM poller_checkpoints WHERE stream = %s AND shard_id = %s",
            (table, "shardId-000000000000"),
        )
        return int(seq or 0)

    with Daemon([cfg]) as d:
        wait_http(d)
        with HealthProbe(d.port, probe_interval).running() as probe:
            d.wait_ready()
            contained_from = time.time()
            last = put_all(kinesis, stream, payloads)
            try:
                wait_for(
                    lambda: d.check_alive() or checkpoint() == int(last), 90, message="checkpoint at the end"
                )
            finally:
                print(d.tail(20))
            time.sleep(1)  # and a while after, idle
            failed = metric(d, "poller_records_total", stream=table, outcome="failed")
            d.check_alive()
        assert d.stop() == 0
    return KinesisRun(table, bad, probe, contained_from, failed)


def wait_http(d: Daemon) -> None:
    wait_for(lambda: d.check_alive() or d.get("/healthz")[0] == 200, 30, 0.05, message="HTTP server up")
