"""Binance USD-M payloads -> typed values: kline stream frames, REST klines, exchangeInfo,
server time and error bodies.

The shapes are exactly those in `shared/data/binance/usdm-futures/` (Binance's own). Every
parser ignores fields it does not know (Binance adds some, e.g. `st` / `ps` on market
streams since the USD-M / COIN-M integration) and turns anything malformed into
`PayloadError` naming what was wrong, never another exception: a frame from the network is
untrusted input, and the feed counts and logs it instead of crashing.

Prices and sizes arrive as decimal strings; they become floats here, checked finite.
A kline's `closed` flag is Binance's `"x"` on streams; for REST rows it is computed from
the exchange's clock (`close_time < server_now_ms`: the last millisecond of a candle is
still part of it).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from qtraderd.core.instruments import Instrument, from_filters
from qtraderd.core.messages import Bar

__all__ = [
    "BinanceError",
    "ExchangeInfo",
    "Kline",
    "PayloadError",
    "SymbolInfo",
    "UnexpectedPayload",
    "parse_error",
    "parse_exchange_info",
    "parse_kline_frame",
    "parse_klines",
    "parse_server_time",
]


class PayloadError(ValueError):
    """A payload that is not what Binance sends (bad JSON, missing or mistyped fields)."""


class UnexpectedPayload(PayloadError):
    """Well-formed JSON that is not a kline event (a subscription reply, another stream)."""


class Kline(msgspec.Struct, frozen=True, gc=False):
    """One candle as Binance reports it; `open_time` / `close_time` are epoch ms (close is
    open + interval - 1); `closed` is False while the candle is still forming."""

    symbol: str
    interval: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    closed: bool

    def to_bar(self) -> Bar:
        return Bar(self.symbol, self.open_time, self.open, self.high, self.low, self.close,
                   self.volume)


class BinanceError(msgspec.Struct, frozen=True):
    """Binance's error body, `{"code": -1121, "msg": "Invalid symbol."}`."""

    code: int
    msg: str


class SymbolInfo(msgspec.Struct, frozen=True):
    """One exchangeInfo symbol: its trading status (only "TRADING" can be traded), the
    contract type, and its filters as an `Instrument` (tick, step, min qty, min notional)."""

    symbol: str
    status: str
    contract_type: str
    instrument: Instrument


class ExchangeInfo(msgspec.Struct, frozen=True):
    server_time: int
    weight_limit: int | None  # REQUEST_WEIGHT per minute (2400 production, 6000 testnet)
    symbols: dict[str, SymbolInfo]


# ------------------------------------------------------------------- wire shapes (private)
# Field names are Binance's own (one-letter stream keys are renamed; camelCase REST keys kept).


class _K(msgspec.Struct):
    open_time: int = msgspec.field(name="t")
    close_time: int = msgspec.field(name="T")
    symbol: str = msgspec.field(name="s")
    interval: str = msgspec.field(name="i")
    open: str = msgspec.field(name="o")
    close: str = msgspec.field(name="c")
    high: str = msgspec.field(name="h")
    low: str = msgspec.field(name="l")
    volume: str = msgspec.field(name="v")
    closed: bool = msgspec.field(name="x")


class _Frame(msgspec.Struct):
    """A raw event (`{"e": "kline", ..., "k": {...}}`) or a combined-stream wrapper
    (`{"stream": "ethusdt@kline_5m", "data": {...}}`); other keys are ignored."""

    e: str | None = None
    k: _K | None = None
    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")  # empty: not a combined-stream wrapper


class _KlineRow(msgspec.Struct, array_like=True):
    """A REST klines row; Binance's later columns (quote volume, trades, ...) are ignored."""

    open_time: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    close_time: int


class _Filter(msgspec.Struct):
    filterType: str


class _Symbol(msgspec.Struct):
    symbol: str
    status: str
    baseAsset: str
    quoteAsset: str
    contractType: str = ""
    filters: list[dict[str, Any]] = []


class _RateLimit(msgspec.Struct):
    rateLimitType: str
    interval: str
    limit: int
    intervalNum: int = 1


class _ExchangeInfo(msgspec.Struct):
    serverTime: int
    symbols: list[_Symbol]
    rateLimits: list[_RateLimit] = []


class _ServerTime(msgspec.Struct):
    serverTime: int


_frame_dec = msgspec.json.Decoder(_Frame)
_rows_dec = msgspec.json.Decoder(list[_KlineRow])
_info_dec = msgspec.json.Decoder(_ExchangeInfo)
_time_dec = msgspec.json.Decoder(_ServerTime)
_error_dec = msgspec.json.Decoder(BinanceError)


def decimal(text: str, what: str) -> float:
    """Binance's decimal string as a float; PayloadError naming `what` otherwise (the one
    number check of every parser here: klines, orders, algo orders, user events)."""
    try:
        value = float(text)
    except ValueError:
        raise PayloadError(f"{what}: expected a decimal string, got {text!r}") from None
    if not math.isfinite(value):
        raise PayloadError(f"{what}: expected a finite number, got {text!r}")
    return value


