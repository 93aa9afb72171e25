"""SQS messages in flight are bounded in bytes as well as in count: through
`poller run` on moto and PostgreSQL, the in-flight gauge never passes the
bound, a message larger than the bound still goes through on its own, and
every message lands once."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest

from tests.support import db
from tests.support.aws import client, queue_depth, send_all
from tests.support.daemon import Daemon, wait_for
from tests.support.servers import MotoServer
from tests.support.tables import create_logged_table

pytestmark = pytest.mark.integration


def stream(name: str, dsn: str, queue_url: str, endpoint: str, max_bytes: int) -> dict[str, Any]:
    return {
        "name": name,
        "source": {
            "type": "sqs",
            "queue_url": queue_url,
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "wait_seconds": 1,
            "max_concurrency": 3,
            "max_inflight_bytes": max_bytes,
        },
        "batch": {"size": 50, "window_seconds": 0.3},
        "sink": {
            "type": "postgres",
            "dsn": dsn,
            "table": name,
            "key": ["id"],
            "columns": {"id": "data.id", "pad": "data.pad"},
        },
    }


class GaugeWatch:
    """Scrapes the daemon's in-flight gauges in a thread; keeps the largest values seen."""

    def __init__(self, d: Daemon, name: str) -> None:
        self.d = d
        self.bytes_sample = f'poller_sqs_inflight_bytes{{stream="{name}"}}'
        self.messages_sample = f'poller_sqs_inflight_messages{{stream="{name}"}}'
        self.most_bytes = 0.0
        self.most_messages = 0.0
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            status, text = self.d.get("/metrics")
            if status != 200:
                continue
            values = {
                line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
                for line in text.splitlines()
                if line.startswith("poller_sqs_inflight_")
            }
            self.most_bytes = max(self.most_bytes, values.get(self.bytes_sample, 0.0))
            self.most_messages = max(self.most_messages, values.get(self.messages_sample, 0.0))
            self.scrapes += 1

    def __enter__(self) -> GaugeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def body(i: int, size: int) -> str:
    doc = {"id": i, "pad": ""}
    doc["pad"] = "x" * (size - len(json.dumps(doc)))
    text = json.dumps(doc)
    assert len(text) == size
    return text


@pytest.mark.parametrize(
    ("max_message", "max_bytes", "size", "n"),
    [
        # Four of the queue's largest messages fit the bound: receives ask for at most that.
        (2048, 8192, 1500, 120),
        # Every message is larger than the bound: each is taken alone, and none is stuck.
        (4096, 1024, 3000, 12),
    ],
    ids=["several-fit", "each-over-the-bound"],
)
def test_inflight_bytes_bounded_and_everything_lands(
    moto: MotoServer, pg_dsn: str, max_message: int, max_bytes: int, size: int, n: int
) -> None:
    table = f"sqs_bytes_{uuid.uuid4().hex[:6]}"
    create_logged_table(
        "postgres",
        pg_dsn,
        table,
        columns="id bigint PRIMARY KEY, pad text NOT NULL",
        log_columns="id bigint",
        logged=["id"],
    )
    sqs = client("sqs", moto.url)
    url = sqs.create_queue(QueueName=table, Attributes={"MaximumMessageSize": str(max_message)})["QueueUrl"]
    send_all(sqs, url, [body(i, size) for i in range(n)])
    with Daemon([stream(table, pg_dsn, url, moto.url, max_bytes)]) as d:
        d.wait_ready()
        with GaugeWatch(d, table) as watch:
            wait_for(
                lambda: int(db.scalar("postgres", pg_dsn, f"SELECT count(*) FROM {table}")) == n,
                180,
                message="all rows written",
            )
            wait_for(lambda: queue_depth(sqs, url) == 0, 60, message="queue drained")
        assert watch.scrapes > 10
        assert 0 < watch.most_bytes <= max(max_bytes, size)
        if size > max_bytes:
            assert watch.most_messages == 1  # alone, as it is over the bound
    writes = int(db.scalar("postgres", pg_dsn, f"SELECT count(*) FROM {table}_writes"))
    assert writes == n  # each message written once
