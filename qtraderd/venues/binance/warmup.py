"""Start-up of the Binance feed: symbols checked against exchangeInfo, their filters made
the instruments, and the warm-up history fetched over REST into the store.

Why here and not in the live feed: this runs once, before any actor (and before the store
writer subprocess) starts, so it writes the `bars` table directly through the start-up
connection — the same `INSERT OR IGNORE` rows `qtraderd import` writes, so importing a file
of the same candles later (or earlier) adds nothing. The learner trains on these bars and
the features of the first live steps come from the same table.

Resumable: only what the store lacks in the warm-up window is fetched. The stored open
times of each symbol are read, the holes (and the tail since the last stored bar) are
covered by as few ranges as the 1,500-row page allows, and only those are requested; a
restart after a complete warm-up asks for the few bars that closed meanwhile. A hole the
exchange itself has (no candle at that time) costs one small request per restart.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

from qtraderd.core.clock import iso
from qtraderd.core.config import INTERVAL_MS
from qtraderd.core.instruments import Instrument
from qtraderd.core.messages import Bar, Record
from qtraderd.store.db import Transaction
from qtraderd.venues.binance.payloads import ExchangeInfo
from qtraderd.venues.binance.rest import KLINES_PAGE, RestClient

log = logging.getLogger("qtraderd.binance.warmup")

__all__ = ["BAR_SQL", "SymbolError", "WarmupResult", "bar_record", "check_symbols",
           "missing_ranges", "stored_times", "warm_up"]

BAR_SQL = ("INSERT OR IGNORE INTO bars (symbol, interval, open_time, open, high, low, close, "
           "volume) VALUES (?,?,?,?,?,?,?,?)")


class SymbolError(ValueError):
    """A configured symbol the exchange does not list, or does not trade now."""


def bar_record(bar: Bar, interval: str) -> Record:
    """A bar as a store Record (INSERT OR IGNORE: a bar already stored stays as it is)."""
    return Record("bars", {"symbol": bar.symbol, "interval": interval,
                           "open_time": bar.open_time, "open": bar.open, "high": bar.high,
                           "low": bar.low, "close": bar.close, "volume": bar.volume},
                  mode="ignore")


def check_symbols(info: ExchangeInfo, symbols: Sequence[str], where: str
                  ) -> dict[str, Instrument]:
    """Each symbol's instrument (its live filters); SymbolError naming every symbol the
    exchange does not list or whose status is not TRADING."""
    problems = []
    for s in symbols:
        got = info.symbols.get(s)
        if got is None:
            problems.append(f"{s} is not listed on {where} (GET /fapi/v1/exchangeInfo)")
        elif got.status != "TRADING":
            problems.append(f"{s} is not trading on {where} (status {got.status})")
    if problems:
        raise SymbolError("config key 'feed.symbols': " + "; ".join(problems))
    return {s: info.symbols[s].instrument for s in symbols}


def missing_ranges(stored: Iterable[int], start: int, end: int, step: int,
                   page: int = KLINES_PAGE) -> list[tuple[int, int]]:
    """[a, b) open-time ranges covering exactly the grid times in [start, end) not in
    `stored` (runs of missing bars, each cut at `page` bars: one request per range);
    nothing stored is asked for again."""
    have = set(stored)
    out: list[tuple[int, int]] = []
    t = start + (-start) % step  # first grid time at or after start
    while t < end:
        if t in have:
            t += step
            continue
        a = t
        while t < end and t not in have and t < a + page * step:
            t += step
        out.append((a, min(t, end)))
    return out


def stored_times(conn: sqlite3.Connection, symbol: str, interval: str, start: int,
                 end: int) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT open_time FROM bars WHERE symbol=? AND interval=? AND open_time>=? AND "
        "open_time<? ORDER BY open_time", (symbol, interval, start, end))]


def last_stored(conn: sqlite3.Connection, symbol: str, interval: str) -> int | None:
    row = conn.execute("SELECT max(open_time) FROM bars WHERE symbol=? AND interval=?",
                       (symbol, interval)).fetchone()
    return row[0] if row else None


def _insert(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> int:
    before = conn.total_changes
    with Transaction(conn):
        conn.executemany(BAR_SQL, rows)
    return conn.total_changes - before


@dataclass
class WarmupResult:
    fetched: int = 0  # bars received over REST
    added: int = 0  # of those, new rows in the store
    already: int = 0  # bars of the window the store had
    requests: int = 0
    last: dict[str, int | None] = field(default_factory=dict)  # newest stored, per symbol


async def warm_up(rest: RestClient, conn: sqlite3.Connection, symbols: Sequence[str],
                  interval: str, start_ms: int, end_ms: int, *,
                  progress_every_s: float = 5.0) -> WarmupResult:
    """Fetch the closed bars of [start_ms, end_ms) the store lacks, for each symbol, and
    store them; a progress line every `progress_every_s` seconds and one per symbol."""
    step = INTERVAL_MS[interval]
    res = WarmupResult()
    last_line = time.monotonic()
    log.info("warm-up: %d symbols, %s .. %s (%s), from %s", len(symbols), iso(start_ms),
             iso(end_ms), interval, rest.base_url)
    for i, sym in enumerate(symbols, 1):
        have = await trio.to_thread.run_sync(stored_times, conn, sym, interval, start_ms,
                                             end_ms)
        ranges = missing_ranges(have, start_ms, end_ms, step)
        fetched = added = 0
        for a, b in ranges:
            res.requests += 1
            async with aclosing(rest.closed_klines(sym, interval, a, b)) as pages:
                async for klines in pages:
                    rows = [(k.symbol, interval, k.open_time, k.open, k.high, k.low, k.close,
                             k.volume) for k in klines]
                    added += await trio.to_thread.run_sync(_insert, conn, rows)
                    fetched += len(rows)
                    if time.monotonic() - last_line >= progress_every_s:
                        last_line = time.monotonic()
                        log.info("warm-up: %s up to %s, %d/%d symbols, %d bars fetched so "
                                 "far", sym, iso(klines[-1].open_time), i - 1, len(symbols),
                                 res.fetched + fetched)
        res.fetched += fetched
        res.added += added
        res.already += len(have)
        res.last[sym] = await trio.to_thread.run_sync(last_stored, conn, sym, interval)
        log.info("warm-up: %s: %d bars fetched over REST (%d new), %d already stored; "
                 "last bar %s (%d/%d symbols)", sym, fetched, added, len(have),
                 iso(res.last[sym]), i, len(symbols))
    log.info("warm-up done: %d bars fetched over REST (%d new) in %d ranges, %d already "
             "stored", res.fetched, res.added, res.requests, res.already)
    return res
