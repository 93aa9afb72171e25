"""Which AWS calls a daemon made, logged at its own clients (see
`call_log/sitecustomize.py`): `recording(path)` is the environment that turns
the log on for a `Daemon`, `calls(path)` reads it back."""

from __future__ import annotations

from pathlib import Path

_HOOK = Path(__file__).resolve().parent / "call_log"


def recording(path: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(_HOOK), "POLLER_TEST_AWS_CALL_LOG": str(path)}


def calls(path: Path) -> set[tuple[str, str]]:
    """(service, operation) pairs, e.g. ("kinesis", "GetRecords")."""
    if not path.exists():
        return set()
    return {(s, op) for s, _, op in (line.partition(" ") for line in path.read_text().splitlines()) if op}
