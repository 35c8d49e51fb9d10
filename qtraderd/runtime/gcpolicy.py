"""Garbage-collector settings for the steady state of a run.

Every step allocates thousands of short-lived container objects (messages, tuples, dicts)
that reference counting frees at once; the cyclic collector still runs its youngest
generation every 700 net allocations and, every tenth of those, walks the older
generations — which by then hold every module, model session and actor built at start.
`steady_gc` moves those start-up objects out of the collector's view (`gc.freeze`) and
lets the youngest generation grow to `gen0` objects before a pass: in a full-speed replay
the collector's share drops from ~0.11 s to ~0.04 s of CPU (benchmarks/replay.py). Cycles
are still collected, only in larger, rarer passes; the old settings come back afterwards,
and `gc.unfreeze` hands the start-up objects back, so a second run in the same process
(tests, benchmarks, walk-forward) can free the first one's.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

GEN0 = 10_000


@contextlib.contextmanager
def steady_gc(gen0: int = GEN0) -> Iterator[None]:
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()
