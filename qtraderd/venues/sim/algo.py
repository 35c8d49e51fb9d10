"""The simulator's Algo Order API (`/fapi/v1/algoOrder`, `openAlgoOrders`,
`algoOpenOrders`) and the triggering of algo orders on its price path.

Why: since Binance's 2025-12-09 migration the exchange-side stops qtraderd relies on
(STOP_MARKET, TAKE_PROFIT_MARKET, TRAILING_STOP_MARKET) live only here; `/fapi/v1/order`
answers -4120 for them (orders.py). The daemon's protection, crash safety and
reconciliation are tested against this module, so it keeps Binance's shapes and codes.

Lifecycle (Binance's algo statuses): NEW on placement; when the mark price (= the last
price the simulator serves, `Account.mark_price`) crosses the trigger: TRIGGERING, then a
regular MARKET order with a new orderId goes through `OrderApi.place_market` (the same
checks and fill as a POST; it shows in `orders`), the algo order records it as
`actualOrderId` and becomes TRIGGERED, then FINISHED with the fill's average price and
quantity. A reduce-only / close-position order with nothing to close at that moment
EXPIRES (reason "Reduce Only reject"); any other refusal of the MARKET order leaves it
REJECTED with the refusal's message. CANCELED by `DELETE`. Each change is published as an
ALGO_UPDATE user event (`algo_update_event`, the shape of user_data/algo_update_*.json)
through the injectable `publish`.

Trigger rules: STOP_MARKET SELL at price <= trigger, BUY at >= trigger; TAKE_PROFIT_MARKET
the other way round; TRAILING_STOP_MARKET becomes active when the price reaches
`activatePrice` (at once without one), then tracks the best price since (highest for a
SELL, lowest for a BUY) and triggers on a retrace of `callbackRate` percent. Placing an
order whose trigger has already been crossed answers -2021, as Binance does.

`check(symbol, price, now_ms)` is the hook: the server calls it once per kline update it
publishes; it costs one dict lookup when the symbol has no open algo order.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from qtraderd.venues.sim.account import Account, Auth, Params
from qtraderd.venues.sim.candles import Series
from qtraderd.venues.sim.orders import (
    CLIENT_ID,
    NUMBER,
    OrderApi,
    _bool,
    _missing,
    _on_step,
    _unverified,
    uncertain_reply,
)
from qtraderd.venues.sim.rest import ApiError, Rest
from qtraderd.venues.sim.transport import Request, Response

log = logging.getLogger("qtraderd.sim.algo")

ALGO_ORDER_TYPES = ("STOP_MARKET", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET")
WORKING_TYPES = ("MARK_PRICE", "CONTRACT_PRICE")
MIN_CALLBACK_RATE, MAX_CALLBACK_RATE = 0.1, 20.0  # BINANCE.md: 20 since 2026-10-23
MAX_OPEN_ALGO_ORDERS = 200  # per account, all symbols together (2025-12-29)
FIRST_ALGO_ID = 4_000_000_000
REDUCE_ONLY_REJECT = "Reduce Only reject"

Publish = Callable[[dict[str, object]], None]


def _no_publish(event: dict[str, object]) -> None:
    """The default publisher: the simulator's user data stream plugs in a real one."""


@dataclass
class AlgoOrder:
    """One conditional order. `quantity` is 0 for a close-position order; `trigger_price`
    of a trailing stop is its current stop level (0 until it is active)."""

    algo_id: int
    client_algo_id: str
    symbol: str
    side: str
    type: str
    quantity: float
    close_position: bool
    reduce_only: bool
    trigger_price: float
    working_type: str
    callback_rate: float
    activate_price: float
    create_time: int
    status: str = "NEW"
    update_time: int = 0
    trigger_time: int = 0
    actual_order_id: int | None = None
    avg_price: float = 0.0
    executed_qty: float = 0.0
    best: float = 0.0  # trailing: best price since activation (0: not active yet)
    reason: str = ""


