"""Process-wide settings of the daemon's Python runtime."""

from __future__ import annotations

import gc

# Allocations between two young collections (CPython's default is 700). The
# hot path allocates several container objects per record and keeps up to a
# prefetch's worth of records alive, so with the default the collector runs
# every few dozen records and its older generations, which it walks whole, are
# big: about as much CPU as the records themselves. Garbage cycles are rare
# here (reference counting frees records), so collecting less often costs
# nothing measurable in memory.
YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Collect less often, and never walk what start-up created (modules,
    configuration, service models): `gc.freeze` moves those objects out of the
    collector's generations. Reference counting still frees them."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
