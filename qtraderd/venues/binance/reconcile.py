"""Reconciliation: the live broker's view made to agree with the exchange's.

Runs before the first step (after the saved state is restored), after every user-stream
reconnect (events may have been missed) and on `ctl reconcile`. In order:
1. Orders in flight — those the saved state was sending and those SQLite journaled after
   the last checkpoint — are looked up by client id: found, their state applies (a fill
   shows up in the positions below); never seen by the exchange, they expire ("never
   arrived"). Nothing is resent: the decision behind it is stale by now.
2. Balances from the account.
3. Positions (`positionRisk`) against the local ones:
   - local but gone on the exchange: closed while we were not looking; the protective
     order that did it (its algo order's `actualOrderId`) gives the reason and price;
   - on the exchange but not local: ours if an entry we sent filled (adopted with its
     levels); otherwise a stranger, handled by `reconcile.unknown_positions`: `halt`
     (default: risk goes HALTED with the reason), `adopt` (protected with the default
     barriers and managed), `flatten` (closed with a reduce-only MARKET);
   - on both with different quantities: the exchange's quantity is taken.
4. Protective orders: every open position keeps exactly one stop and one take-profit on
   the Algo Order API (a missing one is recreated, any other for the symbol cancelled);
   algo orders for symbols without a position (orphans) are cancelled.
Each finding is one log line starting `reconcile:`; `findings` are kept for `ctl`.
"""

from __future__ import annotations

import logging
from typing import Any

from qtraderd.core.enums import OrderStatus
from qtraderd.core.messages import Fill
from qtraderd.venues.binance import algo, trading
from qtraderd.venues.binance.rest import BinanceAPIError
from qtraderd.venues.paper import Position

BinanceBroker = Any  # venues.binance.broker's (which imports this module): its attributes

log = logging.getLogger("qtraderd.binance")

