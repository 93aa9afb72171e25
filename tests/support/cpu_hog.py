"""Busy-looping processes that keep cores busy beside the tests or a benchmark,
so a time bound that only holds on a quiet machine shows itself before CI
meets it (`pytest --cpu-hog N`, `python -m bench.containment --hogs 0,1`).

Each hog is a child Python process spinning in its own session; `stop()` kills
exactly those children, by pid. Nothing is left running if the caller dies:
each hog also exits once its parent is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import TracebackType
from typing import Self

# Spins; every ~50 M iterations checks that its parent still lives (it is
# re-parented when the parent dies), so an interrupted run leaves no hog behind.
_SPIN = (
    "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(50_000_000): pass\n"
)


class CpuHog:
    """`n` processes, each keeping one core busy while the block runs."""

    def __init__(self, n: int):
        if n < 0:
            raise ValueError(f"a CPU hog needs 0 or more processes, not {n}")
        self.n = n
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> Self:
        for _ in range(self.n):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _SPIN],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        return self

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
        self.procs = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
