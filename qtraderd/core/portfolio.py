"""Per-symbol performance and the pause rules that act on it.

A symbol is paused (no new entries; exits always allowed) after `max_losing_streak`
losing trades in a row, or when the mean return of its last `expectancy_trades` trades
is negative. A pause ends after `pause_bars` bars of data time, or by
`qtraderd ctl resume-symbol`. Statistics are net of fees and slippage.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from qtraderd.core.config import PortfolioConfig
from qtraderd.core.messages import RiskEvent, Trade


@dataclass
class SymbolStats:
    trades: int = 0
    wins: int = 0
    net_pnl: float = 0.0
    losing_streak: int = 0
    recent: deque[float] = field(default_factory=deque)
    paused_until: int | None = None  # ms; -1 = until resumed by hand
    pause_reason: str = ""

    def expectancy_pct(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None


class Portfolio:
    def __init__(self, cfg: PortfolioConfig, interval_ms: int) -> None:
        self.cfg = cfg
        self.interval_ms = interval_ms
        self.symbols: dict[str, SymbolStats] = {}

    def reconfigure(self, cfg: PortfolioConfig) -> None:
        """New limits from a config reload; each symbol keeps its last trades' window."""
        self.cfg = cfg
        for st in self.symbols.values():
            st.recent = deque(st.recent, maxlen=max(1, cfg.expectancy_trades))

    def _get(self, symbol: str) -> SymbolStats:
        st = self.symbols.get(symbol)
        if st is None:
            st = self.symbols[symbol] = SymbolStats(
                recent=deque(maxlen=max(1, self.cfg.expectancy_trades)))
        return st

    def on_trade(self, t: Trade, ts: int, state: str) -> list[RiskEvent]:
        st = self._get(t.symbol)
        st.trades += 1
        st.net_pnl += t.net_pnl
        if t.net_pnl > 0:
            st.wins += 1
            st.losing_streak = 0
        else:
            st.losing_streak += 1
        st.recent.append(t.return_pct)
        if st.paused_until is not None:
            return []
        cfg = self.cfg
        if cfg.max_losing_streak and st.losing_streak >= cfg.max_losing_streak:
            return [self.pause(t.symbol, ts, "LOSING_STREAK",
                               f"{st.losing_streak} losing trades in a row", state)]
        exp = st.expectancy_pct()
        if (cfg.expectancy_trades and len(st.recent) >= cfg.expectancy_trades
                and exp is not None and exp < 0):
            return [self.pause(t.symbol, ts, "NEGATIVE_EXPECTANCY",
                               f"mean return {exp:.2f}% over the last {len(st.recent)} trades",
                               state)]
        return []

    def pause(self, symbol: str, ts: int, reason: str, detail: str, state: str,
              manual: bool = False) -> RiskEvent:
        st = self._get(symbol)
        if manual or not self.cfg.pause_bars:
            st.paused_until = -1
        else:
            st.paused_until = ts + self.cfg.pause_bars * self.interval_ms
        st.pause_reason = reason
        return RiskEvent(ts, state, state, "SYMBOL_PAUSED", f"{reason}: {detail}", symbol)

    def resume(self, symbol: str, ts: int, state: str, why: str) -> RiskEvent | None:
        st = self.symbols.get(symbol)
        if st is None or st.paused_until is None:
            return None
        st.paused_until = None
        st.losing_streak = 0
        st.recent.clear()
        st.pause_reason = ""
        return RiskEvent(ts, state, state, "SYMBOL_RESUMED", why, symbol)

    def expire(self, ts: int, state: str) -> list[RiskEvent]:
        out = []
        for symbol, st in self.symbols.items():
            if st.paused_until is not None and 0 <= st.paused_until <= ts:
                ev = self.resume(symbol, ts, state, "pause expired")
                if ev:
                    out.append(ev)
        return out

    def is_paused(self, symbol: str) -> bool:
        st = self.symbols.get(symbol)
        return st is not None and st.paused_until is not None

    def paused(self) -> dict[str, str]:
        return {s: st.pause_reason for s, st in sorted(self.symbols.items())
                if st.paused_until is not None}

    def stats(self) -> dict[str, dict[str, Any]]:
        out = {}
        for s, st in sorted(self.symbols.items()):
            exp = st.expectancy_pct()
            out[s] = {
                "trades": st.trades,
                "win_rate": round(st.wins / st.trades, 4) if st.trades else None,
                "net_pnl": st.net_pnl,
                "losing_streak": st.losing_streak,
                "expectancy_pct": round(exp, 4) if exp is not None else None,
                "paused": st.pause_reason if st.paused_until is not None else "",
            }
        return out
