"""The simulator's market: stored candles, its clock, and Binance's kline shapes.

The simulator replays real candles as if they were happening now: a candle is "closed" once
sim time reaches its close, and the candle still forming is shown with values that grow
towards the real ones (`partial`), so REST and the stream agree on what the market looks
like at any moment. Prices are printed with as many decimals as the source data has: the
same decimals give the tick size the exchange info announces.
"""

from __future__ import annotations

import math
import sqlite3
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from qtraderd.core.config import INTERVAL_MS
from qtraderd.core.instruments import FILE_NAME, bundled, read_file

Candle = tuple[int, float, float, float, float, float]  # open_time ms, o, h, l, c, v

# Quote assets a symbol not defined in instruments.toml may end with; the base is the rest.
QUOTE_SUFFIXES = ("USDT", "USDC", "BUSD", "FDUSD", "BTC", "ETH", "BNB")
MAX_DECIMALS = 8
# Binance's USD-M minimum order value for most perpetuals; used when no definition has one.
DEFAULT_MIN_NOTIONAL = {"USDT": 5.0, "USDC": 5.0}


class SimInputError(ValueError):
    """Bad simulator input (files, symbols, range); the message names it. Exit 2."""


def decimals(values: Iterable[float]) -> int:
    """How many decimals the shortest exact repr of these numbers needs (at most 8)."""
    most = 0
    for x in values:
        text = repr(float(x))
        if "e" in text or "E" in text:
            text = f"{x:.{MAX_DECIMALS}f}".rstrip("0")
        if "." in text:
            most = max(most, len(text.split(".", 1)[1].rstrip("0")))
        if most >= MAX_DECIMALS:
            return MAX_DECIMALS
    return most


@dataclass
class Series:
    """One symbol's candles, open times rising, with its print format and filters."""

    symbol: str
    base: str
    quote: str
    candles: list[Candle]
    price_decimals: int
    qty_decimals: int
    tick_size: float = 0.0
    step_size: float = 0.0
    min_qty: float = 0.0
    min_notional: float = 0.0
    times: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.times = [c[0] for c in self.candles]
        if not self.tick_size:
            self.tick_size = 10.0 ** -self.price_decimals
        else:
            self.price_decimals = max(self.price_decimals, decimals([self.tick_size]))
        if not self.step_size:
            self.step_size = 10.0 ** -self.qty_decimals
        else:
            self.qty_decimals = max(self.qty_decimals, decimals([self.step_size]))
        self.min_qty = self.min_qty or self.step_size
        self.min_notional = self.min_notional or DEFAULT_MIN_NOTIONAL.get(self.quote, 0.0)

    def price(self, x: float) -> str:
        return f"{x:.{self.price_decimals}f}"

    def qty(self, x: float) -> str:
        return f"{x:.{self.qty_decimals}f}"

    def between(self, lo: int, hi: int) -> tuple[int, int]:
        """Index range of candles with lo <= open_time <= hi."""
        return bisect_left(self.times, lo), bisect_right(self.times, hi)


def _extremes(c: Candle) -> tuple[float, float]:
    """(first, second) extreme on the candle's path: the nearer to the open first."""
    _, o, h, low, _, _ = c
    return (low, h) if o - low <= h - o else (h, low)


def price_path(c: Candle, frac: float) -> float:
    """The last price `frac` (0..1) of the way through the candle: the open until 0.45,
    the nearer extreme at 1/2, the farther at 3/4, then straight to the close.

    Why a path through both extremes: the price is the mark the simulator triggers stops
    and take-profits on, so a wick must reach them as it reached the real market (a path
    from open to close alone never touched a stop the candle's low crossed). Nearer
    extreme first is the usual reading of an OHLC bar; with the default 3 updates per
    candle (at 1/4, 1/2, 3/4) both extremes are published exactly. The open held for
    almost half the candle is the price a market order sent after the previous close gets
    (as a backtest fills it at the next open) even on a loaded machine at high speed:
    at 1500x the daemon has 90 ms of wall time to send it.
    """
    _, o, _, _, cl, _ = c
    first, second = _extremes(c)
    if frac <= 0.45:
        return o
    if frac < 0.5:
        return o + (first - o) * (frac - 0.45) / 0.05
    if frac < 0.75:
        return first + (second - first) * (frac - 0.5) / 0.25
    if frac < 1.0:
        return second + (cl - second) * (frac - 0.75) / 0.25
    return cl


