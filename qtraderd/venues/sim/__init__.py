"""`qtraderd exchange-sim`: a loopback Binance USD-M futures exchange over stored candles.

Public API (see server.py for an example):
`SimServer(market, *, speed, port, host, faults, seed, stream_options, updates_per_candle,
weight_limit)`, `load_market(csv=..., state_dir=..., symbols, interval, start_ms, end_ms)`,
`StreamOptions`, `FaultSpec`, `FaultSpecError`, `SimInputError`.
"""

from qtraderd.venues.sim.candles import Market, SimInputError
from qtraderd.venues.sim.faults import FaultSpec, FaultSpecError
from qtraderd.venues.sim.server import SimServer, load_market
from qtraderd.venues.sim.streams import StreamOptions

__all__ = ["FaultSpec", "FaultSpecError", "Market", "SimInputError", "SimServer",
           "StreamOptions", "load_market"]
