"""Replay source: stored candles, merged across symbols into one batch per open time.

Each symbol is read along its primary key (symbol, interval, open_time) in chunks, off
the event loop, and merged by time, so memory stays flat however long the history is.
The source remembers the last open time it delivered: after a feed restart it resumes
right after it, never repeating or skipping a bar. Symbols missing a bar at some time
(real gaps) are simply absent from that batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from qtraderd.core.messages import Bar
from qtraderd.store.db import connect

Row = tuple[int, float, float, float, float, float]


class ReplaySource:
    def __init__(self, state_dir: Path, symbols: list[str], interval: str,
                 start_ms: int | None = None, end_ms: int | None = None,
                 chunk: int = 5000) -> None:
        self.state_dir = Path(state_dir)
        self.symbols = list(symbols)
        self.interval = interval
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.chunk = chunk
        self.last_ts: int | None = None  # last open time delivered
        self._conn: sqlite3.Connection | None = None

    def _fetch(self, symbol: str, after: int) -> list[Row]:
        if self._conn is None:
            self._conn = connect(self.state_dir, readonly=True)
        sql = ("SELECT open_time, open, high, low, close, volume FROM bars "
               "WHERE symbol=? AND interval=? AND open_time>?")
        args: list[object] = [symbol, self.interval, after]
        if self.end_ms is not None:
            sql += " AND open_time<=?"
            args.append(self.end_ms)
        sql += " ORDER BY open_time LIMIT ?"
        args.append(self.chunk)
        return self._conn.execute(sql, args).fetchall()

    def _fetch_all(self, wanted: dict[str, int]) -> dict[str, list[Row]]:
        return {sym: self._fetch(sym, after) for sym, after in wanted.items()}

    async def batches(self) -> AsyncIterator[tuple[int, tuple[Bar, ...]]]:
        """Yield (open_time, bars) in time order, bars sorted by symbol."""
        resume = self.last_ts
        if resume is None:
            resume = (self.start_ms - 1) if self.start_ms is not None else -1
        buffers: dict[str, list[Row]] = {}
        pos: dict[str, int] = {}
        exhausted: set[str] = set()
        cursor = {s: resume for s in self.symbols}
        while True:
            need = {s: cursor[s] for s in self.symbols
                    if s not in exhausted and pos.get(s, 0) >= len(buffers.get(s, ()))}
            if need:
                fresh = await trio.to_thread.run_sync(self._fetch_all, need)
                for sym, rows in fresh.items():
                    buffers[sym], pos[sym] = rows, 0
                    if len(rows) < self.chunk:
                        exhausted.add(sym)  # this buffer is the symbol's last
            live = [s for s in self.symbols if pos.get(s, 0) < len(buffers.get(s, ()))]
            if not live:
                return
            ts = min(buffers[s][pos[s]][0] for s in live)
            bars = []
            for s in live:
                row = buffers[s][pos[s]]
                if row[0] == ts:
                    bars.append(Bar(s, row[0], row[1], row[2], row[3], row[4], row[5]))
                    pos[s] += 1
                    cursor[s] = ts
            self.last_ts = ts
            yield ts, tuple(bars)

    async def history(self, before_ms: int, bars: int) -> tuple[Bar, ...]:
        """The stored bars before the replay's first step (see BarSource)."""
        return await trio.to_thread.run_sync(
            recent_bars, self.state_dir, self.symbols, self.interval, before_ms, bars)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def stored_symbols(conn: sqlite3.Connection, interval: str) -> list[str]:
    rows = conn.execute("SELECT DISTINCT symbol FROM bars WHERE interval=? ORDER BY symbol",
                        (interval,)).fetchall()
    return [r[0] for r in rows]


def stored_span(conn: sqlite3.Connection, symbols: list[str], interval: str
                ) -> tuple[int | None, int | None, int]:
    marks = ",".join("?" * len(symbols))
    row = conn.execute(
        f"SELECT min(open_time), max(open_time), count(*) FROM bars "
        f"WHERE interval=? AND symbol IN ({marks})", [interval, *symbols]).fetchone()
    return row[0], row[1], row[2]


def recent_bars(state_dir: Path, symbols: list[str], interval: str, before_ms: int,
                bars: int) -> tuple[Bar, ...]:
    """Up to `bars` stored bars of each symbol opened before `before_ms`, in time order
    (symbols in the given order within a timestamp, as steps carry them)."""
    if bars <= 0:
        return ()
    conn = connect(state_dir, readonly=True)
    try:
        out: list[Bar] = []
        for sym in symbols:
            rows = conn.execute(
                "SELECT open_time, open, high, low, close, volume FROM bars WHERE symbol=? "
                "AND interval=? AND open_time<? ORDER BY open_time DESC LIMIT ?",
                (sym, interval, before_ms, bars)).fetchall()
            out.extend(Bar(sym, *row) for row in reversed(rows))
    finally:
        conn.close()
    order = {s: i for i, s in enumerate(symbols)}
    out.sort(key=lambda b: (b.open_time, order[b.symbol]))
    return tuple(out)