def partial(c: Candle, frac: float) -> Candle:
    """The candle as it looked `frac` (0..1) of the way through its interval: open real,
    close the price path's (see price_path), high and low what the path has covered so
    far, volume growing linearly. Every partial lies inside the real candle, and frac=1
    gives the real candle exactly.
    """
    if frac >= 1.0:
        return c
    t, o, _, _, _, v = c
    close = price_path(c, frac)
    first, second = _extremes(c)
    seen = [o, close] + ([first] if frac >= 0.5 else []) + ([second] if frac >= 0.75 else [])
    return (t, o, max(seen), min(seen), close, v * frac)


class SimClock:
    """Sim time = start + (trio time - t0) * speed, in epoch ms."""

    def __init__(self, start_ms: int, speed: float) -> None:
        self.start_ms = start_ms
        self.speed = speed
        self.t0: float | None = None

    def begin(self) -> None:
        self.t0 = trio.current_time()

    def now_ms(self) -> int:
        if self.t0 is None:
            return self.start_ms
        return self.start_ms + int((trio.current_time() - self.t0) * self.speed * 1000)

    def wall_at(self, sim_ms: float) -> float:
        """The trio time at which sim time reaches sim_ms."""
        assert self.t0 is not None, "clock not started"
        return self.t0 + (sim_ms - self.start_ms) / (self.speed * 1000)


@dataclass
class Market:
    """Every served symbol's candles on one interval, and where the live part starts."""

    series: dict[str, Series]
    interval: str
    start_ms: int  # the first candle at/after --start: sim time begins here

    @property
    def interval_ms(self) -> int:
        return INTERVAL_MS[self.interval]

    def live_times(self) -> list[int]:
        """Open times from start_ms on, across symbols, in order (the stream's schedule)."""
        ts: set[int] = set()
        for s in self.series.values():
            ts.update(s.times[bisect_left(s.times, self.start_ms):])
        return sorted(ts)

    def end_ms(self) -> int:
        """When the last candle closes."""
        return max(s.times[-1] for s in self.series.values()) + self.interval_ms


def kline_row(s: Series, c: Candle, interval_ms: int) -> list[object]:
    """A `GET /fapi/v1/klines` row (http/klines.json)."""
    t, o, h, low, cl, v = c
    n, quote_v, taker_v, taker_q = _trade_stats(c)
    return [t, s.price(o), s.price(h), s.price(low), s.price(cl), s.qty(v),
            t + interval_ms - 1, f"{quote_v:.8f}", n, s.qty(taker_v), f"{taker_q:.8f}", "0"]


def kline_event(s: Series, c: Candle, interval: str, interval_ms: int, index: int,
                event_ms: int, closed: bool) -> dict[str, object]:
    """A kline stream payload (market_data/kline_stream_open.json / _closed.json)."""
    t, o, h, low, cl, v = c
    n, quote_v, taker_v, taker_q = _trade_stats(c)
    first = index * 100_000  # made-up trade ids: rising, unique per candle
    return {"e": "kline", "E": event_ms, "s": s.symbol, "k": {
        "t": t, "T": t + interval_ms - 1, "s": s.symbol, "i": interval,
        "f": first, "L": first + max(n, 1) - 1, "o": s.price(o), "c": s.price(cl),
        "h": s.price(h), "l": s.price(low), "v": s.qty(v), "n": n, "x": closed,
        "q": f"{quote_v:.8f}", "V": s.qty(taker_v), "Q": f"{taker_q:.8f}", "B": "0"}}


def _trade_stats(c: Candle) -> tuple[int, float, float, float]:
    """Trade count, quote volume, taker-buy volume and quote volume: not in the source
    candles, so derived from them (typical price x volume; half the volume taker-bought)."""
    _, o, h, low, cl, v = c
    quote_v = v * (o + h + low + cl) / 4
    return math.ceil(v / 100) if v > 0 else 0, quote_v, v / 2, quote_v / 2


# ---------------------------------------------------------------------------- loading


