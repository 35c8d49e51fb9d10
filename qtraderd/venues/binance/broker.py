"""The live broker: Binance USD-M futures (or `qtraderd exchange-sim`) behind the Broker seam.

It behaves like the paper broker towards the execution actor — `submit` returns once the
request is answered, and what happens to orders, positions and the account comes back as
queued events drained at the start of each step — but the exchange is the record:
- Entries and exits are `MARKET` orders with the deterministic client id the execution
  actor journaled in SQLite before calling `submit` (`journal_first`). A timeout, 5xx or
  lost reply (`RestUncertain`) is answered by looking the order up by that id; only an
  order the exchange has never seen is sent again, with the same id, so one intent is at
  most one order (Binance refuses a reused id with -4116).
- Acknowledgements carry no fills (BINANCE.md): fills, commissions and realised PnL come
  from the user data stream's `ORDER_TRADE_UPDATE`s, deduplicated (the stream may repeat
  an event), and `ACCOUNT_UPDATE`s set the balances (funding fees included).
- Protective orders live on the exchange: as soon as an entry has filled, its stop-loss
  and take-profit go to the Algo Order API as close-position `STOP_MARKET` /
  `TAKE_PROFIT_MARKET` with the client ids the entry carried, so the position stays
  protected while the daemon is down. When one fills, the other is cancelled. A moved
  stop (trailing) cancels the old stop first, then places the new one under an id minted
  from the step, so a position never keeps two stops.
- Exits (time stop, risk, `ctl flatten`) cancel the symbol's protective orders, then send
  a reduce-only `MARKET`.
Reconciliation (start, every user-stream reconnect) lives in `reconcile.py`.

Times: events carry exchange milliseconds; fills and trades are dated by the open time of
the bar they happened in, as the paper broker dates them, so a live run and a replay of
the same candles record the same entries and exits.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import msgspec
import trio

from qtraderd.core.enums import OrderStatus
from qtraderd.core.instruments import Instrument, quote_asset
from qtraderd.core.messages import AccountView, Amend, Bar, Fill, OrderUpdate, PositionView, Trade
from qtraderd.core.orders import client_order_id, rejection_reason
from qtraderd.venues.base import Order, VenueEvent
from qtraderd.venues.binance import trading
from qtraderd.venues.binance.account_setup import exchange_leverage, setup_account
from qtraderd.venues.binance.protective import DUPLICATE_ID, ProtectiveOrders, side_name
from qtraderd.venues.binance.reconcile import reconcile_live
from qtraderd.venues.binance.rest import BinanceAPIError, RestClient, RestError, RestUncertain
from qtraderd.venues.binance.userdata import (
    BinanceAccountUpdate,
    BinanceAlgoUpdate,
    BinanceOrderUpdate,
    BinanceTradeLite,
    BinanceUnknownEvent,
    ListenKeyExpired,
)
from qtraderd.venues.binance.userstream import UserStream, UserStreamReconnected
from qtraderd.venues.paper import _EVENT_TYPES, _POSITION_FIELDS, Position

log = logging.getLogger("qtraderd.binance")

S = OrderStatus
STATE_VERSION = 1
EVENT_BUFFER = 1024
# Binance order status -> our lifecycle (an acknowledged order is `accepted`)
STATUS = {"NEW": S.ACCEPTED, "PARTIALLY_FILLED": S.PARTIALLY_FILLED, "FILLED": S.FILLED,
          "CANCELED": S.CANCELLED, "EXPIRED": S.EXPIRED, "REJECTED": S.REJECTED,
          "EXPIRED_IN_MATCH": S.EXPIRED}
ALGO_STATUS = {"NEW": S.ACCEPTED, "CANCELED": S.CANCELLED, "EXPIRED": S.EXPIRED,
               "REJECTED": S.REJECTED}


class BinanceBroker(ProtectiveOrders):
    """Execution on a Binance USD-M account through `rest` (signed) and its user stream."""

    journal_first = True  # the execution actor commits an order's row before `submit`

    def __init__(self, rest: RestClient, instruments: dict[str, Instrument], *,
                 interval_ms: int, stream: UserStream | None = None,
                 working_type: str = "MARK_PRICE", unknown_positions: str = "halt",
                 leverage: float = 1.0, default_barriers: tuple[float, float] = (0.0, 0.0),
                 margin_type: str = "ISOLATED", run_id: int = 0) -> None:
        """`default_barriers`: (take-profit, stop-loss) fractions for positions adopted
        without an entry of ours; `run_id` mints reconcile's own client ids (the execution
        actor hands it over with the first reconcile, once the run is known)."""
        self.rest = rest
        self.default_barriers = default_barriers
        self.margin_type = margin_type
        self.run_id = run_id
        self.instruments = instruments
        self.interval_ms = interval_ms
        self.stream = stream
        self.working_type = working_type
        self.unknown_positions = unknown_positions
        self.leverage = leverage
        self.balances: dict[str, float] = {}
        self.positions: dict[str, Position] = {}
        self._orders: dict[str, OrderStatus] = {}  # open orders (market and protective)
        self._sent: dict[str, Order] = {}  # market orders sent and not yet finished
        self._fills: dict[str, list[float]] = {}  # cid -> [qty, notional, fee, pnl]
        self._seen: set[tuple[Any, ...]] = set()  # user events applied (duplicates skip)
        self._algo_actual: dict[str, str] = {}  # actualOrderId -> clientAlgoId
        self._synced: dict[str, int] = {}  # symbol -> exchange ms its position was read at
        self._trade_seq = 0
        self._events: list[VenueEvent] = []
        self._last_ts = 0
        self.alerts: list[str] = []  # reconcile findings that must halt trading
        self.repair = False  # something is unknown (no answer): reconcile at the next bar
        self.reconciles = 0
        self.duplicates = self.unknown_events = self.lookups = self.resent = 0
        self.protective_placed = self.protective_failed = 0
        # one thing at a time: a user event, a submit, a reconcile (Trio interleaves them
        # at every await; the books must never be half-updated by two of them)
        self._lock = trio.Lock()

    # -- the event pump ----------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Connect the user stream and apply its events until cancelled; after every
        reconnect, reconcile with the exchange (events may have been missed)."""
        if self.stream is None:
            task_status.started()
            await trio.sleep_forever()
        assert self.stream is not None
        send, recv = trio.open_memory_channel[Any](EVENT_BUFFER)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.stream.run, send)
            task_status.started()
            async for item in recv:
                try:
                    await self.apply(item)
                except RestError as exc:  # the exchange is unreachable: reconcile later
                    log.error("user event not fully applied (%s): reconcile at the next "
                              "bar", exc)
                    self.repair = True

    async def apply(self, item: Any) -> None:
        """One user-stream item: an order, algo or account update, or a reconnect."""
        async with self._lock:
            await self._apply(item)

    async def _apply(self, item: Any) -> None:
        if isinstance(item, BinanceOrderUpdate):
            await self._on_order(item)
        elif isinstance(item, BinanceAlgoUpdate):
            await self._on_algo(item)
        elif isinstance(item, BinanceAccountUpdate):
            self._on_account(item)
        elif isinstance(item, UserStreamReconnected):
            log.info("user stream reconnected (%s): reconciling", item.reason)
            await reconcile_live(self, None, ())
        elif isinstance(item, BinanceTradeLite | ListenKeyExpired):
            return  # TRADE_LITE repeats ORDER_TRADE_UPDATE; the stream handles expiry
        elif isinstance(item, BinanceUnknownEvent):
            self.unknown_events += 1
            log.warning("user event of unknown type ignored: %s", item.event_type)

    def _quote(self, symbol: str) -> str:
        ins = self.instruments.get(symbol)
        return ins.quote if ins is not None else quote_asset(symbol)

    def _bar_ts(self, ms: int) -> int:
        return ms - ms % self.interval_ms

    def _move(self, cid: str, symbol: str, ts: int, to: OrderStatus, reason: str) -> None:
        if self._orders.get(cid) == to and to is not S.PARTIALLY_FILLED:
            return
        if to.terminal:
            self._orders.pop(cid, None)
        else:
            self._orders[cid] = to
        self._events.append(OrderUpdate(cid, symbol, ts, str(to), reason))

    async def _on_order(self, ev: BinanceOrderUpdate) -> None:
        key = (ev.order_id, ev.execution_type, ev.status, ev.trade_id, ev.cum_qty)
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        cid = self._algo_actual.get(str(ev.order_id), ev.client_id)
        ts = self._bar_ts(ev.trade_time or ev.transaction_time)
        to = STATUS.get(ev.status)
        if ev.is_fill:
            await self._on_fill(cid, ev, ts)
        if to is not None and (cid in self._orders or cid in self._sent):
            self._move(cid, ev.symbol, ts, to, ev.execution_type.lower())
        if to is not None and to.terminal:
            self._sent.pop(cid, None)

    async def _on_fill(self, cid: str, ev: BinanceOrderUpdate, ts: int) -> None:
        side = 1 if ev.side == "BUY" else -1
        acc = self._fills.setdefault(cid, [0.0, 0.0, 0.0, 0.0])
        acc[0] += ev.last_qty
        acc[1] += ev.last_qty * ev.last_price
        acc[2] += ev.commission
        acc[3] += ev.realized_pnl
        order = self._sent.get(cid)
        pos = self.positions.get(ev.symbol)
        reducing = pos is not None and side != pos.side
        reason = self._reason(cid, pos, order, ev)
        self._events.append(Fill(cid, ev.symbol, ts, side, ev.last_qty, ev.last_price,
                                 ev.commission, "maker" if ev.maker else "taker", reason))
        if ev.trade_time and ev.trade_time <= self._synced.get(ev.symbol, 0):
            # a late event: the position reconcile read from the exchange already has it
            log.info("fill of %s already in the reconciled %s position", cid, ev.symbol)
            self._fills.pop(cid, None)
            return
        if not reducing:
            if pos is None:
                pos = self._open(cid, ev, side, ts, order)
            elif pos.order_id == cid:  # a partial entry fill after the first
                pos.qty = acc[0]
                pos.entry_price = acc[1] / acc[0]
                pos.entry_fee = acc[2]
            else:  # another order adding to the position (never sent so, but reported)
                total = pos.qty + ev.last_qty
                pos.entry_price = (pos.entry_price * pos.qty + ev.last_price * ev.last_qty) \
                    / total
                pos.qty = total
                pos.entry_fee += ev.commission
            if ev.status == "FILLED":
                self._fills.pop(cid, None)
                await self._protect(pos)
            return
        assert pos is not None
        if acc[0] + 1e-12 < pos.qty and ev.status != "FILLED":
            return  # more of the close is coming
        self._fills.pop(cid, None)
        price = acc[1] / acc[0]
        self._close(pos, ts, price, reason, cid, gross=acc[3], exit_fee=acc[2])
        await self._cancel_siblings(pos, cid, reason)

    def _reason(self, cid: str, pos: Position | None, order: Order | None,
                ev: BinanceOrderUpdate) -> str:
        if order is not None:
            return order.reason if order.purpose == "exit" else "entry"
        if pos is not None and cid == pos.sl_id:
            return "trailing_stop" if pos.trailing else "stop_loss"
        if pos is not None and cid == pos.tp_id:
            return "take_profit"
        if ev.execution_type == "CALCULATED" or ev.client_id.startswith("autoclose"):
            return "liquidation"
        if ev.client_id.startswith("adl_autoclose") or ev.status == "NEW_ADL":
            return "adl"
        return "exchange"

    def _open(self, cid: str, ev: BinanceOrderUpdate, side: int, ts: int,
              order: Order | None) -> Position:
        price = ev.last_price
        tp_pct = order.tp_pct if order else 0.0
        sl_pct = order.sl_pct if order else 0.0
        lev = order.leverage if order else self.leverage
        pos = Position(
            symbol=ev.symbol, quote=self._quote(ev.symbol), side=side, qty=ev.last_qty,
            entry_price=price, entry_ts=ts,
            stop_price=price * (1 - side * sl_pct) if sl_pct > 0 else 0.0,
            take_price=price * (1 + side * tp_pct) if tp_pct > 0 else 0.0,
            margin=ev.last_qty * price / max(lev, 1e-9), entry_fee=ev.commission,
            order_id=cid, sl_id=order.sl_id if order else "",
            tp_id=order.tp_id if order else "", best_price=price, mark_price=price)
        self.positions[ev.symbol] = pos
        return pos

    def _close(self, pos: Position, ts: int, price: float, reason: str, order_id: str, *,
               gross: float, exit_fee: float) -> None:
        """The round trip as the exchange reported it: its realised PnL and commissions."""
        fees = pos.entry_fee + exit_fee
        net = gross - fees
        self._trade_seq += 1
        self._events.append(Trade(
            id=self._trade_seq, symbol=pos.symbol, quote=pos.quote, side=pos.side,
            qty=pos.qty, entry_ts=pos.entry_ts, entry_price=pos.entry_price, exit_ts=ts,
            exit_price=price, gross_pnl=gross, fees=fees, net_pnl=net,
            return_pct=100.0 * net / pos.margin if pos.margin > 0 else 0.0,
            exit_reason=reason, bars_held=pos.bars_held))
        del self.positions[pos.symbol]
        self._events.append(_flat(pos.symbol))

    async def _on_algo(self, ev: BinanceAlgoUpdate) -> None:
        key = ("algo", ev.algo_id, ev.status, ev.actual_order_id)
        if key in self._seen:  # trailing stops may send NEW twice (BINANCE.md)
            self.duplicates += 1
            return
        self._seen.add(key)
        if ev.actual_order_id:  # triggered: it lives on as a regular order
            self._algo_actual[ev.actual_order_id] = ev.client_algo_id
        to = ALGO_STATUS.get(ev.status)
        if to is not None and ev.client_algo_id in self._orders:
            reason = rejection_reason(0, ev.reason) if to is S.REJECTED else "algo " + \
                ev.status.lower()
            self._move(ev.client_algo_id, ev.symbol, self._bar_ts(ev.transaction_time), to,
                       reason)

    def _on_account(self, ev: BinanceAccountUpdate) -> None:
        for b in ev.balances:
            self.balances[b.asset] = b.wallet
        if ev.reason == "FUNDING_FEE":
            log.info("funding fee: %s", ", ".join(f"{b.asset} {b.change:+.8f}"
                                                  for b in ev.balances))

    async def prepare(self, instruments: dict[str, Instrument]) -> None:
        """Start-up, before any actor runs: the traded symbols' instruments (the feed read
        exchangeInfo) and the account set up for them (position mode checked, margin type
        and leverage set; account_setup.AccountSetupError when it cannot trade)."""
        self.instruments = dict(instruments)
        await setup_account(self.rest, sorted(instruments),
                            leverage=exchange_leverage(self.leverage),
                            margin_type=self.margin_type)

    # -- the Broker interface ----------------------------------------------------------
    async def reconcile(self, saved: dict[str, Any] | None,
                        journal: tuple[tuple[str, str], ...] = (),
                        run_id: int | None = None) -> None:
        """Before the first step: the saved state, then the exchange's view of it
        (reconcile.py); `journal`: (client id, symbol) of orders SQLite holds as sent
        or about to be sent that the saved state may not know."""
        if run_id is not None:
            self.run_id = run_id
        async with self._lock:
            if saved:
                self.restore(saved)
            await reconcile_live(self, saved, journal)

    async def settle(self) -> None:
        """Before the daemon stops (its final state): the exchange reconciled once more,
        above all every open position's stop and take-profit. A stop that came between
        an entry's fill and its protection, or between a trailing stop's cancel and its
        replacement, would otherwise leave the position naked on the exchange for as long
        as the daemon is down; what reconcile finds is recorded with the final state."""
        async with self._lock:
            try:
                found = await reconcile_live(self, None, ())
            except RestError as exc:
                log.error("final reconcile failed (%s): the next start reconciles", exc)
                return
        log.info("final reconcile: %s", "; ".join(found) if found else "nothing to do")

    async def reconcile_now(self) -> list[str]:
        """`ctl reconcile`: the differences found (each also logged), and repaired."""
        async with self._lock:
            return await reconcile_live(self, None, ())

    async def on_bars(self, bars: tuple[Bar, ...]) -> None:
        """Marks, bars held and the favourable extreme from the closed bars (the trailing
        logic reads them); fills arrived on the user stream in between. After a request
        whose outcome stayed unknown (`repair`), a reconcile first."""
        if self.repair:
            await self._repair()
        ev = self._events
        for bar in bars:
            self._last_ts = bar.open_time
            pos = self.positions.get(bar.symbol)
            if pos is None:
                continue
            pos.bars_held += 1
            pos.mark_price = bar.close
            pos.best_price = (max(pos.best_price, bar.high) if pos.side > 0
                              else min(pos.best_price, bar.low))
            ev.append(pos.view())
        ev.extend(self.accounts())

    async def _repair(self) -> None:
        async with self._lock:
            try:
                await reconcile_live(self, None, ())
            except RestError as exc:
                log.error("reconcile after an unknown outcome failed (%s): next bar", exc)
                return
            self.repair = False

    def drain(self) -> list[VenueEvent]:
        out, self._events = self._events, []
        return out

    async def submit(self, order: Order) -> None:
        """Send a MARKET order under its journaled client id; one intent, one order."""
        async with self._lock:
            await self._submit(order)

    async def _submit(self, order: Order) -> None:
        inst = self.instruments.get(order.symbol)
        ts = self._last_ts
        if inst is None:
            self._move(order.client_id, order.symbol, ts, S.REJECTED,
                       f"no instrument for {order.symbol}")
            return
        self._orders[order.client_id] = S.NEW
        if order.purpose == "exit":
            pos = self.positions.get(order.symbol)
            if pos is None or pos.side == order.side:
                self._move(order.client_id, order.symbol, ts, S.EXPIRED,
                           "no open position to exit")
                return
            for cid in (pos.sl_id, pos.tp_id):  # first the protective orders, then close
                if cid and cid in self._orders:
                    await self._cancel_protective(cid, pos.symbol, f"exit ({order.reason})")
            order = msgspec.structs.replace(order, qty=pos.qty)
        elif order.symbol in self.positions:
            self._move(order.client_id, order.symbol, ts, S.EXPIRED, "position already open")
            return
        elif any(o.symbol == order.symbol and o.purpose == "entry"
                 for o in self._sent.values()):  # its fill is not reported yet
            self._move(order.client_id, order.symbol, ts, S.EXPIRED,
                       "an entry for the symbol is still in flight")
            return
        self._sent[order.client_id] = order
        await self._send(order, inst)

    async def _send(self, order: Order, inst: Instrument) -> None:
        ts = self._last_ts
        log.info("order sent: %s %s %s %.10g (%s)", order.client_id, order.symbol,
                 side_name(order.side), order.qty, order.reason)
        for attempt in (1, 2):
            try:
                await trading.place_market_order(
                    self.rest, inst, order.side, order.qty, client_order_id=order.client_id,
                    reduce_only=order.purpose == "exit", ref_price=self._ref(order))
            except trading.OrderTooSmall as exc:  # nothing sent: a denial, not a rejection
                self._sent.pop(order.client_id, None)
                self._move(order.client_id, order.symbol, ts, S.EXPIRED, f"not sent: {exc}")
                log.info("order not sent: %s %s", order.client_id, exc)
                return
            except BinanceAPIError as exc:
                if exc.code == DUPLICATE_ID and await self._lookup(order):
                    return
                self._sent.pop(order.client_id, None)
                self._move(order.client_id, order.symbol, ts, S.REJECTED,
                           rejection_reason(exc.code, exc.msg))
                log.warning("order rejected: %s %s: %s", order.symbol, order.client_id,
                            exc.msg)
                return
            except RestUncertain as exc:
                log.warning("order %s: %s", order.client_id, exc.failure)
                if await self._lookup(order):
                    return
                if attempt == 2:  # left `new`: the next step's repair looks it up
                    self.repair = True
                    return
                self.resent += 1
                log.warning("order %s never reached the exchange: sending it again under "
                            "the same id", order.client_id)
                continue
            self._move(order.client_id, order.symbol, ts, S.ACCEPTED, "acknowledged")
            return

    def _ref(self, order: Order) -> float:
        pos = self.positions.get(order.symbol)
        return pos.mark_price if pos is not None and pos.mark_price > 0 else order.ref_price

    async def _lookup(self, order: Order) -> bool:
        """Ask the exchange about `order` by its client id; True if it knows it (its
        state is applied), False if it never arrived."""
        self.lookups += 1
        info = await trading.query_order(self.rest, order.symbol,
                                         client_order_id=order.client_id)
        if info is None:
            return False
        to = STATUS.get(info.status, S.ACCEPTED)
        self._move(order.client_id, order.symbol, self._last_ts,
                   S.ACCEPTED if to is S.FILLED else to, "looked up by client id")
        return True  # its fill arrives (or arrived) on the user stream

    async def cancel(self, client_id: str) -> None:
        async with self._lock:
            await self._cancel(client_id)

    async def _cancel(self, client_id: str) -> None:
        pos = next((p for p in self.positions.values() if client_id in (p.sl_id, p.tp_id)),
                   None)
        if pos is not None:
            if await self._cancel_protective(client_id, pos.symbol, "cancel"):
                if client_id == pos.sl_id:
                    pos.stop_price = 0.0
                else:
                    pos.take_price = 0.0
                self._events.append(pos.view())
            return
        order = self._sent.get(client_id)
        if order is None:
            log.info("cancel ignored: %s is not an open order", client_id)
            return
        try:
            await trading.cancel_order(self.rest, order.symbol, client_order_id=client_id)
        except BinanceAPIError as exc:
            log.info("cancel of %s refused: %s", client_id, exc.msg)

    async def amend(self, amend: Amend, seq: int) -> None:
        """Move the protective levels: cancel the old order first, then place the new one
        under an id minted from `seq` (never two stops; a crash in between is repaired by
        the next reconcile, which recreates a missing stop)."""
        async with self._lock:
            await self._amend(amend, seq)

    async def _amend(self, amend: Amend, seq: int) -> None:
        pos = self.positions.get(amend.symbol)
        if pos is None:
            return
        run = pos.order_id.split("-", 1)[0].lstrip("q") or "0"
        if amend.reason == "trailing":
            pos.trailing = True
        for attr, id_attr, level, kind, purpose in (
                ("stop_price", "sl_id", amend.stop_price, "STOP_MARKET", "stop_loss"),
                ("take_price", "tp_id", amend.take_price, "TAKE_PROFIT_MARKET",
                 "take_profit")):
            old_level, old_id = getattr(pos, attr), getattr(pos, id_attr)
            if level == old_level:
                continue
            if old_id and old_id in self._orders and not await self._cancel_protective(
                    old_id, pos.symbol, f"replaced ({amend.reason})"):
                continue  # already triggered or gone: nothing to replace
            setattr(pos, attr, level)
            if level > 0:
                new_id = client_order_id(int(run), seq, pos.symbol, purpose)
                setattr(pos, id_attr, new_id)
                await self._place_protective(pos, new_id, level, kind)
        self._events.append(pos.view())

    def open_orders(self) -> list[tuple[str, str]]:
        return sorted((cid, str(st)) for cid, st in self._orders.items())

    # -- views and state ---------------------------------------------------------------
    def accounts(self) -> list[AccountView]:
        positions = [p.view() for _, p in sorted(self.positions.items())]
        out = []
        for quote in sorted(self.balances):
            mine = [p for p in positions if p.quote == quote]
            unreal = sum(p.unrealized for p in mine)
            out.append(AccountView(quote, self.balances[quote], self.balances[quote] + unreal,
                                   sum(p.qty * p.mark_price for p in mine),
                                   sum(p.margin for p in mine), len(mine)))
        return out

    def status(self) -> dict[str, Any]:
        return {"positions": len(self.positions), "open_orders": len(self._orders),
                "lookups": self.lookups, "resent": self.resent,
                "duplicate_events": self.duplicates, "unknown_events": self.unknown_events,
                "protective_placed": self.protective_placed,
                "protective_failed": self.protective_failed, "reconciles": self.reconciles,
                "alerts": list(self.alerts),
                **({"user_stream": self.stream.status()} if self.stream else {})}

    def export_state(self) -> dict[str, Any]:
        """What a restart needs besides the exchange's own view (which reconcile reads):
        the positions as qtraderd manages them (levels, protective ids, bars held,
        trailing), orders in flight and the trade sequence."""
        return {
            "version": STATE_VERSION, "venue": "binance",
            "balances": dict(self.balances),
            "positions": [asdict(p) for _, p in sorted(self.positions.items())],
            "sent": [msgspec.to_builtins(o) for o in self._sent.values()],
            "orders": {cid: str(st) for cid, st in self._orders.items()},
            "trade_seq": self._trade_seq, "last_ts": self._last_ts,
            "events": [[type(e).__name__, msgspec.to_builtins(e)] for e in self._events],
        }

    def restore(self, saved: dict[str, Any]) -> None:
        if saved.get("version") != STATE_VERSION or saved.get("venue") != "binance":
            raise ValueError("the saved broker state is not a Binance broker's (a paper run "
                             "cannot be resumed live: start a new state dir)")
        self.balances = {q: float(v) for q, v in saved["balances"].items()}
        self.positions = {d["symbol"]: Position(**{k: d[k] for k in _POSITION_FIELDS})
                          for d in saved["positions"]}
        self._sent = {o.client_id: o for o in (msgspec.convert(r, Order)
                                               for r in saved["sent"])}
        self._orders = {cid: OrderStatus(st) for cid, st in saved["orders"].items()}
        self._trade_seq = int(saved["trade_seq"])
        self._last_ts = int(saved["last_ts"])
        self._events = [msgspec.convert(raw, _EVENT_TYPES[name]) for name, raw in saved["events"]]


def _flat(symbol: str) -> PositionView:
    return PositionView(symbol, "", 0, 0.0, 0.0, 0, 0.0, 0.0, 0.0, 0, 0.0, False, 0.0, 0.0)
