"""Every benchmark runs in its smoke mode (tiny sizes, results to a temporary
folder) and records a result, so bench/ cannot rot. No timing is asserted:
figures on a shared machine are for bench/RESULTS.md, not for pass/fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MYSQL_DSN, PG_DSN, require_service

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration

# (module, extra arguments, needs MySQL too)
BENCHMARKS = [
    ("bench.sinks", [], True),
    ("bench.sqs", [], False),
    ("bench.kinesis_e2e", [], False),
    ("bench.latency", [], False),
    ("bench.memory", [], False),
    ("bench.idle", [], False),
    ("bench.record_path", [], False),
    ("bench.fuzz", [], True),
    ("bench.snapshot", [], False),
    ("bench.replicas", [], False),
    ("bench.containment", [], False),
]


@pytest.mark.parametrize(("module", "extra", "mysql"), BENCHMARKS, ids=[b[0] for b in BENCHMARKS])
def test_benchmark_smoke(module: str, extra: list[str], mysql: bool, tmp_path: Path) -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    if mysql:
        require_service("MariaDB", "127.0.0.1", 3306)
    env = {
        **os.environ,
        "POLLER_BENCH_PG_DSN": PG_DSN,
        "POLLER_BENCH_MYSQL_DSN": MYSQL_DSN,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    done = subprocess.run(
        [sys.executable, "-m", module, "--smoke", "--out", str(tmp_path), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"{module} --smoke failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if module == "bench.record_path":
        assert "µs per record" in done.stdout
        return
    name = module.removeprefix("bench.")
    result = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    assert result["params"]["smoke"] is True
    assert result["machine"]["nproc"]
    assert f"<!-- bench:{name} -->" in (tmp_path / "RESULTS.md").read_text()
