"""The paper broker: a simulated USD-M-futures-style account per quote currency.

It implements the asynchronous `Broker` of venues/base.py the way an exchange would
behave, with the candles as the market. `submit` accepts a market order at once (an
`accepted` event); the order executes against the symbol's next bar. Inside one bar, as
on a real exchange (DESIGN.md "One bar, in order"):
1. market orders accepted on the previous bar fill at this bar's open, plus slippage,
   paying the taker fee (exits before entries); an exit for a position that is gone
   expires, and so does an entry for a symbol that already holds one (one per symbol);
2. resting protective orders trigger inside this bar's high/low: the stop is checked
   first, so when a bar touches both, the stop wins (we cannot see the path inside a
   bar; assuming the best case would flatter every backtest). A bar that opens beyond a
   level fills at the open, not at the level. The other protective order is cancelled.
Positions opened at this bar's open are exposed to this bar's range immediately, since
their protective orders (client ids `...-SL`, `...-TP`) are placed with the entry's fill.
Every fill, lifecycle move, position change and account figure is queued as an event for
the execution actor to drain; fills are not rounded to instrument filters (see
core/instruments.py), so replays keep their exact figures.

Accounting is linear (quote-margined) futures: PnL = side * qty * (exit - entry), fees on
notional, margin = notional / leverage. Balance is cash after realised PnL and fees;
equity adds unrealised PnL at the last close.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

import msgspec

from qtraderd.core.costs import CostModel
from qtraderd.core.enums import OrderStatus
from qtraderd.core.instruments import quote_asset
from qtraderd.core.messages import (
    AccountView,
    Amend,
    Bar,
    Fill,
    OrderUpdate,
    PositionView,
    Trade,
)
from qtraderd.venues.base import Order, VenueEvent

log = logging.getLogger("qtraderd.paper")

STATE_VERSION = 1
S = OrderStatus


@dataclass(slots=True)
class Position:
    symbol: str
    quote: str
    side: int
    qty: float
    entry_price: float
    entry_ts: int
    stop_price: float  # 0: no stop resting
    take_price: float  # 0: no take-profit resting
    margin: float
    entry_fee: float
    order_id: str  # the entry's client id
    sl_id: str = ""
    tp_id: str = ""
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


_EVENT_TYPES: dict[str, type] = {t.__name__: t for t in (OrderUpdate, Fill, Trade, PositionView,
                                                        AccountView)}
_POSITION_FIELDS = tuple(f.name for f in fields(Position))


class PaperBroker:
    """Simulated execution with one cost model; deterministic for a given input."""

    def __init__(self, balances: dict[str, float], costs: CostModel) -> None:
        self.costs = costs
        self.balances = {q: float(v) for q, v in balances.items() if q != "*"}
        self.positions: dict[str, Position] = {}
        self._pending: dict[str, list[Order]] = {}
        self._orders: dict[str, OrderStatus] = {}  # open orders' lifecycle states
        self._trade_seq = 0
        self._events: list[VenueEvent] = []
        self._last_ts = 0

    # -- the Broker interface ----------------------------------------------------------
    async def reconcile(self, saved: dict[str, Any] | None) -> None:
        """Restore `export_state()`'s output (None: a fresh account); then report it all."""
        if saved:
            self.restore(saved)
        for _, pos in sorted(self.positions.items()):
            self._events.append(pos.view())
        self._events.extend(self._accounts())

    async def on_bars(self, bars: tuple[Bar, ...]) -> None:
        ev = self._events
        for bar in bars:
            self._last_ts = bar.open_time
            had = bar.symbol in self.positions
            queued = self._pending.pop(bar.symbol, None)
            if queued:
                queued.sort(key=lambda o: o.purpose != "exit")  # exits first
                for order in queued:
                    self._fill_market(order, bar)
            pos = self.positions.get(bar.symbol)
            if pos is not None:
                self._check_protective(pos, bar)
            pos = self.positions.get(bar.symbol)
            if pos is not None:
                pos.bars_held += 1
                pos.mark_price = bar.close
                if pos.side > 0:
                    pos.best_price = max(pos.best_price, bar.high)
                else:
                    pos.best_price = min(pos.best_price, bar.low)
                ev.append(pos.view())
            elif had or queued:
                ev.append(PositionView(bar.symbol, "", 0, 0.0, 0.0, 0, 0.0, 0.0, 0.0, 0, 0.0,
                                       False, 0.0, 0.0))
        ev.extend(self._accounts())

    def drain(self) -> list[VenueEvent]:
        out, self._events = self._events, []
        return out

    async def submit(self, order: Order) -> None:
        """Accept a market order for the symbol's next bar open."""
        self._pending.setdefault(order.symbol, []).append(order)
        self._move(order.client_id, order.symbol, order.decided_ts, S.ACCEPTED, "submitted")

    async def cancel(self, client_id: str) -> None:
        for symbol, queued in self._pending.items():
            for order in queued:
                if order.client_id == client_id:
                    queued.remove(order)
                    self._move(client_id, symbol, self._last_ts, S.CANCELLED, "cancel")
                    return
        for pos in self.positions.values():
            if client_id == pos.sl_id and pos.stop_price > 0:
                pos.stop_price = 0.0
            elif client_id == pos.tp_id and pos.take_price > 0:
                pos.take_price = 0.0
            else:
                continue
            self._move(client_id, pos.symbol, self._last_ts, S.CANCELLED, "cancel")
            self._events.append(pos.view())
            return
        log.info("cancel ignored: %s is not an open order", client_id)

    async def amend(self, amend: Amend, seq: int) -> None:
        """Move a position's protective levels in place (a live venue cancels and replaces,
        with new ids minted from `seq`); a level appearing places that order."""
        pos = self.positions.get(amend.symbol)
        if pos is None:
            return
        ts = self._last_ts
        if amend.stop_price > 0 and pos.stop_price <= 0:
            self._place(pos.sl_id, pos.symbol, ts)
        if amend.take_price > 0 and pos.take_price <= 0:
            self._place(pos.tp_id, pos.symbol, ts)
        pos.stop_price = amend.stop_price
        pos.take_price = amend.take_price
        if amend.reason == "trailing":
            pos.trailing = True

    def open_orders(self) -> list[tuple[str, str]]:
        return sorted((cid, str(st)) for cid, st in self._orders.items())

    # -- execution inside one bar ------------------------------------------------------
    def _move(self, cid: str, symbol: str, ts: int, to: OrderStatus, reason: str) -> None:
        if to.terminal:
            self._orders.pop(cid, None)
        else:
            self._orders[cid] = to
        self._events.append(OrderUpdate(cid, symbol, ts, str(to), reason))

    def _place(self, cid: str, symbol: str, ts: int) -> None:
        self._move(cid, symbol, ts, S.NEW, "protective")
        self._move(cid, symbol, ts, S.ACCEPTED, "protective")

    def _fill_market(self, o: Order, bar: Bar) -> None:
        pos = self.positions.get(o.symbol)
        ts = bar.open_time
        if o.purpose == "exit":
            if pos is None or pos.side == o.side:
                self._move(o.client_id, o.symbol, ts, S.EXPIRED, "no open position to exit")
                return
            price = self.costs.fill_price(bar.open, -pos.side)
            self._close(pos, ts, price, o.reason, o.client_id)
            return
        if pos is not None:
            self._move(o.client_id, o.symbol, ts, S.EXPIRED, "position already open")
            return
        price = self.costs.fill_price(bar.open, o.side)
        notional = o.qty * price
        fee = self.costs.fee(notional)
        quote = quote_asset(o.symbol)
        self.balances[quote] = self.balances.get(quote, 0.0) - fee
        pos = Position(
            symbol=o.symbol, quote=quote, side=o.side, qty=o.qty, entry_price=price,
            entry_ts=ts,
            stop_price=price * (1 - o.side * o.sl_pct) if o.sl_pct > 0 else 0.0,
            take_price=price * (1 + o.side * o.tp_pct) if o.tp_pct > 0 else 0.0,
            margin=notional / max(o.leverage, 1e-9), entry_fee=fee, order_id=o.client_id,
            sl_id=o.sl_id or f"{o.client_id}-SL", tp_id=o.tp_id or f"{o.client_id}-TP",
            best_price=price, mark_price=price,
        )
        self.positions[o.symbol] = pos
        self._events.append(Fill(o.client_id, o.symbol, ts, o.side, o.qty, price, fee,
                                 "taker", "entry"))
        self._move(o.client_id, o.symbol, ts, S.FILLED, "filled at open")
        if pos.stop_price > 0:
            self._place(pos.sl_id, o.symbol, ts)
        if pos.take_price > 0:
            self._place(pos.tp_id, o.symbol, ts)

    def _check_protective(self, pos: Position, bar: Bar) -> None:
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
            self._close(pos, bar.open_time, price, reason, pos.sl_id)
        elif take_hit:
            price = self.costs.fill_price(take_level, -pos.side)
            self._close(pos, bar.open_time, price, "take_profit", pos.tp_id)

    def _close(self, pos: Position, ts: int, price: float, reason: str, order_id: str) -> None:
        fee = self.costs.fee(pos.qty * price)
        gross = pos.side * pos.qty * (price - pos.entry_price)
        self.balances[pos.quote] = self.balances.get(pos.quote, 0.0) + gross - fee
        fees = pos.entry_fee + fee
        net = gross - fees
        self._trade_seq += 1
        self._events.append(Fill(order_id, pos.symbol, ts, -pos.side, pos.qty, price, fee,
                                 "taker", reason))
        self._move(order_id, pos.symbol, ts, S.FILLED, reason)
        for cid, level in ((pos.sl_id, pos.stop_price), (pos.tp_id, pos.take_price)):
            if cid != order_id and level > 0:
                self._move(cid, pos.symbol, ts, S.CANCELLED, f"position closed ({reason})")
        self._events.append(Trade(
            id=self._trade_seq, symbol=pos.symbol, quote=pos.quote, side=pos.side,
            qty=pos.qty, entry_ts=pos.entry_ts, entry_price=pos.entry_price, exit_ts=ts,
            exit_price=price, gross_pnl=gross, fees=fees, net_pnl=net,
            return_pct=100.0 * net / pos.margin if pos.margin > 0 else 0.0,
            exit_reason=reason, bars_held=pos.bars_held,
        ))
        del self.positions[pos.symbol]

    # -- views and state ---------------------------------------------------------------
    def _accounts(self) -> list[AccountView]:
        positions = [p.view() for _, p in sorted(self.positions.items())]
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
        return accounts

    def export_state(self) -> dict[str, Any]:
        """Everything a restarted broker needs, JSON-serialisable and float-exact: balances,
        positions (entry, qty, side, TP/SL levels and their order ids, trailing, best price,
        bars held), pending market orders, open orders' lifecycle states, trade sequence,
        and the events not drained yet (a submit's `accepted` waits for the next step)."""
        return {
            "version": STATE_VERSION,
            "balances": dict(self.balances),
            "positions": [asdict(p) for _, p in sorted(self.positions.items())],
            "pending": [msgspec.to_builtins(o) for q in self._pending.values() for o in q],
            "orders": {cid: str(st) for cid, st in self._orders.items()},
            "trade_seq": self._trade_seq,
            "last_ts": self._last_ts,
            "events": [[type(e).__name__, msgspec.to_builtins(e)] for e in self._events],
        }

    def restore(self, saved: dict[str, Any]) -> None:
        if saved.get("version") != STATE_VERSION:
            raise ValueError(f"paper broker state version {saved.get('version')!r} is not "
                             f"{STATE_VERSION}")
        self.balances = {q: float(v) for q, v in saved["balances"].items()}
        self.positions = {}
        for d in saved["positions"]:
            pos = Position(**{k: d[k] for k in _POSITION_FIELDS})
            self.positions[pos.symbol] = pos
        self._pending = {}
        for raw in saved["pending"]:
            o = msgspec.convert(raw, Order)
            self._pending.setdefault(o.symbol, []).append(o)
        self._orders = {cid: OrderStatus(st) for cid, st in saved["orders"].items()}
        self._trade_seq = int(saved["trade_seq"])
        self._last_ts = int(saved["last_ts"])
        self._events = [msgspec.convert(raw, _EVENT_TYPES[name]) for name, raw in saved["events"]]
