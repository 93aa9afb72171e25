"""Shared fixtures: the real servers the integration tests talk to.

With CI=true a missing service is a failure, never a silent skip.

`--cpu-hog N` (or POLLER_TEST_CPU_HOG=N) keeps N cores busy with spinning
processes for the whole session: run the tests marked `timing` that way before
submitting (`pytest -m timing --cpu-hog 1`), so a bound that only holds on a
quiet machine fails here rather than by chance in CI.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from tests.support.cpu_hog import CpuHog
from tests.support.daemon import kill_leftovers
from tests.support.servers import MotoServer

PG_DSN = os.environ.get("POLLER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_DSN = os.environ.get("POLLER_TEST_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu-hog",
        type=int,
        default=int(os.environ.get("POLLER_TEST_CPU_HOG", "0") or 0),
        metavar="N",
        help="keep N cores busy with spinning processes while the tests run (default: "
        "$POLLER_TEST_CPU_HOG or 0); for the tests marked `timing`",
    )


@pytest.fixture(scope="session", autouse=True)
def _cpu_hog(request: pytest.FixtureRequest) -> Iterator[None]:
    with CpuHog(request.config.getoption("--cpu-hog")):
        yield


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    msg = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(msg + " (CI=true: integration services are required)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return PG_DSN


@pytest.fixture(scope="session")
def mysql_dsn() -> str:
    require_service("MariaDB", "127.0.0.1", 3306)
    return MYSQL_DSN


@pytest.fixture(params=["postgres", "mysql"])
def database(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(sink type, DSN) for each real database."""
    if request.param == "postgres":
        yield "postgres", request.getfixturevalue("pg_dsn")
    else:
        yield "mysql", request.getfixturevalue("mysql_dsn")


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test() -> Iterator[None]:
    yield
    kill_leftovers()
