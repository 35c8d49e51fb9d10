"""`qtraderd exchange-sim`: a loopback Binance USD-M futures exchange over stored candles.

Public API (example in server.py): `SimServer`, `load_market`, `StreamOptions`,
`FaultSpec`, `FaultSpecError`, `SimInputError`, `Market`. They load on first use, so the
CLI can build its parser from `qtraderd.venues.sim.main` without importing the server.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Market": "candles", "SimInputError": "candles", "FaultSpec": "faults",
    "FaultSpecError": "faults", "SimServer": "server", "load_market": "server",
    "StreamOptions": "streams",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
