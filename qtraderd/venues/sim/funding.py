"""Funding of perpetual positions in the simulator, on its own clock.

Why: a position held for days pays (or earns) funding every 8 hours on Binance; a backtest
or a daemon test that ignores it overstates a long-held position's PnL, and the daemon must
accept the `ACCOUNT_UPDATE` with reason `FUNDING_FEE` that comes with it.

Settlements happen at every multiple of `interval_ms` since the epoch (00:00, 08:00, 16:00
UTC for 8 h), in SIMULATOR time: the server calls `check(now_ms)` as its schedule moves sim
time on (after each kline update), never from wall time. At a settlement each open position
pays `amount x mark x rate` (a long pays a positive rate, a short receives it), where mark
is the close of the last candle closed by then (the simulator's mark = last price). The
quote balance moves by the fee and one ACCOUNT_UPDATE per position is published, in the
shape of user_data/account_update.json with `"m": "FUNDING_FEE"`: `B` holds the quote
asset with `bc` = the fee; `P` is empty for a cross-margined position and holds the
position for an isolated one (as Binance sends them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from qtraderd.venues.sim.account import Account
from qtraderd.venues.sim.userstream import account_update

log = logging.getLogger("qtraderd.sim")

DEFAULT_FUNDING_INTERVAL_H = 8.0
DEFAULT_FUNDING_RATE = 0.0001  # Binance's baseline: 0.01% per 8 h


class Funding:
    """Funding settlements over one `Account`. `fees[symbol]` and `count[symbol]`: the
    signed total balance change (negative: the account paid) and settlements so far."""

    def __init__(self, account: Account, publish: Callable[[dict[str, Any]], None], *,
                 interval_h: float = DEFAULT_FUNDING_INTERVAL_H,
                 rate: float = DEFAULT_FUNDING_RATE) -> None:
        if not interval_h > 0:
            raise ValueError(f"--funding-interval-h: expected hours > 0, got {interval_h}")
        self.account, self.publish = account, publish
        self.interval_ms = max(1, round(interval_h * 3_600_000))
        self.rate = rate
        start = account.market.start_ms
        self.next_ms = (start // self.interval_ms + 1) * self.interval_ms
        self.fees: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def check(self, now_ms: int) -> int:
        """Settle every funding time up to `now_ms` (sim time); the number settled."""
        n = 0
        while self.next_ms <= now_ms:
            self.settle(self.next_ms)
            self.next_ms += self.interval_ms
            n += 1
        return n

    def mark_at(self, symbol: str, at_ms: int) -> float:
        """Close of the symbol's last candle closed by `at_ms` (its first open before)."""
        s = self.account.series(symbol)
        j = s.between(-(2**62), at_ms - self.account.market.interval_ms)[1]
        return s.candles[j - 1][4] if j else s.candles[0][1]

    def settle(self, at_ms: int) -> None:
        acc = self.account
        for p in acc.open_positions():
            s = acc.series(p.symbol)
            fee = -p.amount * self.mark_at(p.symbol, at_ms) * self.rate
            acc.balances[s.quote] = acc.balances.get(s.quote, 0.0) + fee
            acc.balance_time = at_ms
            self.fees[p.symbol] = self.fees.get(p.symbol, 0.0) + fee
            self.count[p.symbol] = self.count.get(p.symbol, 0) + 1
            event = account_update(acc, p.symbol, at_ms, "FUNDING_FEE", fee)
            if acc.settings[p.symbol].margin_type != "ISOLATED":
                event["a"]["P"] = []
            else:
                event["a"]["P"] = [x for x in event["a"]["P"] if x["ps"] == p.side]
            log.info("exchange-sim: funding %s %.8f %s at %d", p.symbol, fee, s.quote, at_ms)
            self.publish(event)

    def state(self) -> dict[str, object]:
        """The `funding` part of `/sim/state`."""
        return {"interval_ms": self.interval_ms, "rate": self.rate, "next_ms": self.next_ms,
                "fees": {k: f"{v:.8f}" for k, v in self.fees.items()},
                "settlements": dict(self.count)}
