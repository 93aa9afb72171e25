"""The Dockerfile cannot be built here (no Docker engine), so it is read:
slim Python base, non-root user, `poller run --config /etc/poller`, a
HEALTHCHECK on /healthz."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_base_image_is_slim_python_311_or_newer() -> None:
    froms = [rest for op, rest in instructions() if op == "FROM"]
    assert len(froms) == 1
    m = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", froms[0])
    assert m and int(m.group(1)) >= 11, froms[0]


def test_runs_as_a_non_root_user_created_in_the_image() -> None:
    ins = instructions()
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    runs = " ".join(rest for op, rest in ins if op == "RUN")
    assert "useradd" in runs and users[-1] in runs


def test_default_command_runs_the_config_folder() -> None:
    ins = instructions()
    entry = json.loads(next(rest for op, rest in ins if op == "ENTRYPOINT"))
    cmd = json.loads(next(rest for op, rest in ins if op == "CMD"))
    assert entry + cmd == ["poller", "run", "--config", "/etc/poller"]


def test_healthcheck_probes_healthz_on_the_http_port() -> None:
    ins = instructions()
    checks = [rest for op, rest in ins if op == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0] and "POLLER_HTTP_PORT" in checks[0]
    assert re.search(r"--interval=\d+s", checks[0]) and re.search(r"--timeout=\d+s", checks[0])
    assert ("EXPOSE", "8080") in ins


def test_installs_the_package_it_copies() -> None:
    ins = instructions()
    copies = " ".join(rest for op, rest in ins if op == "COPY")
    assert "pyproject.toml" in copies and "poller" in copies
    assert any(op == "RUN" and "pip install ." in rest for op, rest in ins)


def test_entrypoint_is_the_installed_console_script() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'poller = "poller.cli:main"' in pyproject
