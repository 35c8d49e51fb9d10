"""Signal filter: no new entries during the first bars after a symbol's regime changed.

Why: the ensemble weighs its models by their recent record *per regime*, and the features
that drive the regime detector (volatility, EMA gap in ATR units) are at their least
settled right after it flips. Waiting a few bars after a change lets the new regime
confirm itself before money follows it; entries in a regime that has held are untouched.

Settings, all optional ([plugins.settings.regime_cooldown] in the config):
  bars    = 3     entries are held back while the symbol has been in its current regime
                  for at most this many bars (SignalView.bars_in_regime; 1 = just changed;
                  the first regime after start counts as a change too)
  regimes = []    only after a change *into* one of these (trend_up, trend_down, range,
                  high_vol); empty: after any change
  scale   = 0     0: veto those entries; a factor in (0, 1): shrink them instead
Vetoes are recorded as signal action "veto", reason "plugin:regime_cooldown:new_regime".
"""

from __future__ import annotations

from typing import Any

from qtraderd.plugins.api import SignalView, Verdict, scale, veto

PLUGIN_API = 1
NAME = "regime_cooldown"
VERSION = "1.0"

REGIMES = ("trend_up", "trend_down", "range", "high_vol")

_bars = 3
_regimes: frozenset[str] = frozenset()
_scale = 0.0


def setup(settings: dict[str, Any]) -> None:
    """Validate the settings; a typo is an error (the plugin is rejected, not misapplied)."""
    global _bars, _regimes, _scale
    unknown = set(settings) - {"bars", "regimes", "scale"}
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)} (known: bars, regimes, scale)")
    bars = settings.get("bars", 3)
    if isinstance(bars, bool) or not isinstance(bars, int) or bars < 0:
        raise ValueError(f"bars must be an integer >= 0, got {bars!r}")
    regimes = settings.get("regimes", [])
    if not isinstance(regimes, list) or any(r not in REGIMES for r in regimes):
        raise ValueError(f"regimes must be a list of {', '.join(REGIMES)}, got {regimes!r}")
    factor = settings.get("scale", 0.0)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not (
            0.0 <= factor < 1.0):
        raise ValueError(f"scale must be a number in [0, 1), got {factor!r}")
    _bars, _regimes, _scale = bars, frozenset(regimes), float(factor)


def filter_signal(signal: SignalView) -> Verdict | None:
    if signal.bars_in_regime > _bars:
        return None
    if _regimes and signal.regime not in _regimes:
        return None
    if _scale > 0.0:
        return scale(_scale, "new_regime")
    return veto("new_regime")