S = OrderStatus
POLICIES = ("halt", "adopt", "flatten")
PROTECTIVE_TYPES = ("STOP_MARKET", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET")


def _note(b: BinanceBroker, findings: list[str], text: str) -> None:
    findings.append(text)
    log.warning("reconcile: %s", text)


async def reconcile_live(b: BinanceBroker, saved: dict[str, Any] | None,
                         journal: tuple[tuple[str, str], ...]) -> list[str]:
    """Bring `b` in line with the exchange; returns the differences found (also logged)."""
    b.reconciles += 1
    findings: list[str] = []
    filled_entries = await _orders_in_flight(b, journal, findings)
    for bal in await trading.account_balances(b.rest):
        b.balances[bal.asset] = bal.wallet_balance
    risk = await trading.position_risk(b.rest)
    for p in risk:  # fills up to here are in these positions (a late event must not add)
        b._synced[p.symbol] = max(b._synced.get(p.symbol, 0), p.update_time)
    exchange = {p.symbol: p for p in risk if p.position_amt != 0.0}
    algos = await algo.open_algo_orders(b.rest)
    for symbol, pos in list(b.positions.items()):
        ex = exchange.get(symbol)
        if ex is None or (ex.position_amt > 0) != (pos.side > 0):
            # gone, or the other way round: closed while away (and perhaps an entry of
            # ours or a stranger's opened since, handled below as a new position)
            await _closed_while_away(b, pos, findings)
    for symbol, ex in sorted(exchange.items()):
        pos = b.positions.get(symbol)
        side = 1 if ex.position_amt > 0 else -1
        qty = abs(ex.position_amt)
        if pos is None:
            order = filled_entries.get(symbol)
            if order is not None:
                pos = _position(b, symbol, side, qty, ex.entry_price, order.client_id,
                                order.tp_pct, order.sl_pct, order.sl_id, order.tp_id)
                _note(b, findings, f"{symbol}: entry {order.client_id} filled while away: "
                                   f"{side:+d} {qty:g} at {ex.entry_price:g} adopted")
            else:
                await _stranger(b, symbol, side, qty, ex.entry_price, findings)
                continue
        elif abs(pos.qty - qty) > 1e-12 * max(1.0, qty):
            _note(b, findings, f"{symbol}: position {pos.side * pos.qty:+g} here, "
                               f"{side * qty:+g} on the exchange: the exchange's taken")
            pos.qty = qty
        b.positions[symbol] = pos
    await _protection(b, algos, set(exchange), findings)
    for _, pos in sorted(b.positions.items()):
        b._events.append(pos.view())
    b._events.extend(b.accounts())
    if not findings:
        log.info("reconcile: exchange and local state agree (%d positions, %d open orders)",
                 len(b.positions), len(b._orders))
    return findings


async def _orders_in_flight(b: BinanceBroker, journal: tuple[tuple[str, str], ...],
                            findings: list[str]) -> dict[str, Any]:
    """Look up every market order that may be in flight; entries that filled, by symbol."""
    todo = {cid: o.symbol for cid, o in b._sent.items()}
    for cid, symbol in journal:
        todo.setdefault(cid, symbol)
    filled: dict[str, Any] = {}
    for cid, symbol in sorted(todo.items()):
        b.lookups += 1
        info = await trading.query_order(b.rest, symbol, client_order_id=cid)
        order = b._sent.get(cid)
        if info is None:
            b._orders[cid] = b._orders.get(cid, S.NEW)
            b._move(cid, symbol, b._last_ts, S.EXPIRED, "never arrived")
            b._sent.pop(cid, None)
            _note(b, findings, f"{cid}: never reached the exchange; not resent")
            continue
        to = {"NEW": S.ACCEPTED, "PARTIALLY_FILLED": S.PARTIALLY_FILLED,
              "FILLED": S.FILLED, "CANCELED": S.CANCELLED}.get(info.status, S.EXPIRED)
        if to is S.FILLED and cid not in b._orders and order is None:
            b._orders[cid] = S.NEW  # journaled after the last checkpoint
        if to is S.FILLED and (order is None or order.purpose == "entry"):
            filled[symbol] = order or _journaled(b, cid, symbol)
        if to is S.FILLED:
            side = 1 if info.side == "BUY" else -1
            b._events.append(Fill(cid, symbol, b._bar_ts(info.update_time), side,
                                  info.executed_qty, info.avg_price, 0.0, "taker",
                                  order.reason if order and order.purpose == "exit"
                                  else "entry"))
        b._move(cid, symbol, b._last_ts, to, "reconciled by client id")
        if to.terminal:
            b._sent.pop(cid, None)
    return filled


def _journaled(b: BinanceBroker, cid: str, symbol: str) -> Any:
    """An entry known only from SQLite's journal: its protective ids follow from its id;
    its levels are the configured default barriers."""
    from qtraderd.venues.base import Order

    stem = cid[: -len("-E")] if cid.endswith("-E") else cid
    tp_pct, sl_pct = b.default_barriers
    return Order(cid, symbol, 0, 0.0, "entry", "signal", b._last_ts, tp_pct, sl_pct,
                 b.leverage, f"{stem}-TP", f"{stem}-SL")


def _position(b: BinanceBroker, symbol: str, side: int, qty: float, price: float,
              order_id: str, tp_pct: float, sl_pct: float, sl_id: str, tp_id: str
              ) -> Position:
    return Position(
        symbol=symbol, quote=b._quote(symbol), side=side, qty=qty, entry_price=price,
        entry_ts=b._last_ts,
        stop_price=price * (1 - side * sl_pct) if sl_pct > 0 else 0.0,
        take_price=price * (1 + side * tp_pct) if tp_pct > 0 else 0.0,
        margin=qty * price / max(b.leverage, 1e-9), entry_fee=0.0, order_id=order_id,
        sl_id=sl_id, tp_id=tp_id, best_price=price, mark_price=price)


async def _closed_while_away(b: BinanceBroker, pos: Position, findings: list[str]) -> None:
    """The position is gone on the exchange: find which protective order closed it."""
    price, reason, by = pos.mark_price, "exchange", ""
    for cid, why in ((pos.sl_id, "trailing_stop" if pos.trailing else "stop_loss"),
                     (pos.tp_id, "take_profit")):
        if not cid:
            continue
        try:
            a = await algo.query_algo_order(b.rest, client_algo_id=cid)
        except BinanceAPIError:
            continue
        if a.actual_order_id is not None and a.status in ("TRIGGERED", "FINISHED"):
            price, reason, by = a.avg_price or a.trigger_price, why, cid
            break
    gross = pos.side * pos.qty * (price - pos.entry_price)
    if by:
        b._orders.setdefault(by, S.ACCEPTED)
        b._move(by, pos.symbol, b._last_ts, S.FILLED, reason)
    b._close(pos, b._last_ts, price, reason, by or pos.order_id, gross=gross, exit_fee=0.0)
    for cid in (pos.sl_id, pos.tp_id):
        if cid and cid != by and cid in b._orders:
            await b._cancel_protective(cid, pos.symbol, f"position closed ({reason})")
    _note(b, findings, f"{pos.symbol}: closed on the exchange while away ({reason} at "
                       f"{price:g})")


async def _stranger(b: BinanceBroker, symbol: str, side: int, qty: float, price: float,
                    findings: list[str]) -> None:
    policy = b.unknown_positions
    text = f"{symbol}: unknown position {side * qty:+g} at {price:g} (policy {policy})"
    _note(b, findings, text)
    if symbol not in b.instruments:
        b.alerts.append(f"reconcile: {text}; not a traded symbol")
        return
    if policy == "adopt":
        run = b.run_id
        tp_pct, sl_pct = b.default_barriers
        stem = f"q{run}-R{b.reconciles}-{symbol}"
        b.positions[symbol] = _position(b, symbol, side, qty, price, f"{stem}-A", tp_pct,
                                        sl_pct, f"{stem}-SL", f"{stem}-TP")
    elif policy == "flatten":
        pos = _position(b, symbol, side, qty, price, "", 0.0, 0.0, "", "")
        b.positions[symbol] = pos
        await b._close_now(pos, "reconcile_flatten", f"q{b.run_id}-R{b.reconciles}-"
                                                     f"{symbol}-X")
    else:
        b.alerts.append(f"reconcile: {text}")


async def _protection(b: BinanceBroker, algos: list[Any], held: set[str],
                      findings: list[str]) -> None:
    """Exactly one stop and one take-profit per position we manage; no orphans (algo
    orders on a symbol without any position). A stranger's position (`held` on the
    exchange, not managed here) keeps whatever protects it."""
    by_symbol: dict[str, list[Any]] = {}
    for a in algos:
        by_symbol.setdefault(a.symbol, []).append(a)
    for symbol, found in sorted(by_symbol.items()):
        pos = b.positions.get(symbol)
        if pos is None and symbol in held:
            continue
        mine = {pos.sl_id, pos.tp_id} - {""} if pos is not None else set()
        for a in found:
            if a.client_algo_id in mine:
                if a.client_algo_id not in b._orders:  # placed after the last checkpoint
                    b._move(a.client_algo_id, symbol, b._last_ts, S.NEW, "protective")
                b._move(a.client_algo_id, symbol, b._last_ts, S.ACCEPTED,
                        "found on the exchange")
                continue
            why = "orphan (no position)" if pos is None else "not this position's"
            _note(b, findings, f"{symbol}: algo order {a.client_algo_id} {why}: cancelled")
            try:
                await algo.cancel_algo_order(b.rest, client_algo_id=a.client_algo_id)
            except BinanceAPIError as exc:
                log.info("reconcile: cancel of %s refused: %s", a.client_algo_id, exc.msg)
            b._orders.pop(a.client_algo_id, None)
    for symbol, pos in sorted(b.positions.items()):
        present = {a.client_algo_id for a in by_symbol.get(symbol, ())}
        for cid, level, kind in ((pos.sl_id, pos.stop_price, "STOP_MARKET"),
                                 (pos.tp_id, pos.take_price, "TAKE_PROFIT_MARKET")):
            if cid and level > 0 and cid not in present:
                if cid in b._orders:  # the old one is gone: it ends before its successor
                    b._move(cid, symbol, b._last_ts, S.CANCELLED, "missing on the exchange")
                _note(b, findings, f"{symbol}: {kind} {cid} missing: placed again")
                await b._place_protective(pos, cid, level, kind)