def decimal_or_zero(text: str | None, what: str) -> float:
    """`decimal`, with an absent or empty field as 0 (Binance leaves some out when unset)."""
    return 0.0 if text is None or text == "" else decimal(text, what)


def decode(dec: msgspec.json.Decoder[Any], body: bytes | str, what: str) -> Any:
    """`dec.decode(body)`, a malformed body as PayloadError naming `what`."""
    try:
        return dec.decode(body)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"{what}: {exc}") from None


def _kline(k: _K, closed: bool, where: str) -> Kline:
    if not k.symbol or not k.interval or k.close_time <= k.open_time:
        raise PayloadError(f"{where}: kline with symbol {k.symbol!r}, interval {k.interval!r}, "
                           f"open {k.open_time}, close {k.close_time}")
    o, h = decimal(k.open, f"{where} open"), decimal(k.high, f"{where} high")
    lo, c = decimal(k.low, f"{where} low"), decimal(k.close, f"{where} close")
    v = decimal(k.volume, f"{where} volume")
    if lo > h or v < 0:
        raise PayloadError(f"{where}: {k.symbol} {k.open_time} has low {lo} > high {h} or "
                           f"volume {v} < 0")
    return Kline(k.symbol, k.interval, k.open_time, k.close_time, o, h, lo, c, v, closed)


def _short(raw: bytes | str) -> str:
    text = raw if isinstance(raw, str) else bytes(raw[:400]).decode("utf-8", "replace")
    text = " ".join(text.split())  # one log line
    return text if len(text) <= 120 else text[:117] + "..."


def parse_kline_frame(raw: bytes | str) -> tuple[str | None, Kline]:
    """A WebSocket market frame -> (combined stream name or None, kline).

    Raises `UnexpectedPayload` for well-formed frames that carry no kline (subscription
    replies, other event types) and `PayloadError` for anything malformed.
    """
    try:
        frame = _frame_dec.decode(raw)
        stream = frame.stream
        if len(frame.data):
            frame = _frame_dec.decode(frame.data)
        k = frame.k
        if frame.e != "kline" or k is None:
            raise UnexpectedPayload(f"not a kline event (e={frame.e!r}, stream={stream!r}): "
                                    f"{_short(raw)}")
    except msgspec.ValidationError as exc:
        raise PayloadError(f"kline frame: {exc}: {_short(raw)}") from None
    except msgspec.DecodeError as exc:
        raise PayloadError(f"kline frame is not JSON ({exc}): {_short(raw)}") from None
    return stream, _kline(k, k.closed, "kline frame")


def parse_klines(body: bytes | str, *, symbol: str, interval: str,
                 server_now_ms: int, guard_ms: int = 0) -> list[Kline]:
    """`GET /fapi/v1/klines` rows -> klines in Binance's (ascending) order.

    `closed`: a row followed by a later one is closed (the exchange lists only candles
    that have opened). The last row is the one that may still be forming; it counts as
    closed only when its close time is more than `guard_ms` (the uncertainty of our
    estimate of the exchange's clock) behind `server_now_ms`. A forming candle taken for
    closed would be stored with partial values for good, so the doubt goes to "open": the
    stream, or a later fetch, brings the final values.
    """
    try:
        rows = _rows_dec.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PayloadError(f"klines for {symbol} {interval}: {exc}: {_short(body)}") from None
    out = []
    last = len(rows) - 1
    for i, row in enumerate(rows):
        k = _K(row.open_time, row.close_time, symbol, interval, row.open, row.close, row.high,
               row.low, row.volume, False)
        closed = (i < last and rows[i + 1].open_time > row.open_time) \
            or row.close_time < server_now_ms - guard_ms
        out.append(_kline(k, closed, f"klines row of {symbol}"))
    return out


def parse_exchange_info(body: bytes | str) -> ExchangeInfo:
    """`GET /fapi/v1/exchangeInfo` -> per-symbol status and filters, and the request-weight
    limit per minute when the answer states one."""
    try:
        info = _info_dec.decode(body)
        for s in info.symbols:
            msgspec.convert(s.filters, list[_Filter])  # every filter names its type
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PayloadError(f"exchangeInfo: {exc}: {_short(body)}") from None
    symbols = {}
    for s in info.symbols:
        try:
            instrument = from_filters(s.symbol, s.baseAsset, s.quoteAsset, s.filters)
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"exchangeInfo: filters of {s.symbol}: {exc}") from None
        symbols[s.symbol] = SymbolInfo(s.symbol, s.status, s.contractType, instrument)
    weight = next((r.limit for r in info.rateLimits if r.rateLimitType == "REQUEST_WEIGHT"
                   and r.interval == "MINUTE" and r.intervalNum == 1), None)
    return ExchangeInfo(info.serverTime, weight, symbols)


def parse_server_time(body: bytes | str) -> int:
    """`GET /fapi/v1/time` -> the exchange's epoch ms."""
    try:
        return _time_dec.decode(body).serverTime
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PayloadError(f"server time: {exc}: {_short(body)}") from None


def parse_error(body: bytes | str) -> BinanceError | None:
    """Binance's `{"code", "msg"}` error body, or None when the body is something else
    (a proxy's HTML page, an empty 5xx)."""
    try:
        return _error_dec.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
