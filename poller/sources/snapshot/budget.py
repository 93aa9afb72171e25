"""The read-capacity budget every segment of a snapshot shares.

A Scan's cost is known only from its response (`ConsumedCapacity`), so the
budget keeps a "paid until" moment: each call first reserves what the last
page cost, waits until everything reserved before it is paid for at `rate`
units per second, and once its response is in, the reservation is corrected
to what the page really consumed. Over any stretch of the scan the units
consumed are then `rate` times its duration, plus at most one page per segment
in flight — never a burst of idle credit, since nothing accrues while no
call waits. No rate: no waiting, only the accounting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from poller.retry import StopSignal, sleep_unless


class ReadBudget:
    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.clock = clock
        self.paid_until = clock()
        self.estimate = 1.0  # units of the last page: what the next one is expected to cost
        self.consumed = 0.0

    async def reserve(self, stop: StopSignal) -> float | None:
        """Wait for a turn; returns the units reserved (None once `stop` is set)."""
        if self.rate is None:
            return 0.0
        while True:
            wait = self.paid_until - self.clock()
            if wait <= 0:
                break
            if await sleep_unless(stop, wait):
                return None
        units = self.estimate
        self.paid_until = max(self.paid_until, self.clock()) + units / self.rate
        return units

    def spent(self, reserved: float, units: float) -> None:
        """A page consumed `units`: correct its reservation of `reserved`."""
        self.consumed += units
        if units > 0:
            self.estimate = units
        if self.rate is not None:
            self.paid_until += (units - reserved) / self.rate

    def release(self, reserved: float) -> None:
        """A call that failed consumed nothing: give its reservation back."""
        self.spent(reserved, 0.0)
