"""A real Prometheus scrapes a running daemon and evaluates the alert rules; the
live `/metrics` passes `promtool check metrics`; the Grafana dashboard and the
rules read only metrics the daemon exports."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.aws import client, send_all
from tests.support.daemon import Daemon, wait_for
from tests.support.prometheus import Prometheus, exported_names, promql_metric_names, require_binary
from tests.support.servers import MotoServer, free_port

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def sqs_stream(name: str, moto: MotoServer, dsn: str) -> dict[str, Any]:
    queue = client("sqs", moto.url).create_queue(QueueName=f"{name}-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    return {
        "name": name,
        "source": {
            "type": "sqs",
            "queue_url": queue,
            "endpoint_url": moto.url,
            "region": "us-east-1",
            "wait_seconds": 1,
        },
        "batch": {"size": 10, "window_seconds": 0.1},
        "sink": {"type": "postgres", "dsn": dsn, "table": name},
    }


def dashboard_queries() -> list[str]:
    doc = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    queries += [v["query"] for v in doc.get("templating", {}).get("list", []) if "query" in v]
    return queries


def test_live_metrics_pass_promtool_and_the_dashboard_and_rules_name_only_exported_metrics(
    moto: MotoServer, pg_dsn: str
) -> None:
    promtool = require_binary("promtool")
    cfg = sqs_stream("prom_live", moto, pg_dsn)
    send_all(client("sqs", moto.url), cfg["source"]["queue_url"], ['{"a": 1}', '{"a": 2}'])
    with Daemon([cfg]) as d:
        d.wait_ready()
        wait_for(
            lambda: d.metric('poller_events_delivered_total{stream="prom_live"}') == 2, 30, message="rows"
        )
        status, text = d.get("/metrics")
    assert status == 200
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    exported = exported_names(text)
    for query in dashboard_queries():
        names = promql_metric_names(query)
        assert names, f"a dashboard query reads no poller metric: {query}"
        assert names <= exported, f"dashboard query reads {sorted(names - exported)}, not exported: {query}"
    rules = (DEPLOY / "prometheus-rules.yaml").read_text()
    assert promql_metric_names(rules) <= exported
    # The ESM-shaped counters, by the names a Lambda dashboard translates to.
    for event in ("polled", "filtered_out", "delivered", "failed", "dropped", "sent_to_failure_destination"):
        assert f"poller_events_{event}_total" in exported
    assert 'poller_events_polled_total{stream="prom_live"} 2.0' in text


def test_a_stream_whose_sink_is_down_makes_stream_not_ready_pending(moto: MotoServer) -> None:
    """Prometheus scrapes the daemon every second and evaluates the rules every
    second; the alert (`for: 5m`) is pending, read from Prometheus's own API."""
    require_binary("prometheus")
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/test"  # nothing listens there
    cfg = sqs_stream("prom_down", moto, down)
    with Daemon([cfg]) as d, Prometheus([f"127.0.0.1:{d.port}"], [DEPLOY / "prometheus-rules.yaml"]) as prom:

        def pending() -> list[dict[str, Any]]:
            d.check_alive()
            return [
                a
                for a in prom.alerts()
                if a["labels"].get("alertname") == "PollerStreamNotReady"
                and a["labels"].get("stream") == "prom_down"
                and a["state"] == "pending"
            ]

        (alert,) = wait_for(pending, 45, 0.5, message="PollerStreamNotReady pending")
        assert alert["labels"]["severity"] == "page"
        series = prom.api('query?query=poller_stream_ready{stream="prom_down"}')["result"]
        assert [s["value"][1] for s in series] == ["0"]
        assert prom.api("targets")["activeTargets"][0]["health"] == "up"