def algo_update_event(order: AlgoOrder, now_ms: int, s: Series) -> dict[str, object]:
    """The ALGO_UPDATE user event for `order`'s current state, exactly the shape of
    user_data/algo_update_new.json (prices and quantities formatted on `s`'s grid)."""
    triggered = order.actual_order_id is not None
    return {
        "e": "ALGO_UPDATE", "T": now_ms, "E": now_ms,
        "o": {
            "caid": order.client_algo_id, "aid": order.algo_id, "at": "CONDITIONAL",
            "o": order.type, "s": order.symbol, "S": order.side, "ps": "BOTH", "f": "GTC",
            "q": s.qty(order.quantity), "X": order.status,
            "ai": str(order.actual_order_id) if triggered else "",
            "ap": s.price(order.avg_price), "aq": s.qty(order.executed_qty),
            "act": "MARKET" if triggered else "0",
            "tp": s.price(order.trigger_price), "p": s.price(0.0), "V": "NONE",
            "wt": order.working_type, "pm": "NONE", "cp": order.close_position,
            "pP": False, "R": order.reduce_only, "tt": order.trigger_time, "gtd": 0,
            "rm": order.reason}}


class AlgoApi:
    """The algo order routes over one `Account`, served through `Rest.add_route`;
    triggered orders fill through `orders` (an `OrderApi`). `publish` may be replaced
    at any time (the user data stream sets it)."""

    def __init__(self, rest: Rest, account: Account, auth: Auth, orders: OrderApi, *,
                 publish: Publish = _no_publish) -> None:
        self.account, self.auth, self.orders = account, auth, orders
        self.publish = publish
        self.next_id = FIRST_ALGO_ID
        self.by_id: dict[int, AlgoOrder] = {}
        self.records: dict[int, dict[str, object]] = {}  # algo id -> Account.algo_orders row
        self.open: dict[str, list[AlgoOrder]] = {}  # symbol -> its NEW orders
        self.triggers = 0
        rest.add_route("POST", "/fapi/v1/algoOrder", self.post_algo_order, 0)
        rest.add_route("GET", "/fapi/v1/algoOrder", self._signed(self.get_algo_order), 1)
        rest.add_route("DELETE", "/fapi/v1/algoOrder", self._signed(self.cancel_algo_order),
                       1)
        rest.add_route("DELETE", "/fapi/v1/algoOpenOrders", self._signed(self.cancel_all), 1)
        # GET openAlgoOrders stays AccountApi's: it lists the NEW rows' "payload" kept here

    def _signed(self, handler: Callable[[Request, Params], Awaitable[Response]]
                ) -> Callable[[Request], Awaitable[Response]]:
        async def route(req: Request) -> Response:
            return await handler(req, self.auth.verify(req))
        return route

    # ------------------------------------------------------------------- payloads

    def response(self, o: AlgoOrder) -> dict[str, object]:
        """The `POST`/`GET /fapi/v1/algoOrder` answer (Binance's documented fields)."""
        s = self.account.series(o.symbol)
        trailing = o.type == "TRAILING_STOP_MARKET"
        return {
            "algoId": o.algo_id, "clientAlgoId": o.client_algo_id, "algoType": "CONDITIONAL",
            "orderType": o.type, "symbol": o.symbol, "side": o.side, "positionSide": "BOTH",
            "timeInForce": "GTC", "quantity": s.qty(o.quantity), "algoStatus": o.status,
            "actualOrderId": "" if o.actual_order_id is None else str(o.actual_order_id),
            "actualPrice": s.price(o.avg_price), "triggerPrice": s.price(o.trigger_price),
            "price": s.price(0.0), "icebergQuantity": None,
            "selfTradePreventionMode": "NONE", "workingType": o.working_type,
            "priceMatch": "NONE", "closePosition": o.close_position, "priceProtect": False,
            "reduceOnly": o.reduce_only,
            "activatePrice": s.price(o.activate_price) if trailing else "",
            "callbackRate": f"{o.callback_rate:g}" if trailing else "",
            "createTime": o.create_time, "updateTime": o.update_time,
            "triggerTime": o.trigger_time, "goodTillDate": 0}

    def listing(self, o: AlgoOrder) -> dict[str, object]:
        """One `GET /fapi/v1/openAlgoOrders` entry: http/open_algo_orders.json's shape."""
        s = self.account.series(o.symbol)
        return {
            "algoId": o.algo_id, "clientAlgoId": o.client_algo_id, "algoType": "CONDITIONAL",
            "type": o.type, "symbol": o.symbol, "side": o.side, "positionSide": "BOTH",
            "timeInForce": "GTC", "quantity": s.qty(o.quantity), "algoStatus": o.status,
            "triggerPrice": s.price(o.trigger_price), "workingType": o.working_type,
            "reduceOnly": o.reduce_only, "createTime": o.create_time,
            "updateTime": o.update_time}

    def _changed(self, o: AlgoOrder, now: int) -> None:
        """Keep the book row in step with `o`, and publish its ALGO_UPDATE."""
        o.update_time = now
        row = self.records[o.algo_id]
        row.update(status=o.status, triggerPrice=self.account.series(o.symbol).price(
            o.trigger_price), actualOrderId=o.actual_order_id, payload=self.listing(o))
        if o.status != "NEW":
            opened = self.open.get(o.symbol, [])
            if o in opened:
                opened.remove(o)
        log.debug("exchange-sim: algo order %s %s", o.client_algo_id, o.status)
        self.publish(algo_update_event(o, now, self.account.series(o.symbol)))

    # ------------------------------------------------------------------- placing

    async def post_algo_order(self, req: Request) -> Response:
        """Verify, validate, book; record the request whatever its outcome."""
        now = self.account.clock.now_ms()
        try:
            params = self.auth.verify(req)
        except ApiError as exc:
            self._record_rejected(_unverified(req), now, exc)
            raise
        try:
            order = self._place(params, now)
        except ApiError as exc:
            self._record_rejected(params, now, exc)
            raise
        fault = uncertain_reply(self.orders.faults, self.records[order.algo_id])
        return fault or Response.json(200, self.response(order))

    def _record_rejected(self, params: Params, now: int, exc: ApiError) -> None:
        self.account.algo_orders.append({
            "clientAlgoId": params.get("clientAlgoId", ""), "algoId": None,
            "symbol": params.get("symbol", ""), "type": params.get("type", ""),
            "side": params.get("side", ""), "status": "REJECTED", "time": now,
            "triggerPrice": params.get("triggerPrice", ""), "actualOrderId": None,
            "reduceOnly": params.get("reduceOnly", "").lower() == "true",
            "closePosition": params.get("closePosition", "").lower() == "true",
            "code": exc.code, "msg": exc.msg})

    def _price(self, params: Params, name: str, s: Series, required: bool) -> float:
        """A price parameter, which must be a number on the tick (-1111 otherwise)."""
        text = params.get(name, "")
        if not text:
            if required:
                raise _missing(name)
            return 0.0
        if not NUMBER.match(text):
            raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; "
                                       f"legal range is '^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'.")
        value = float(text)
        if value <= 0:
            raise ApiError(400, -1130, f"Data sent for parameter '{name}' is not valid.")
        if not _on_step(value, s.tick_size):
            raise ApiError(400, -1111, "Precision is over the maximum defined for this "
                                       "asset.")
        return value

    def _place(self, params: Params, now: int) -> AlgoOrder:
        acc = self.account
        symbol = params.get("symbol", "")
        if not symbol:
            raise _missing("symbol")
        s = acc.series(symbol)
        algo_type = params.get("algoType", "")
        if not algo_type:
            raise _missing("algoType")
        if algo_type != "CONDITIONAL":
            raise ApiError(400, -1130, "Data sent for parameter 'algoType' is not valid.")
        side = params.get("side", "")
        if not side:
            raise _missing("side")
        if side not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        otype = params.get("type", "")
        if not otype:
            raise _missing("type")
        if otype not in ALGO_ORDER_TYPES:
            raise ApiError(400, -1116, f"Invalid orderType. (exchange-sim's algo orders: "
                                       f"{', '.join(ALGO_ORDER_TYPES)})")
        if acc.dual_side or params.get("positionSide", "BOTH") != "BOTH":
            raise ApiError(400, -4061, "Order's position side does not match user's "
                                       "setting. (exchange-sim trades one-way mode only)")
        working = params.get("workingType", "MARK_PRICE")
        if working not in WORKING_TYPES:
            raise ApiError(400, -1130, "Data sent for parameter 'workingType' is not valid.")
        close = _bool(params, "closePosition")
        trailing = otype == "TRAILING_STOP_MARKET"
        if close and trailing:
            raise ApiError(400, -1106, "Parameter 'closePosition' sent when not required.")
        if close and params.get("quantity"):
            raise ApiError(400, -4137, "Quantity must be zero with closePosition equals true")
        if close and "reduceOnly" in params:
            raise ApiError(400, -1106, "Parameter 'reduceOnly' sent when not required.")
        reduce_only = _bool(params, "reduceOnly")
        cid = params.get("clientAlgoId") or f"sim-algo-{self.next_id}"
        if not CLIENT_ID.match(cid):
            raise ApiError(400, -4015, "Client order id is not valid.")
        if any(o.client_algo_id == cid for o in self.by_id.values() if o.status == "NEW"):
            raise ApiError(400, -4116, "ClientOrderId is duplicated.")
        qty = 0.0 if close else self.orders._quantity(params, s)
        mark = acc.mark_price(symbol)
        trigger = callback = activate = 0.0
        if trailing:
            callback = self._callback_rate(params)
            activate = self._price(params, "activatePrice", s, False)
            if activate and (activate <= mark if side == "SELL" else activate >= mark):
                raise ApiError(400, -4135, "Invalid activation price.")
        else:
            trigger = self._price(params, "triggerPrice", s, True)
            if _crossed(otype, side, trigger, mark):
                raise ApiError(400, -2021, "Order would immediately trigger.")
        if sum(len(v) for v in self.open.values()) >= MAX_OPEN_ALGO_ORDERS:
            raise ApiError(400, -4045, "Reach max stop order limit.")
        algo_id, self.next_id = self.next_id, self.next_id + 1
        order = AlgoOrder(algo_id, cid, symbol, side, otype, qty, close, reduce_only,
                          trigger, working, callback, activate, now, update_time=now)
        if trailing and not activate:
            self._activate(order, mark)
        self.by_id[algo_id] = order
        self.open.setdefault(symbol, []).append(order)
        row: dict[str, object] = {
            "clientAlgoId": cid, "algoId": algo_id, "symbol": symbol, "type": otype,
            "side": side, "status": "NEW", "time": now, "triggerPrice": "",
            "actualOrderId": None, "reduceOnly": reduce_only, "closePosition": close}
        acc.algo_orders.append(row)
        self.records[algo_id] = row
        self._changed(order, now)
        return order

    def _callback_rate(self, params: Params) -> float:
        text = params.get("callbackRate", "")
        if not text:
            raise _missing("callbackRate")
        if not NUMBER.match(text):
            raise ApiError(400, -1100, "Illegal characters found in parameter 'callbackRate'.")
        rate = float(text)
        if not MIN_CALLBACK_RATE <= rate <= MAX_CALLBACK_RATE or not _on_step(rate, 0.1):
            raise ApiError(400, -1130, "Data sent for parameter 'callbackRate' is not valid.")
        return rate

    def _activate(self, o: AlgoOrder, price: float) -> None:
        o.best = price
        self._trail(o)
        row = self.records.get(o.algo_id)
        if row is not None:  # a new best moves the stop: the book shows it, no event
            row["triggerPrice"] = self.account.series(o.symbol).price(o.trigger_price)
            row["payload"] = self.listing(o)

    def _trail(self, o: AlgoOrder) -> None:
        """The stop level of an active trailing stop, on the tick (away from the best)."""
        s = self.account.series(o.symbol)
        k = o.callback_rate / 100.0
        raw = o.best * (1 - k) if o.side == "SELL" else o.best * (1 + k)
        o.trigger_price = round(raw / s.tick_size) * s.tick_size

    # ------------------------------------------------------------------- triggering

    def check(self, symbol: str, price: float, now_ms: int) -> None:
        """The price-path hook: trigger every open algo order of `symbol` that `price`
        crosses (called once per new price; cheap when nothing is open)."""
        opened = self.open.get(symbol)
        if not opened:
            return
        for o in list(opened):
            if o.type == "TRAILING_STOP_MARKET":
                if not o.best:
                    if (price >= o.activate_price if o.side == "SELL"
                            else price <= o.activate_price):
                        self._activate(o, price)
                    continue
                if (price > o.best) if o.side == "SELL" else (price < o.best):
                    self._activate(o, price)
                    continue
                hit = price <= o.trigger_price if o.side == "SELL" else \
                    price >= o.trigger_price
            else:
                hit = _crossed(o.type, o.side, o.trigger_price, price)
            if hit:
                self._trigger(o, now_ms, self._level(o, symbol, now_ms))

    def _level(self, o: AlgoOrder, symbol: str, now_ms: int) -> float | None:
        """Where a triggered stop or take-profit executes: at its level, which the price
        crossed between two updates — or at the candle's open when the candle opened
        beyond it (a gap), as a backtest fills it. A trailing stop: at the last price."""
        if o.type == "TRAILING_STOP_MARKET":
            return None
        c = self.account.current_candle(symbol, now_ms)
        if c is not None and _crossed(o.type, o.side, o.trigger_price, c[1]):
            return c[1]
        return o.trigger_price

    def _trigger(self, o: AlgoOrder, now: int, at: float | None = None) -> None:
        """TRIGGERING, a MARKET order through OrderApi, then TRIGGERED + FINISHED (or
        EXPIRED when there is nothing to reduce, REJECTED on any other refusal)."""
        acc = self.account
        s = acc.series(o.symbol)
        self.triggers += 1
        o.trigger_time = now
        o.status = "TRIGGERING"
        self._changed(o, now)
        pos = acc.position(o.symbol, "BOTH").amount
        closing = pos != 0 and (pos > 0) == (o.side == "SELL")
        qty = abs(pos) if o.close_position else o.quantity
        if (o.close_position or o.reduce_only) and not closing:
            o.status, o.reason = "EXPIRED", REDUCE_ONLY_REJECT
            self._changed(o, now)
            return
        params: Params = {"symbol": o.symbol, "side": o.side, "type": "MARKET",
                          "quantity": s.qty(qty), "newClientOrderId": o.client_algo_id,
                          "reduceOnly": "true" if o.close_position or o.reduce_only
                          else "false"}
        try:
            fill = self.orders.place_market(params, now, at)
        except ApiError as exc:
            o.status, o.reason = "REJECTED", exc.msg
            self._changed(o, now)
            return
        o.actual_order_id = int(str(fill["orderId"]))
        o.avg_price = float(str(fill["avgPrice"]))
        o.executed_qty = float(str(fill["executedQty"]))
        o.status = "TRIGGERED"
        self._changed(o, now)
        o.status = "FINISHED"
        self._changed(o, now)
        log.info("exchange-sim: algo order %s %s %s triggered at %s: order %s filled %s",
                 o.client_algo_id, o.type, o.symbol, s.price(o.trigger_price),
                 o.actual_order_id, s.qty(o.executed_qty))

    # ------------------------------------------------------------------- querying

    def _find(self, params: Params) -> AlgoOrder | None:
        aid, cid = params.get("algoId", ""), params.get("clientAlgoId", "")
        if not aid and not cid:
            raise ApiError(400, -1102, "Param 'clientAlgoId' or 'algoId' must be sent, but "
                                       "both were empty/null!")
        if aid:
            return self.by_id.get(int(aid)) if aid.isdigit() else None
        found = [o for o in self.by_id.values() if o.client_algo_id == cid]
        open_ = [o for o in found if o.status == "NEW"]
        return (open_ or found or [None])[-1]

    async def get_algo_order(self, req: Request, params: Params) -> Response:
        found = self._find(params)
        if found is None:
            raise ApiError(400, -2013, "Order does not exist.")
        return Response.json(200, self.response(found))

    async def cancel_algo_order(self, req: Request, params: Params) -> Response:
        found = self._find(params)
        if found is None or found.status != "NEW":
            raise ApiError(400, -2011, "Unknown order sent.")
        self._cancel(found)
        return Response.json(200, {"algoId": found.algo_id,
                                   "clientAlgoId": found.client_algo_id,
                                   "code": "200", "msg": "success"})

    async def cancel_all(self, req: Request, params: Params) -> Response:
        symbol = params.get("symbol", "")
        if not symbol:
            raise _missing("symbol")
        self.account.series(symbol)
        for o in list(self.open.get(symbol, [])):
            self._cancel(o)
        return Response.json(200, {"code": 200, "msg": "The operation of cancel all open "
                                                       "order is done."})

    def _cancel(self, o: AlgoOrder) -> None:
        o.status = "CANCELED"
        self._changed(o, self.account.clock.now_ms())


def _crossed(otype: str, side: str, trigger: float, price: float) -> bool:
    """Whether `price` is at or beyond a STOP_MARKET / TAKE_PROFIT_MARKET's trigger."""
    stop_up = (otype == "STOP_MARKET") == (side == "BUY")  # triggers on a rise
    return price >= trigger if stop_up else price <= trigger
