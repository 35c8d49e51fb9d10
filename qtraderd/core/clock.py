"""Clocks: the only source of "now" for trading logic.

`ReplayClock` is data time: it moves only when the feed hands the next bar to the chain,
so a replay at full speed and one paced at 60x produce the same decisions. `LiveClock`
is wall time. Timers (the learner's hourly schedule, pacing) use `sleep_until`, which
in replay waits for data time to pass, not for seconds to pass.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

import trio


class Clock(Protocol):
    def now_ms(self) -> int: ...

    async def sleep_until(self, t_ms: int) -> None: ...


def iso(ms: int | None) -> str:
    """Epoch ms -> 'YYYY-MM-DD HH:MM' UTC (for logs and tables)."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def wall_iso() -> str:
    """Wall-clock UTC now to the second, for the stores' `at` columns: when something
    happened on this machine, never trading time (that is a Clock's)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class ReplayClock:
    """Data time. Advanced by the feed, strictly forward, while no bar is in flight."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms
        self._lot = trio.lowlevel.ParkingLot()

    def now_ms(self) -> int:
        return self._now

    def advance(self, t_ms: int) -> None:
        if t_ms < self._now:
            raise ValueError(f"replay clock cannot go backwards ({t_ms} < {self._now})")
        self._now = t_ms
        if self._lot:
            self._lot.unpark_all()

    async def sleep_until(self, t_ms: int) -> None:
        while self._now < t_ms:
            await self._lot.park()


class LiveClock:
    """Wall time (UTC epoch ms); sleeps on Trio's clock so tests can use MockClock."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    async def sleep_until(self, t_ms: int) -> None:
        delay = (t_ms - self.now_ms()) / 1000.0
        if delay > 0:
            await trio.sleep(delay)