def load_csv(paths: Sequence[Path], interval: str | None) -> tuple[str, dict[str, list[Candle]]]:
    """Candles from shared-format CSV files named SYMBOL-INTERVAL.csv (as `qtraderd import`
    reads them). Returns (interval, {symbol: candles})."""
    from qtraderd.store.importer import CandleImportError, infer_symbol_interval, load_candles

    out: dict[str, list[Candle]] = {}
    for path in paths:
        if not path.is_file():
            raise SimInputError(f"--csv {path}: no such file")
        symbol, named = infer_symbol_interval(path)
        if symbol is None or named is None:
            raise SimInputError(f"--csv {path}: cannot tell the symbol and interval from the "
                                f"file name (expected a name like XRPUSDT-5m.csv)")
        if named not in INTERVAL_MS:
            raise SimInputError(f"--csv {path}: unknown interval {named!r} in the file name")
        if interval is None:
            interval = named
        if named != interval:
            raise SimInputError(f"--csv {path}: holds {named} candles, but the interval is "
                                f"{interval}")
        if symbol in out:
            raise SimInputError(f"--csv {path}: a second file for {symbol}")
        try:
            candles, rejected = load_candles(path, INTERVAL_MS[interval])
        except CandleImportError as exc:
            raise SimInputError(f"--csv {exc}") from None
        if rejected:
            line, why = rejected[0]
            raise SimInputError(f"--csv {path}: {len(rejected)} bad rows (first: line {line}: "
                                f"{why})")
        if not candles:
            raise SimInputError(f"--csv {path}: no candles")
        out[symbol] = candles
    return interval or "5m", out


def load_store(state_dir: Path, interval: str, symbols: Sequence[str] | None,
               end_ms: int | None) -> dict[str, list[Candle]]:
    """Candles from the store's `bars` table (read-only), open_time < end_ms."""
    from qtraderd.store.db import StoreError, connect
    from qtraderd.venues.replay import stored_symbols

    try:
        conn = connect(state_dir, readonly=True)
    except StoreError as exc:
        raise SimInputError(f"--state-dir {state_dir}: {exc}") from None
    try:
        stored = stored_symbols(conn, interval)
        if not stored:
            raise SimInputError(f"--state-dir {state_dir}: no {interval} candles stored")
        wanted = list(symbols) if symbols else stored
        for sym in wanted:
            if sym not in stored:
                raise SimInputError(f"--symbols: unknown symbol {sym} (stored {interval}: "
                                    f"{', '.join(stored)})")
        sql = ("SELECT open_time, open, high, low, close, volume FROM bars "
               "WHERE symbol=? AND interval=? AND open_time<? ORDER BY open_time")
        hi = end_ms if end_ms is not None else 2**62
        return {sym: [tuple(r) for r in conn.execute(sql, (sym, interval, hi))]
                for sym in wanted}
    except sqlite3.Error as exc:
        raise SimInputError(f"--state-dir {state_dir}: cannot read the store: {exc}") from None
    finally:
        conn.close()


def build_market(candles: dict[str, list[Candle]], interval: str, start_ms: int | None,
                 end_ms: int | None, state_dir: Path | None = None) -> Market:
    """Cut to [start, end), attach asset names and filters, check something is left."""
    defs = bundled()
    if state_dir is not None and (Path(state_dir) / FILE_NAME).is_file():
        defs.update(read_file(Path(state_dir) / FILE_NAME))
    series: dict[str, Series] = {}
    for sym, rows in candles.items():
        rows = [r for r in rows if end_ms is None or r[0] < end_ms]
        if not rows:
            raise SimInputError(f"--end: symbol {sym} has no candles before {_fmt(end_ms)}")
        d = defs.get(sym)
        if d is not None:
            base, quote = d.base, d.quote
        else:
            quote = next((q for q in QUOTE_SUFFIXES if sym.endswith(q) and sym != q), "")
            if not quote:
                raise SimInputError(f"symbol {sym}: no instrument definition and no known "
                                    f"quote asset suffix ({', '.join(QUOTE_SUFFIXES)})")
            base = sym[: -len(quote)]
        series[sym] = Series(
            sym, base, quote, rows,
            decimals(x for r in rows for x in r[1:5]), decimals(r[5] for r in rows),
            *((d.tick_size, d.step_size, d.min_qty, d.min_notional) if d else ()))
    live = [t for s in series.values() for t in s.times
            if start_ms is None or t >= start_ms]
    if not live:
        raise SimInputError("--start/--end: no candles in the range "
                            f"[{_fmt(start_ms)}, {_fmt(end_ms)})")
    return Market(series, interval, min(live))


def _fmt(ms: int | None) -> str:
    if ms is None:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
