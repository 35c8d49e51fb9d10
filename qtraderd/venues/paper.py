"""The paper broker: a simulated USD-M-futures-style account per quote currency.

Order of work inside one bar, as on a real exchange (DESIGN.md "One bar, in order"):
1. market orders accepted on the previous bar fill at this bar's open, plus slippage,
   paying the taker fee (exits before entries);
2. resting protective orders trigger inside this bar's high/low: the stop is checked
   first, so when a bar touches both, the stop wins (we cannot see the path inside a
   bar; assuming the best case would flatter every backtest). A bar that opens beyond a
   level fills at the open, not at the level.
Positions opened at this bar's open are exposed to this bar's range immediately, since
their protective orders are placed together with the entry.

Accounting is linear (quote-margined) futures: PnL = side * qty * (exit - entry), fees on
notional, margin = notional / leverage. Balance is cash after realised PnL and fees;
equity adds unrealised PnL at the last close.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from qtraderd.core.costs import CostModel
from qtraderd.core.messages import (
    AccountView,
    Amend,
    Bar,
    Fill,
    OrderIntent,
    PositionView,
    Trade,
)

QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")


@functools.lru_cache(maxsize=4096)
def quote_of(symbol: str) -> str:
    """Quote currency of a pair name ("ETHBTC" -> "BTC", "XRPUSDT" -> "USDT")."""
    for q in QUOTES:
        if symbol.endswith(q) and len(symbol) > len(q):
            return q
    raise ValueError(f"cannot tell the quote currency of symbol {symbol!r}")


@dataclass(slots=True)
class Position:
    symbol: str
    quote: str
    side: int
    qty: float
    entry_price: float
    entry_ts: int
    stop_price: float
    take_price: float
    margin: float
    entry_fee: float
    order_id: str
    bars_held: int = 0
    best_price: float = 0.0
    trailing: bool = False
    mark_price: float = 0.0

    def unrealized(self) -> float:
        return self.side * self.qty * (self.mark_price - self.entry_price)

    def view(self) -> PositionView:
        return PositionView(
            self.symbol, self.quote, self.side, self.qty, self.entry_price, self.entry_ts,
            self.stop_price, self.take_price, self.margin, self.bars_held, self.best_price,
            self.trailing, self.mark_price, self.unrealized(),
        )


@dataclass(slots=True)
class _Pending:
    intent: OrderIntent
    qty: float


class PaperBroker:
    """Simulated execution with one cost model; deterministic for a given input."""

    def __init__(self, balances: dict[str, float], costs: CostModel) -> None:
        self.costs = costs
        self.balances = {q: float(v) for q, v in balances.items() if q != "*"}
        self.positions: dict[str, Position] = {}
        self._pending: dict[str, list[_Pending]] = {}
        self._trade_seq = 0

    # -- phase A: this bar's open and range ------------------------------------------
    def on_bars(self, bars: tuple[Bar, ...]) -> tuple[list[Fill], list[Trade]]:
        fills: list[Fill] = []
        closed: list[Trade] = []
        for bar in bars:
            queued = self._pending.pop(bar.symbol, None)
            if queued:
                queued.sort(key=lambda p: p.intent.purpose != "exit")  # exits first
                for p in queued:
                    self._fill_market(p, bar, fills, closed)
            pos = self.positions.get(bar.symbol)
            if pos is not None:
                self._check_protective(pos, bar, fills, closed)
            pos = self.positions.get(bar.symbol)
            if pos is not None:
                pos.bars_held += 1
                pos.mark_price = bar.close
                if pos.side > 0:
                    pos.best_price = max(pos.best_price, bar.high)
                else:
                    pos.best_price = min(pos.best_price, bar.low)
        return fills, closed

    def _fill_market(self, p: _Pending, bar: Bar, fills: list[Fill], closed: list[Trade]) -> None:
        it = p.intent
        pos = self.positions.get(it.symbol)
        if it.purpose == "exit":
            if pos is None or pos.side == it.side:
                return  # already closed (by a stop in an earlier bar); nothing to do
            price = self.costs.fill_price(bar.open, -pos.side)
            self._close(pos, bar.open_time, price, it.reason, it.id, fills, closed)
            return
        if pos is not None:
            return  # one position per symbol; a second entry is dropped
        price = self.costs.fill_price(bar.open, it.side)
        notional = p.qty * price
        fee = self.costs.fee(notional)
        quote = quote_of(it.symbol)
        self.balances[quote] = self.balances.get(quote, 0.0) - fee
        pos = Position(
            symbol=it.symbol, quote=quote, side=it.side, qty=p.qty, entry_price=price,
            entry_ts=bar.open_time,
            stop_price=price * (1 - it.side * it.sl_pct) if it.sl_pct > 0 else 0.0,
            take_price=price * (1 + it.side * it.tp_pct) if it.tp_pct > 0 else 0.0,
            margin=notional / max(it.leverage, 1e-9), entry_fee=fee, order_id=it.id,
            best_price=price, mark_price=price,
        )
        self.positions[it.symbol] = pos
        fills.append(Fill(it.id, it.symbol, bar.open_time, it.side, p.qty, price, fee,
                          "taker", "entry"))

    def _check_protective(self, pos: Position, bar: Bar, fills: list[Fill],
                          closed: list[Trade]) -> None:
        if pos.side > 0:
            stop_hit = pos.stop_price > 0 and bar.low <= pos.stop_price
            take_hit = pos.take_price > 0 and bar.high >= pos.take_price
            take_at_open = take_hit and bar.open >= pos.take_price
            stop_level = min(bar.open, pos.stop_price)
            take_level = max(bar.open, pos.take_price)
        else:
            stop_hit = pos.stop_price > 0 and bar.high >= pos.stop_price
            take_hit = pos.take_price > 0 and bar.low <= pos.take_price
            take_at_open = take_hit and bar.open <= pos.take_price
            stop_level = max(bar.open, pos.stop_price)
            take_level = min(bar.open, pos.take_price)
        # Stop first when both are inside the bar, unless the bar opened beyond the
        # take-profit: the open is the one price whose place in the path we know.
        if stop_hit and not take_at_open:
            reason = "trailing_stop" if pos.trailing else "stop_loss"
            price = self.costs.fill_price(stop_level, -pos.side)
            self._close(pos, bar.open_time, price, reason, f"{pos.order_id}-SL", fills, closed)
        elif take_hit:
            price = self.costs.fill_price(take_level, -pos.side)
            self._close(pos, bar.open_time, price, "take_profit", f"{pos.order_id}-TP",
                        fills, closed)

    def _close(self, pos: Position, ts: int, price: float, reason: str, order_id: str,
               fills: list[Fill], closed: list[Trade]) -> None:
        fee = self.costs.fee(pos.qty * price)
        gross = pos.side * pos.qty * (price - pos.entry_price)
        self.balances[pos.quote] = self.balances.get(pos.quote, 0.0) + gross - fee
        fees = pos.entry_fee + fee
        net = gross - fees
        self._trade_seq += 1
        fills.append(Fill(order_id, pos.symbol, ts, -pos.side, pos.qty, price, fee, "taker",
                          reason))
        closed.append(Trade(
            id=self._trade_seq, symbol=pos.symbol, quote=pos.quote, side=pos.side,
            qty=pos.qty, entry_ts=pos.entry_ts, entry_price=pos.entry_price, exit_ts=ts,
            exit_price=price, gross_pnl=gross, fees=fees, net_pnl=net,
            return_pct=100.0 * net / pos.margin if pos.margin > 0 else 0.0,
            exit_reason=reason, bars_held=pos.bars_held,
        ))
        del self.positions[pos.symbol]

    # -- phase B: decisions of this bar ------------------------------------------------
    def amend(self, amends: tuple[Amend, ...]) -> None:
        for a in amends:
            pos = self.positions.get(a.symbol)
            if pos is None:
                continue
            pos.stop_price = a.stop_price
            pos.take_price = a.take_price
            if a.reason == "trailing":
                pos.trailing = True

    def submit(self, intent: OrderIntent, qty: float) -> None:
        """Queue a market order for the symbol's next bar open."""
        self._pending.setdefault(intent.symbol, []).append(_Pending(intent, qty))

    def pending_count(self) -> int:
        return sum(len(v) for v in self._pending.values())

    # -- crash-only state --------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """Balances, open positions (stops, trailing, bars held), queued orders, trade ids."""
        return {"balances": dict(self.balances),
                "positions": {s: dataclasses.replace(p) for s, p in self.positions.items()},
                "pending": {s: list(v) for s, v in self._pending.items()},
                "trade_seq": self._trade_seq}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.balances = dict(state["balances"])
        self.positions = dict(state["positions"])
        self._pending = {s: list(v) for s, v in state["pending"].items()}
        self._trade_seq = state["trade_seq"]

    # -- views -------------------------------------------------------------------------
    def snapshot(self) -> tuple[tuple[PositionView, ...], tuple[AccountView, ...]]:
        positions = tuple(p.view() for _, p in sorted(self.positions.items()))
        accounts = []
        for quote in sorted(self.balances):
            mine = [p for p in positions if p.quote == quote]
            unreal = sum(p.unrealized for p in mine)
            accounts.append(AccountView(
                quote=quote,
                balance=self.balances[quote],
                equity=self.balances[quote] + unreal,
                exposure=sum(p.qty * p.mark_price for p in mine),
                margin_used=sum(p.margin for p in mine),
                open_positions=len(mine),
            ))
        return positions, tuple(accounts)
