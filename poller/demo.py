"""`poller demo`: the whole path on one machine, no cloud account, no database
server: moto's AWS emulator in-process, an SQS queue of sample orders, and
rows landing in an SQLite file while you watch."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from pathlib import Path

from poller.app import Supervisor
from poller.aws import aws_client
from poller.config import parse_stream
from poller.observability.logging import get_logger

log = get_logger()


def _start_emulator() -> tuple[object, str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:  # pragma: no cover - the README installs it
        raise SystemExit("the demo needs moto: pip install 'poller[demo]'") from e
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def _order(i: int) -> dict[str, object]:
    return {
        "order_id": i,
        "customer": random.choice(["ada", "grace", "linus", "barbara", "ken"]),
        "amount": round(random.uniform(5, 500), 2),
        "status": random.choice(["paid", "paid", "paid", "refunded", "pending"]),
    }


async def run_demo(db: str, messages: int, http_port: int, exit_after: float | None) -> int:
    # The emulator accepts any credentials; never pick up a real account's.
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "demo"),
        ("AWS_SECRET_ACCESS_KEY", "demo"),
        ("AWS_SESSION_TOKEN", ""),
    ):
        os.environ[var] = value
    server, endpoint = _start_emulator()
    path = Path(db).absolute()  # noqa: ASYNC240 - once, before the loop is busy
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS orders (order_id INTEGER PRIMARY KEY, customer TEXT, "
            "amount REAL, status TEXT, received_at TEXT)"
        )
    try:
        async with aws_client("sqs", "us-east-1", endpoint) as sqs:
            queue_url = (await sqs.create_queue(QueueName="orders"))["QueueUrl"]
            cfg = parse_stream(
                {
                    "name": "orders-demo",
                    "source": {
                        "type": "sqs",
                        "queue_url": queue_url,
                        "region": "us-east-1",
                        "endpoint_url": endpoint,
                        "wait_seconds": 2,
                    },
                    "batch": {"size": 50, "window_seconds": 0.5},
                    "filters": [{"body": {"status": ["paid", "refunded"]}}],
                    "sink": {
                        "type": "sqlite",
                        "dsn": str(path),
                        "table": "orders",
                        "key": ["order_id"],
                        "columns": {
                            "order_id": "data.order_id",
                            "customer": "data.customer",
                            "amount": "data.amount",
                            "status": "data.status",
                            "received_at": "arrival_time",
                        },
                    },
                },
                "demo",
                env={},
            )
            supervisor = Supervisor([cfg], http_port=http_port, http_host="127.0.0.1")
            print(f"\n  emulator: {endpoint}   queue: {queue_url}")
            print(f"  rows go to: {path} (table orders; pending orders are filtered out)")
            print(
                f"  metrics: http://127.0.0.1:{http_port}/metrics   readiness: http://127.0.0.1:{http_port}/readyz"
            )
            print("  Ctrl-C to stop.\n")

            async def produce() -> None:
                for start in range(0, messages, 10):
                    entries = [
                        {"Id": str(i), "MessageBody": json.dumps(_order(start + i))}
                        for i in range(min(10, messages - start))
                    ]
                    await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
                    await asyncio.sleep(0.05)
                n = messages
                while True:  # a trickle, so rows keep appearing
                    await asyncio.sleep(1.0)
                    await sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(_order(n)))
                    n += 1

            async def report() -> None:
                while True:
                    await asyncio.sleep(3)
                    with sqlite3.connect(path) as c:
                        (rows,) = c.execute("SELECT count(*) FROM orders").fetchone()
                    print(f"  {time.strftime('%H:%M:%S')}  rows in orders: {rows}")

            async def stop_later() -> None:
                if exit_after is not None:
                    await asyncio.sleep(exit_after)
                    supervisor._on_signal(15)

            helpers = [asyncio.create_task(c) for c in (produce(), report(), stop_later())]
            try:
                return await supervisor.run()
            finally:
                for t in helpers:
                    t.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
    finally:
        server.stop()  # type: ignore[attr-defined]
