"""The live broker's protective orders: stop-loss and take-profit on the Algo Order API.

A mixin of BinanceBroker (broker.py), apart so the broker stays readable: placing them
right after an entry fills (close-position STOP_MARKET / TAKE_PROFIT_MARKET under the
client ids the entry carried), looking one up after an uncertain answer, cancelling one or
a filled one's sibling, and closing at market when a level is already crossed or the
exchange will not take the stop. It uses the broker's REST client, instruments, order
book (`_orders`, `_move`) and `_submit`.
"""

from __future__ import annotations

import logging
from typing import Any

from qtraderd.core.enums import OrderStatus
from qtraderd.core.orders import rejection_reason
from qtraderd.venues.base import Order
from qtraderd.venues.binance import algo
from qtraderd.venues.binance.rest import BinanceAPIError, RestUncertain
from qtraderd.venues.paper import Position

log = logging.getLogger("qtraderd.binance")

S = OrderStatus
DUPLICATE_ID = -4116
WOULD_TRIGGER = -2021  # a stop whose trigger the price has already crossed


def side_name(side: int) -> str:
    return "BUY" if side > 0 else "SELL"


class ProtectiveOrders:
    """Stop-loss and take-profit handling for BinanceBroker (see the module docstring)."""

    rest: Any
    instruments: dict[str, Any]
    working_type: str
    _orders: dict[str, OrderStatus]
    _last_ts: int
    repair: bool
    protective_placed: int
    protective_failed: int
    lookups: int
    resent: int

    def _move(self, cid: str, symbol: str, ts: int, to: OrderStatus, reason: str) -> None:
        raise NotImplementedError

    async def _submit(self, order: Order) -> None:
        raise NotImplementedError

    async def _protect(self, pos: Position) -> None:
        """Place the position's missing stop-loss and take-profit on the exchange."""
        for cid, level, kind in ((pos.sl_id, pos.stop_price, "STOP_MARKET"),
                                 (pos.tp_id, pos.take_price, "TAKE_PROFIT_MARKET")):
            if cid and level > 0 and cid not in self._orders:
                await self._place_protective(pos, cid, level, kind)

    async def _place_protective(self, pos: Position, cid: str, level: float,
                                kind: str) -> None:
        inst = self.instruments[pos.symbol]
        self._move(cid, pos.symbol, self._last_ts, S.NEW, "protective")
        for attempt in (1, 2):
            try:
                await algo.place_algo_order(
                    self.rest, inst, side_name(-pos.side), kind, client_algo_id=cid,
                    close_position=True, trigger_price=level,
                    working_type=self.working_type)
            except RestUncertain:
                self.lookups += 1
                if await self._algo_exists(cid):
                    break
                if attempt == 2:  # still unknown: the next step's repair looks again
                    self.repair = True
                    self._orders.pop(cid, None)
                    return
                self.resent += 1
                continue
            except BinanceAPIError as exc:
                if exc.code == DUPLICATE_ID and await self._algo_exists(cid):
                    break
                if exc.code == WOULD_TRIGGER:  # not a fault: the market got there first
                    self._move(cid, pos.symbol, self._last_ts, S.CANCELLED,
                               "level already crossed: closed at market")
                    reason = "take_profit" if kind != "STOP_MARKET" else (
                        "trailing_stop" if pos.trailing else "stop_loss")
                    await self._close_now(pos, reason, cid + "X")
                    return
                self.protective_failed += 1
                self._move(cid, pos.symbol, self._last_ts, S.REJECTED,
                           rejection_reason(exc.code, exc.msg))
                log.warning("order rejected: %s %s (%s at %.10g, position %+d at %.10g): "
                            "%s", pos.symbol, cid, kind, level, pos.side, pos.entry_price,
                            exc.msg)
                if kind == "STOP_MARKET":  # never hold a position the exchange won't stop
                    await self._close_now(pos, "no_stop", cid + "X")
                return
            break
        self.protective_placed += 1
        self._move(cid, pos.symbol, self._last_ts, S.ACCEPTED, "protective")

    async def _algo_exists(self, cid: str) -> bool:
        try:
            await algo.query_algo_order(self.rest, client_algo_id=cid)
        except BinanceAPIError:
            return False
        return True

    async def _cancel_protective(self, cid: str, symbol: str, why: str) -> bool:
        """Cancel one protective order; False if the exchange no longer has it open."""
        try:
            await algo.cancel_algo_order(self.rest, client_algo_id=cid)
        except BinanceAPIError as exc:
            log.info("protective order %s not cancelled (%s): already gone", cid, exc.msg)
            self._orders.pop(cid, None)
            return False
        self._move(cid, symbol, self._last_ts, S.CANCELLED, why)
        return True

    async def _cancel_siblings(self, pos: Position, filled: str, reason: str) -> None:
        for cid in (pos.sl_id, pos.tp_id):
            if cid and cid != filled and cid in self._orders:
                await self._cancel_protective(cid, pos.symbol, f"position closed ({reason})")

    async def _close_now(self, pos: Position, reason: str, cid: str) -> None:
        """A reduce-only MARKET the broker decides itself (a level already crossed, a
        reconcile flatten): its `new` is reported like any order's."""
        self._move(cid, pos.symbol, self._last_ts, S.NEW, reason)
        order = Order(cid, pos.symbol, -pos.side, pos.qty, "exit", reason, self._last_ts)
        await self._submit(order)
