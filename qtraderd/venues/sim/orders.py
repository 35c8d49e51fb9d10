"""The simulator's regular order endpoints (`/fapi/v1/order`: POST, GET, DELETE), MARKET
only, over the signed `Account` of account.py.

Why MARKET only: since Binance's 2025 algo-order migration the conditional types
(STOP_MARKET, TAKE_PROFIT_MARKET, STOP, TAKE_PROFIT, TRAILING_STOP_MARKET) are refused here
with -4120 and live on `/fapi/v1/algoOrder` (algo.py); the daemon sends no LIMIT orders.

A MARKET order fills at once, whole, at the last price (`Account.mark_price`) moved by
`slippage_bps` against the taker (buys pay up, sells get less; rounded to the tick the same
way), paying `taker_fee` of the notional. One-way mode: the position is a net amount with a
weighted entry price; the reducing part realises PnL into the quote balance, a flip opens
the rest at the fill price. The answer is Binance's 2026 acknowledgement: status NEW,
executedQty 0, no avgPrice/cumQuote (BINANCE.md: "Order acknowledgements no longer carry
fills"); the order is FILLED in the book before the answer leaves, so a GET right after the
acknowledgement sees the fill.

Every POST, accepted or rejected (signature and timestamp failures included), is appended
to `Account.orders` as `/sim/state` shows it: clientOrderId, symbol, side, type,
reduceOnly, closePosition, status (FILLED, or REJECTED with code and msg), time (exchange
ms); accepted ones also carry orderId and their payload.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from qtraderd.venues.sim.account import Account, Auth, Params, Position
from qtraderd.venues.sim.candles import Series
from qtraderd.venues.sim.faults import Faults
from qtraderd.venues.sim.rest import ApiError, Rest
from qtraderd.venues.sim.transport import Request, Response
from qtraderd.venues.sim.userstream import market_fill_events

DEFAULT_SLIPPAGE_BPS = 2.0
DEFAULT_TAKER_FEE = 0.0005
MAX_QTY = 1_000_000.0  # exchangeInfo's LOT_SIZE maxQty
ALGO_TYPES = ("STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT",
              "TRAILING_STOP_MARKET")
CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
NUMBER = re.compile(r"^[0-9]{1,20}(\.[0-9]{1,20})?$")
FIRST_ORDER_ID = 8_389_765_000
FIRST_TRADE_ID = 1_000_000
# Binance's answer when the order reached the matching engine but no result came back in
# time (code -1000 UNKNOWN, HTTP 503): the execution status is unknown.
UNKNOWN_ERROR = {"code": -1000,
                 "msg": "Unknown error, please check your request or try again later."}


def uncertain_reply(faults: Faults | None, row: dict[str, object]) -> Response | None:
    """The trading faults, rolled for an order already booked (`row`: its `/sim/state`
    record, marked here): `lost_reply` gives a reply never sent (`"reply_lost": true`),
    `order_5xx` a 503 -1000 (`"reply_status": 503`); None: answer normally."""
    if faults is None:
        return None
    if faults.roll("lost_reply"):
        row["reply_lost"] = True
        return Response.dropped()
    if faults.roll("order_5xx"):
        row["reply_status"] = 503
        return Response.json(503, UNKNOWN_ERROR)
    return None


def _missing(name: str) -> ApiError:
    return ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                                f"or malformed.")


def _bool(params: Params, name: str) -> bool:
    text = params.get(name, "false").lower()
    if text not in ("true", "false"):
        raise ApiError(400, -1130, f"Data sent for parameter '{name}' is not valid.")
    return text == "true"


def _on_step(x: float, step: float) -> bool:
    n = x / step
    return abs(n - round(n)) <= 1e-9 * max(1.0, abs(n))


def fill_price(mark: float, side: str, slippage_bps: float, tick: float) -> float:
    """The taker's price: mark moved `slippage_bps` against them, rounded to the tick away
    from them (so a buy never pays less than mark plus slippage)."""
    sign = 1.0 if side == "BUY" else -1.0
    raw = mark * (1.0 + sign * slippage_bps / 10_000.0)
    ticks = raw / tick
    ticks = math.ceil(ticks - 1e-9) if side == "BUY" else math.floor(ticks + 1e-9)
    return max(tick, ticks * tick)


def apply_fill(p: Position, qty: float, price: float) -> float:
    """Move one-way position `p` by signed `qty` at `price`; returns the realised PnL."""
    a, e = p.amount, p.entry_price
    if a == 0 or (a > 0) == (qty > 0):
        new = a + qty
        p.entry_price = (a * e + qty * price) / new
        p.amount = new
        return 0.0
    closed = min(abs(qty), abs(a))
    pnl = closed * (price - e) * (1.0 if a > 0 else -1.0)
    new = a + qty
    if abs(new) < 1e-12:
        p.amount, p.entry_price = 0.0, 0.0
    elif (new > 0) == (a > 0):
        p.amount = new
    else:
        p.amount, p.entry_price = new, price
    return pnl


class OrderApi:
    """`POST/GET/DELETE /fapi/v1/order` over one `Account`, served through
    `Rest.add_route` (weights, faults and error bodies are Rest's)."""

    def __init__(self, rest: Rest, account: Account, auth: Auth, *,
                 slippage_bps: float = DEFAULT_SLIPPAGE_BPS,
                 taker_fee: float = DEFAULT_TAKER_FEE,
                 publish: Callable[[dict[str, Any]], None] | None = None,
                 faults: Faults | None = None) -> None:
        """`publish`: where the fills' user data events go (userstream.UserEvents);
        `faults`: lost_reply / order_5xx strike accepted POSTs (`uncertain_reply`)."""
        self.account, self.auth = account, auth
        self.faults = faults
        self.slippage_bps, self.taker_fee = slippage_bps, taker_fee
        self.publish = publish
        self.next_id = FIRST_ORDER_ID
        self.next_trade_id = FIRST_TRADE_ID
        rest.add_route("POST", "/fapi/v1/order", self.post_order, 0)
        rest.add_route("GET", "/fapi/v1/order", self._signed(self.get_order), 1)
        rest.add_route("DELETE", "/fapi/v1/order", self._signed(self.cancel_order), 1)

    def _signed(self, handler: Callable[[Request, Params], Awaitable[Response]]
                ) -> Callable[[Request], Awaitable[Response]]:
        async def route(req: Request) -> Response:
            return await handler(req, self.auth.verify(req))
        return route

    # ------------------------------------------------------------------- placing

    async def post_order(self, req: Request) -> Response:
        """Verify, validate, fill; record the request whatever its outcome."""
        now = self.account.clock.now_ms()
        try:
            params = self.auth.verify(req)
        except ApiError as exc:
            self._record(_unverified(req), now, exc)
            raise
        try:
            payload = self._place(params, now)
        except ApiError as exc:
            self._record(params, now, exc)
            raise
        row = next(o for o in reversed(self.account.orders) if o.get("payload") is payload)
        if (fault := uncertain_reply(self.faults, row)) is not None:
            return fault
        ack = {k: v for k, v in payload.items() if k not in ("avgPrice", "cumQuote")}
        ack.update(status="NEW", executedQty=self.account.series(str(payload["symbol"])
                                                                 ).qty(0.0),
                   updateTime=now)
        return Response.json(200, ack)

    def place_market(self, params: Params, now: int, at: float | None = None
                     ) -> dict[str, object]:
        """Place a MARKET order from already-verified `params` (a triggered algo order,
        algo.py) through the same checks and fill as a POST; recorded whatever the
        outcome. `at`: the price it executes at instead of the last price (a stop the
        path crossed between two updates fills at its level). Returns the filled order's
        payload; raises ApiError."""
        try:
            return self._place(params, now, at)
        except ApiError as exc:
            self._record(params, now, exc)
            raise

    def _record(self, params: Params, now: int, exc: ApiError) -> None:
        self.account.orders.append({
            "clientOrderId": params.get("newClientOrderId", ""),
            "symbol": params.get("symbol", ""), "side": params.get("side", ""),
            "type": params.get("type", ""),
            "reduceOnly": params.get("reduceOnly", "").lower() == "true",
            "closePosition": params.get("closePosition", "").lower() == "true",
            "status": "REJECTED", "code": exc.code, "msg": exc.msg, "time": now})

    def _place(self, params: Params, now: int, at: float | None = None) -> dict[str, object]:
        acc = self.account
        symbol = params.get("symbol", "")
        if not symbol:
            raise _missing("symbol")
        s = acc.series(symbol)
        side = params.get("side", "")
        if not side:
            raise _missing("side")
        if side not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        otype = params.get("type", "")
        if not otype:
            raise _missing("type")
        if otype in ALGO_TYPES:
            raise ApiError(400, -4120, "Order type not supported for this endpoint. Please "
                                       "use the Algo Order API endpoints instead.")
        if otype != "MARKET":
            raise ApiError(400, -1116, "Invalid orderType.")
        if params.get("newOrderRespType", "ACK") not in ("ACK", "RESULT"):
            raise ApiError(400, -1130, "Data sent for parameter 'newOrderRespType' is not "
                                       "valid.")
        reduce_only = _bool(params, "reduceOnly")
        if _bool(params, "closePosition"):
            raise ApiError(400, -1106, "Parameter 'closePosition' sent when not required.")
        pos_side = params.get("positionSide", "BOTH")
        if acc.dual_side or pos_side != "BOTH":
            raise ApiError(400, -4061, "Order's position side does not match user's "
                                       "setting. (exchange-sim trades one-way mode only)")
        cid = params.get("newClientOrderId") or f"sim-{self.next_id}"
        if not CLIENT_ID.match(cid):
            raise ApiError(400, -4015, "Client order id is not valid.")
        if any(o.get("clientOrderId") == cid and "payload" in o for o in acc.orders):
            raise ApiError(400, -4116, "ClientOrderId is duplicated.")
        qty = self._quantity(params, s)
        mark = acc.mark_price(symbol) if at is None else at
        price = fill_price(mark, side, self.slippage_bps, s.tick_size)
        pos = acc.positions.setdefault((symbol, "BOTH"), Position(symbol))
        signed = qty if side == "BUY" else -qty
        reduces = pos.amount != 0 and (pos.amount > 0) != (signed > 0)
        if reduce_only:
            if not reduces:
                raise ApiError(400, -2022, "ReduceOnly Order is rejected.")
            qty = min(qty, abs(pos.amount))
            signed = qty if side == "BUY" else -qty
        elif qty * price < s.min_notional:
            raise ApiError(400, -4164, f"Order's notional must be no smaller than "
                                       f"{s.min_notional:g} (unless you choose reduce only).")
        opening = qty - (min(qty, abs(pos.amount)) if reduces else 0.0)
        lev = acc.settings[symbol].leverage
        available = acc.available(s.quote)
        if opening * price / lev + qty * price * self.taker_fee > available + 1e-9:
            raise ApiError(400, -2019, "Margin is insufficient.")
        pnl = apply_fill(pos, signed, price)
        fee = qty * price * self.taker_fee
        acc.balances[s.quote] = acc.balances.get(s.quote, 0.0) + pnl - fee
        pos.update_time = acc.balance_time = now
        order_id, self.next_id = self.next_id, self.next_id + 1
        payload: dict[str, object] = {
            "orderId": order_id, "symbol": symbol, "status": "FILLED",
            "clientOrderId": cid, "price": s.price(0.0), "avgPrice": s.price(price),
            "origQty": s.qty(qty), "executedQty": s.qty(qty),
            "cumQuote": f"{qty * price:.8f}", "timeInForce": "GTC", "type": "MARKET",
            "reduceOnly": reduce_only, "closePosition": False, "side": side,
            "positionSide": "BOTH", "stopPrice": s.price(0.0),
            "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": "MARKET",
            "priceMatch": "NONE", "selfTradePreventionMode": "NONE", "goodTillDate": 0,
            "time": now, "updateTime": now}
        acc.orders.append({
            "clientOrderId": cid, "symbol": symbol, "side": side, "type": "MARKET",
            "reduceOnly": reduce_only, "closePosition": False, "status": "FILLED",
            "time": now, "orderId": order_id, "executedQty": s.qty(qty),
            "avgPrice": s.price(price), "realizedPnl": f"{pnl:.8f}",
            "commission": f"{fee:.8f}", "payload": payload})
        trade_id, self.next_trade_id = self.next_trade_id, self.next_trade_id + 1
        if self.publish is not None:
            for event in market_fill_events(acc, payload, now, fee=fee, pnl=pnl,
                                            trade_id=trade_id):
                self.publish(event)
        return payload

    def _quantity(self, params: Params, s: Series) -> float:
        text = params.get("quantity", "")
        if not text:
            raise _missing("quantity")
        if not NUMBER.match(text):
            raise ApiError(400, -1100, "Illegal characters found in parameter 'quantity'; "
                                       "legal range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.")
        qty = float(text)
        if qty <= 0:
            raise ApiError(400, -4003, "Quantity less than or equal to zero.")
        if not _on_step(qty, s.step_size):
            raise ApiError(400, -1111, "Precision is over the maximum defined for this "
                                       "asset.")
        if qty < s.min_qty - 1e-12:
            raise ApiError(400, -4004, "Quantity less than min quantity.")
        if qty > MAX_QTY:
            raise ApiError(400, -4005, "Quantity greater than max quantity.")
        return qty

    # ------------------------------------------------------------------- querying

    def _find(self, params: Params) -> dict[str, object] | None:
        symbol = params.get("symbol", "")
        if not symbol:
            raise _missing("symbol")
        self.account.series(symbol)
        oid, cid = params.get("orderId", ""), params.get("origClientOrderId", "")
        if not oid and not cid:
            raise ApiError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be "
                                       "sent, but both were empty/null!")
        for o in reversed(self.account.orders):
            p = o.get("payload")
            if not isinstance(p, dict) or p["symbol"] != symbol:
                continue
            if (oid and str(p["orderId"]) == oid) or (not oid and p["clientOrderId"] == cid):
                return p
        return None

    async def get_order(self, req: Request, params: Params) -> Response:
        found = self._find(params)
        if found is None:
            raise ApiError(400, -2013, "Order does not exist.")
        return Response.json(200, found)

    async def cancel_order(self, req: Request, params: Params) -> Response:
        """Only MARKET orders exist here and they fill at once: nothing is cancellable."""
        self._find(params)
        raise ApiError(400, -2011, "Unknown order sent.")


def _unverified(req: Request) -> Params:
    """The parameters of a request that failed its checks, for the record only."""
    body = req.body.decode("latin-1") if req.body else ""
    params = dict(parse_qsl(req.raw_query, keep_blank_values=True))
    params.update(parse_qsl(body, keep_blank_values=True))
    return params
