"""Instruments: what a symbol is (base and quote asset) and the venue's order filters.

Nothing is guessed from a symbol's spelling: a symbol is known because it is defined.
Definitions come from
* `qtraderd/data/instruments.toml`, bundled: the pairs of the bundled and shared candles
  (Binance spot pairs recorded in 2018, whose filters of the time are unknown — their
  tick_size / step_size / min_qty / min_notional are 0, meaning "not enforced");
* `STATE_DIR/instruments.toml` (same format), for candles imported under other names —
  the daemon and the walk-forward load it at start (`load_state_dir`);
* `from_exchange_info`, a parser for Binance's `GET /fapi/v1/exchangeInfo`, which a live
  venue uses for real filter values;
* `define(...)`, the explicit mechanism for programs that make symbols up (tests with
  random walks, the benchmark's renamed copies of real pairs).
A symbol with no definition raises `InstrumentError`, naming it and saying how to define
it. Paper replay applies none of the filters (fills are not rounded), so replays give the
same numbers whatever the filters say; a live broker uses them to round and validate.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from importlib import resources
from pathlib import Path
from typing import Any

FILE_NAME = "instruments.toml"


class InstrumentError(LookupError):
    """A symbol nobody defined, or a malformed definition."""


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    base: str
    quote: str
    tick_size: float = 0.0  # price increment; 0: not enforced
    step_size: float = 0.0  # quantity increment; 0: not enforced
    min_qty: float = 0.0
    min_notional: float = 0.0  # in the quote asset

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = ("base", "quote", "tick_size", "step_size", "min_qty", "min_notional")


def parse_definitions(data: Mapping[str, Any], origin: str) -> dict[str, Instrument]:
    """`{SYMBOL: {base, quote, [tick_size, step_size, min_qty, min_notional]}}`."""
    out = {}
    for symbol, d in data.items():
        if not isinstance(d, Mapping) or not d.get("base") or not d.get("quote"):
            raise InstrumentError(f"{origin}: [{symbol}] needs base and quote")
        unknown = set(d) - set(_FIELDS)
        if unknown:
            raise InstrumentError(f"{origin}: [{symbol}] unknown key(s) "
                                  f"{', '.join(sorted(unknown))} (known: {', '.join(_FIELDS)})")
        try:
            out[symbol] = Instrument(symbol, str(d["base"]), str(d["quote"]),
                                     *(float(d.get(k, 0.0)) for k in _FIELDS[2:]))
        except (TypeError, ValueError) as exc:
            raise InstrumentError(f"{origin}: [{symbol}] {exc}") from exc
    return out


def read_file(path: Path) -> dict[str, Instrument]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InstrumentError(f"{path}: {exc}") from exc
    return parse_definitions(data, str(path))


def from_exchange_info(payload: Mapping[str, Any]) -> dict[str, Instrument]:
    """Instruments from a `GET /fapi/v1/exchangeInfo` answer (PRICE_FILTER, LOT_SIZE,
    MIN_NOTIONAL filters; numbers arrive as strings). Unknown fields are ignored."""
    return {s["symbol"]: from_filters(s["symbol"], s["baseAsset"], s["quoteAsset"],
                                      s.get("filters", ()))
            for s in payload.get("symbols", ())}


def from_filters(symbol: str, base: str, quote: str,
                 filters: Iterable[Mapping[str, Any]]) -> Instrument:
    """One symbol's definition from its exchangeInfo `filters` list (the live venue's
    typed parser, qtraderd.venues.binance.payloads, calls this too, so the filter
    mapping is written once). A missing filter is 0: not enforced."""
    by_type = {f.get("filterType"): f for f in filters}
    price = by_type.get("PRICE_FILTER", {})
    lot = by_type.get("LOT_SIZE", {})
    notional = by_type.get("MIN_NOTIONAL", {})
    return Instrument(symbol=symbol, base=base, quote=quote,
                      tick_size=float(price.get("tickSize", 0)),
                      step_size=float(lot.get("stepSize", 0)),
                      min_qty=float(lot.get("minQty", 0)),
                      min_notional=float(notional.get("notional", 0)))


def on_grid(x: float, step: float, *, down: bool = False) -> str:
    """`x` on the grid of `step` (nearest, or rounded down), as the decimal string Binance
    expects; a 0 step (not enforced) keeps `x` as it is. The one rounding function for
    order quantities and prices (the Binance trading and algo-order clients use it)."""
    d = Decimal(repr(float(x)))
    if not step:
        return format(d.normalize(), "f")
    s = Decimal(repr(float(step))).normalize()
    n = (d / s).quantize(Decimal(1), rounding=ROUND_DOWN if down else ROUND_HALF_UP)
    return format((n * s).quantize(s), "f")


def write_file(path: Path, instruments: Iterable[Instrument]) -> None:
    """Write definitions in the file format (e.g. STATE_DIR/instruments.toml)."""
    lines = []
    for i in instruments:
        lines += [f"[{i.symbol}]", f'base = "{i.base}"', f'quote = "{i.quote}"']
        lines += [f"{k} = {getattr(i, k)!r}" for k in _FIELDS[2:] if getattr(i, k)]
        lines.append("")
    Path(path).write_text("\n".join(lines))


def bundled() -> dict[str, Instrument]:
    text = resources.files("qtraderd").joinpath("data", FILE_NAME).read_text()
    return parse_definitions(tomllib.loads(text), f"qtraderd/data/{FILE_NAME}")


class Instruments:
    """A table of definitions; `get` refuses what is not in it."""

    def __init__(self, defs: Mapping[str, Instrument] | None = None) -> None:
        self._defs: dict[str, Instrument] = dict(defs or {})

    def define(self, *instruments: Instrument) -> None:
        for i in instruments:
            self._defs[i.symbol] = i

    def get(self, symbol: str) -> Instrument:
        try:
            return self._defs[symbol]
        except KeyError:
            raise InstrumentError(
                f"symbol {symbol!r} has no instrument definition (base, quote, filters); "
                f"define it in STATE_DIR/{FILE_NAME} as [{symbol}] with base = \"...\" and "
                f"quote = \"...\" (known: {', '.join(sorted(self._defs)) or 'none'})"
            ) from None

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._defs


REGISTRY = Instruments(bundled())


def instrument(symbol: str) -> Instrument:
    return REGISTRY.get(symbol)


def quote_asset(symbol: str) -> str:
    """The asset the symbol is priced, margined and settled in ("ETHBTC" -> "BTC")."""
    return REGISTRY.get(symbol).quote


def define(*instruments: Instrument) -> None:
    """Make symbols known to this process (made-up symbols in tests and benchmarks)."""
    REGISTRY.define(*instruments)


def load_state_dir(state_dir: Path) -> int:
    """Load STATE_DIR/instruments.toml when present; return how many were defined."""
    path = Path(state_dir) / FILE_NAME
    if not path.is_file():
        return 0
    defs = read_file(path)
    REGISTRY.define(*defs.values())
    return len(defs)
