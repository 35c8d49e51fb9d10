"""What running plugin hooks in their own thread costs per call (CPU, both threads).

Calls `PluginHost.filter_signal` and `check_order` with one trivial plugin, N times, as
the sizer and risk actors do, first through the plugin's lane (the daemon's way: a worker
thread and a deadline) and then with the lane bypassed (the hook called inline on the
calling thread, as before isolation). CPU time is process-wide (getrusage), so the worker
thread's share is counted; wall-clock is printed too but is unreliable on a busy machine.

    python benchmarks/plugin_hooks.py [N]
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qtraderd.plugins import isolation  # noqa: E402
from tests.plugins.plugin_helpers import check_call, filter_call, host, source, step  # noqa: E402

PLUGIN = source("bench", body="""
    def filter_signal(signal):
        return None
    def check_order(order, account):
        return None
""")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(n: int) -> tuple[float, float]:
    """µs of CPU and of wall time per hook call (filter + rule alternate)."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "bench.py").write_text(PLUGIN)
        h = host(Path(d))
        h.load_all()
        s = step()
        for _ in range(200):  # warm-up
            filter_call(h, s)
            check_call(h, s=s)
        c0, w0 = cpu(), time.perf_counter()
        for _ in range(n):
            filter_call(h, s)
            check_call(h, s=s)
        c1, w1 = cpu(), time.perf_counter()
    return (c1 - c0) / (2 * n) * 1e6, (w1 - w0) / (2 * n) * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    lane_cpu, lane_wall = measure(n)
    original = isolation.Lane.call

    def inline(self: Any, timeout_s: float, fn: Any, *args: Any) -> Any:
        return fn(*args)

    isolation.Lane.call = inline  # type: ignore[method-assign]
    try:
        inline_cpu, inline_wall = measure(n)
    finally:
        isolation.Lane.call = original  # type: ignore[method-assign]
    print(f"per hook call (host + views + hook), {n} filter and {n} rule calls:")
    print(f"  in the plugin's thread: {lane_cpu:6.1f} µs CPU  {lane_wall:6.1f} µs wall")
    print(f"  inline (no isolation):  {inline_cpu:6.1f} µs CPU  {inline_wall:6.1f} µs wall")
    print(f"  thread hop costs:       {lane_cpu - inline_cpu:6.1f} µs CPU per call")


if __name__ == "__main__":
    main()
