"""Where test handlers write down what they did: one JSON object a line."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()


def write(entry: dict[str, Any]) -> None:
    line = json.dumps(entry) + "\n"  # an event that is not plain JSON fails here
    with _lock, open(os.environ["HANDLER_LOG"], "a", encoding="utf-8") as fh:
        fh.write(line)


def read(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
