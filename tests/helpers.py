"""Small helpers shared by tests: reading the real shared candles, building a store."""

from __future__ import annotations

import csv
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from qtraderd.core.messages import Amend, Bar, Fill, OrderIntent, PositionView, Trade
from qtraderd.store.db import Transaction
from qtraderd.venues.base import Order
from qtraderd.venues.paper import PaperBroker


def read_ohlcv(path: Path) -> np.ndarray:
    """Rows of (open_time, open, high, low, close, volume) as float64."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return np.array(rows, dtype=np.float64)


def store_bars(conn, symbol: str, interval: str, arr: np.ndarray) -> None:
    with Transaction(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO bars VALUES (?,?,?,?,?,?,?,?)",
            [(symbol, interval, int(r[0]), *map(float, r[1:6])) for r in arr])


# ------------------------------------------------------------------- paper broker driving
def now(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a paper broker call to its end: it never waits on anything (no I/O)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the paper broker awaited something")


def order_of(intent: OrderIntent, qty: float) -> Order:
    return Order(intent.id, intent.symbol, intent.side, qty, intent.purpose, intent.reason,
                 intent.ts, intent.tp_pct, intent.sl_pct, intent.leverage)


class Paper(PaperBroker):
    """The broker with the old synchronous helpers, built on the async interface."""

    def submit_now(self, intent: OrderIntent, qty: float) -> None:
        now(self.submit(order_of(intent, qty)))

    def bars(self, bars: tuple[Bar, ...]) -> tuple[list[Fill], list[Trade]]:
        now(self.on_bars(bars))
        events = self.drain()
        return ([e for e in events if type(e) is Fill], [e for e in events if type(e) is Trade])

    def amend_now(self, amends: tuple[Amend, ...]) -> None:
        for a in amends:
            now(self.amend(a, 0))

    def snapshot(self) -> tuple[tuple[PositionView, ...], tuple[Any, ...]]:
        return tuple(p.view() for _, p in sorted(self.positions.items())), tuple(
            self._accounts())

    def pending_count(self) -> int:
        return sum(len(v) for v in self._pending.values())
