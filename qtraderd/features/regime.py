"""Market regimes per symbol and across symbols, from the feature row of each bar.

Four regimes: trend_up, trend_down, range, high_vol. A symbol is in high_vol when its
recent volatility (vol_12) runs well above its own slow average (an EMA over ~1 day of
bars, so the rule is scale-free and causal); otherwise the EMA gap, measured in units of
ATR, decides trend vs range. The global regime is the most common symbol regime of a
step, ties broken towards caution (high_vol > trend_down > trend_up > range).
"""

from __future__ import annotations

from collections.abc import Iterable

from qtraderd.features.spec import FEATURE_NAMES

REGIMES = ("trend_up", "trend_down", "range", "high_vol")
_CAUTION = {"high_vol": 0, "trend_down": 1, "trend_up": 2, "range": 3}

_I_VOL12 = FEATURE_NAMES.index("vol_12")
_I_ATR = FEATURE_NAMES.index("atr_14")
_I_GAP = FEATURE_NAMES.index("ema_gap")

HIGH_VOL_MULT = 1.8
TREND_ATR_UNITS = 0.8
_SLOW = 2.0 / (288 + 1)


class RegimeDetector:
    """Regime of one symbol; feed it each bar's feature row in order."""

    __slots__ = ("_vol_ref",)

    def __init__(self) -> None:
        self._vol_ref = 0.0

    def update(self, row: tuple[float, ...]) -> str:
        vol = row[_I_VOL12]
        ref = self._vol_ref
        self._vol_ref = vol if ref == 0.0 else ref + _SLOW * (vol - ref)
        if ref > 0.0 and vol > HIGH_VOL_MULT * ref:
            return "high_vol"
        atr = row[_I_ATR]
        if atr <= 0.0:
            return "range"
        units = row[_I_GAP] / atr
        if units > TREND_ATR_UNITS:
            return "trend_up"
        if units < -TREND_ATR_UNITS:
            return "trend_down"
        return "range"


def global_regime(regimes: Iterable[str]) -> str:
    """The most common regime of a step; ties go to the more cautious one."""
    counts: dict[str, int] = {}
    for r in regimes:  # a plain dict: Counter's set-up costs more than ten symbols do
        counts[r] = counts.get(r, 0) + 1
    if not counts:
        return ""
    return min(counts, key=lambda r: (-counts[r], _CAUTION.get(r, 9)))
