"""Clocks: the only source of "now" for trading logic.

`ReplayClock` is data time: it moves only when the feed hands the next bar to the chain,
so a replay at full speed and one paced at 60x produce the same decisions. `LiveClock`
is the exchange's time: wall time (at `feed.speed` against the simulator) plus the offset
the feed measures. Timers (the learner's hourly schedule, pacing) use `sleep_until`, which
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
    """Live time: this machine's clock at `speed` × Trio time, plus the exchange's offset.

    `local_ms()` is the wall clock when the clock was first read, advanced by Trio's clock
    (monotonic; under `trio.testing.MockClock` it is virtual, so tests control it) times
    `speed` — 1 against a real exchange, the simulator's speed against `qtraderd
    exchange-sim`. `now_ms()` adds `offset_ms`, the exchange clock's offset that the Binance
    feed measures with `GET /fapi/v1/time`: live decisions (is this candle closed, is that
    bar late) are taken on the exchange's clock, not on a drifting local one. `sleep_until`
    waits `(t - now) / speed` seconds of Trio time.
    """

    def __init__(self, speed: float = 1.0, offset_ms: int = 0) -> None:
        if not speed > 0 or speed == float("inf"):
            raise ValueError(f"live clock speed must be a positive finite number, got {speed}")
        self.speed = speed
        self.offset_ms = offset_ms
        self._anchor: tuple[float, float] | None = None  # (wall ms, Trio time) at first read

    def local_ms(self) -> int:
        """This machine's clock (at `speed`), without the exchange offset."""
        try:
            now = trio.current_time()
        except RuntimeError:  # outside trio.run (a report, a test): plain wall time
            return int(time.time() * 1000.0)
        if self._anchor is None:
            self._anchor = (time.time() * 1000.0, now)
        wall, t0 = self._anchor
        return int(wall + (now - t0) * 1000.0 * self.speed)

    def now_ms(self) -> int:
        return self.local_ms() + self.offset_ms

    def trio_time(self, t_ms: int) -> float:
        """The Trio time at which `now_ms()` reaches `t_ms` (for `trio.move_on_at`)."""
        return trio.current_time() + (t_ms - self.now_ms()) / 1000.0 / self.speed

    async def sleep_until(self, t_ms: int) -> None:
        delay = (t_ms - self.now_ms()) / 1000.0 / self.speed
        if delay > 0:
            await trio.sleep(delay)
