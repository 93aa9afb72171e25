"""A handler that waits at a gate: it writes down that it started, then runs
until the file named by HANDLER_GATE exists (a test opens it when it is done
looking at what happens meanwhile)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tests.handlers import journal

GATE_LIMIT_SECONDS = 120  # a test that never opens the gate still ends


def wait_at_the_gate(event: dict[str, Any], context: Any) -> None:
    ids = [json.loads(r["body"])["id"] for r in event["Records"]]
    journal.write({"started": ids})
    gate = Path(os.environ["HANDLER_GATE"])
    deadline = time.monotonic() + GATE_LIMIT_SECONDS
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    journal.write({"handled": ids})
