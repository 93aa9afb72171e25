"""A handler that counts how many of its invocations overlap, as module state
would be shared between them."""

from __future__ import annotations

import threading
import time
from typing import Any

_lock = threading.Lock()
running = 0
most = 0


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    global running, most
    with _lock:
        running += 1
        most = max(most, running)
    time.sleep(0.05)  # long enough for a second invocation to overlap, were it let in
    with _lock:
        running -= 1
