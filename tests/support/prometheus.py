"""A real Prometheus (Debian's `prometheus` package) on a loopback port, scraping
given targets every second and evaluating given rule files every second, with
its HTTP API for the tests to read alerts and series from."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import IN_CI
from tests.support.servers import _ServerBase


def require_binary(name: str) -> str:
    """The binary's path; without it a skip, or a failure with CI=true."""
    path = shutil.which(name)
    if path is not None:
        return path
    msg = f"`{name}` is not installed (scripts/setup --tests installs Debian's prometheus package)"
    if IN_CI:
        pytest.fail(msg + " (CI=true: required)")
    pytest.skip(msg)


class Prometheus(_ServerBase):
    _name = "prometheus"

    def __init__(self, targets: list[str], rule_files: list[Path], *, start_timeout: float = 30.0) -> None:
        super().__init__(None, start_timeout)
        self.dir = Path(tempfile.mkdtemp(prefix="poller-prometheus-"))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "poller", "static_configs": [{"targets": targets}]}],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._exe = ""

    def _prepare(self) -> None:
        self._exe = require_binary("prometheus")

    def _spawn(self, port: int) -> None:
        self._child.spawn(
            [
                self._exe,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            ready_marker="Server is ready to receive web requests",
        )

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}", timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts


_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exported_names(text: str) -> set[str]:
    """Every series name a Prometheus text page can carry: its samples', and each
    declared family's (with a histogram's `_bucket`, `_sum`, `_count`) even when
    it has no sample yet."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            names.update(name + s for s in _SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def promql_metric_names(expr: str) -> set[str]:
    """The poller metrics a PromQL expression (or a Grafana query) reads."""
    return set(re.findall(r"\bpoller_[A-Za-z0-9_]+", expr))
