"""Run `poller run` as a real child process, as a user would: a YAML file,
signals, SIGKILL, and the metrics and readiness endpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.servers import free_port


def parse_metrics(text: str) -> dict[str, float]:
    """`name{labels}` → value, for the sample lines of a Prometheus text page."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


class Daemon:
    def __init__(
        self,
        streams: list[dict[str, Any]],
        env: dict[str, str] | None = None,
        shutdown_timeout: float = 25.0,
    ):
        self.dir = Path(tempfile.mkdtemp(prefix="poller-test-"))
        for s in streams:
            (self.dir / f"{s['name']}.yaml").write_text(yaml.safe_dump(s))
        self.port = free_port()
        self.env = {**os.environ, "POLLER_LOG_LEVEL": "INFO", **(env or {})}
        self.shutdown_timeout = shutdown_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "poller.log"

    def start(self) -> Daemon:
        _started.append(self)
        self._fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "poller",
                "run",
                "--config",
                str(self.dir),
                "--http-port",
                str(self.port),
                "--http-host",
                "127.0.0.1",
                "--shutdown-timeout",
                str(self.shutdown_timeout),
                "--log-format",
                "json",
            ],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def wait_ready(self, timeout: float = 90) -> None:
        # "Never ready", not "slow": three replicas starting together beside other test
        # runs on two cores were seen to take over 30 s to import and open.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.tail()}")

    def metrics(self, timeout: float = 60) -> dict[str, float]:
        # A daemon just started is not listening yet, and a scrape can time out on a
        # loaded machine: wait while it lives. `timeout` means "never answers", not "slow".
        deadline = time.monotonic() + timeout
        while True:
            status, text = self.get("/metrics")
            if status == 200:
                return parse_metrics(text)
            self.check_alive()
            if time.monotonic() >= deadline:
                raise AssertionError(f"/metrics answered {status} for {timeout:.0f} s")
            time.sleep(0.2)

    def metric(self, sample: str, default: float = 0.0) -> float:
        """One sample's value, or `default` while the daemon is not answering yet."""
        status, text = self.get("/metrics")
        return parse_metrics(text).get(sample, default) if status == 200 else default

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        try:
            return self.wait(self.shutdown_timeout + 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(10)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._fh.close()


def metric(d: Daemon, name: str, **labels: str) -> float:
    """One sample of the daemon's /metrics by name and labels; 0 when absent."""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return d.metrics().get(f"{name}{{{inner}}}", 0.0)


def with_overrides(cfg: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A stream config with `over` applied: a dict merges into the section of the
    same name (one level deep), anything else replaces it."""
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


_started: list[Daemon] = []


def kill_leftovers() -> None:
    """SIGKILL every daemon a test started and left running (a test that failed
    half-way), so it cannot go on writing into the next test's tables."""
    while _started:
        d = _started.pop()
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


def wait_for(predicate: Any, timeout: float, interval: float = 0.2, message: str = "") -> Any:
    """Poll until predicate() is truthy; fail with `message` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s: {message} (last: {last!r})")
