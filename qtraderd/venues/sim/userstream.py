"""The simulator's user data stream: listenKey endpoints, the private WebSocket route and
`UserEvents`, the publisher every part of the simulator hands its account events to.

Binance's rules, followed here: one listenKey per account. `POST /fapi/v1/listenKey`
answers the active key (extending it) or a new one; `PUT` extends it (-1125 if there is
none); `DELETE` removes it and ends its streams. A key not kept alive expires
`validity_s` after its last POST/PUT (Binance: 60 minutes; wall time, like recvWindow, so a
client's 30-minute keep-alive works at any --speed): its streams get `listenKeyExpired`
and are closed. These endpoints need the API key only (`X-MBX-APIKEY`, -2014/-2015 as for
signed ones), no signature.

The stream: `/private/ws?listenKey=KEY[&events=A/B]` on the simulator's port (Binance's
routed private endpoint; the legacy `/ws/<listenKey>` falls into the market hub's legacy
trap and delivers nothing, as on Binance). Frames are raw payloads. An unknown key is
refused with HTTP 400, -1125.

`UserEvents.publish(event)` is a plain callable taking an event dict in the shared
fixtures' shape: order matching (orders.py: `market_fill_events`) and the algo-order
engine call it. The user faults (faults.py: user_dup, user_delay, key_expiry, user_drop)
apply per event and connection on the way out.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import msgspec
import trio

from qtraderd.venues.sim.account import Account
from qtraderd.venues.sim.candles import SimClock
from qtraderd.venues.sim.faults import Faults
from qtraderd.venues.sim.rest import ApiError, Rest
from qtraderd.venues.sim.transport import Gone, Request, Response, WebSocket

log = logging.getLogger("qtraderd.sim")

LISTEN_KEY_VALIDITY_S = 3600.0  # Binance: a key lives 60 minutes after its last keep-alive
QUEUE_EVENTS = 10_000  # events a slow reader may lag before it is dropped
NO_KEY = (400, -1125, "This listenKey does not exist.")


class _Session:
    """One private stream connection."""

    def __init__(self, ws: WebSocket, key: str, events: set[str] | None) -> None:
        self.ws, self.key, self.events = ws, key, events
        self.send, self.recv = trio.open_memory_channel[str](QUEUE_EVENTS)
        self.scope = trio.CancelScope()
        self.closing: str | None = None  # why the server is closing it (key gone)
        self.lost = False  # a key_expiry fault struck: events queued behind it are lost

    def wants(self, etype: str) -> bool:
        return self.events is None or etype in self.events


class UserEvents:
    """listenKeys, private stream connections, and `publish` for the account's events.

    Counters for tests and the log: `keys_created`, `keepalives`, `expired`, `published`,
    `sent` (frames written, duplicates included), `connections`."""

    def __init__(self, clock: SimClock, faults: Faults, api_key: str, *,
                 validity_s: float = LISTEN_KEY_VALIDITY_S) -> None:
        self.clock, self.faults, self.api_key = clock, faults, api_key
        self.validity_s = validity_s
        self.key: str | None = None
        self.expires_at = 0.0  # trio time
        self.sessions: set[_Session] = set()
        self.keys_created = self.keepalives = self.expired = 0
        self.published = self.sent = self.connections = 0
        self.changed = trio.Event()  # set (and renewed) on every key or connection change

    def add_routes(self, rest: Rest) -> None:
        for method in ("POST", "PUT", "DELETE"):
            rest.add_route(method, "/fapi/v1/listenKey", self.listen_key, 1)

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # ------------------------------------------------------------------ listenKey

    def _check_key(self, req: Request) -> None:
        key = req.headers.get("x-mbx-apikey", "")
        if not key:
            raise ApiError(401, -2014, "API-key format invalid.")
        if not secrets.compare_digest(key, self.api_key):
            raise ApiError(401, -2015, f"Invalid API-key, IP, or permissions for action, "
                                       f"request ip: {req.client}")

    def active(self) -> str | None:
        """The live key (an expired one is dropped here, its streams told)."""
        if self.key is not None and trio.current_time() >= self.expires_at:
            self.expire("validity ended")
        return self.key

    async def listen_key(self, req: Request) -> Response:
        self._check_key(req)
        key = self.active()
        if req.method == "POST":
            if key is None:
                key = self.key = secrets.token_urlsafe(48)
                self.keys_created += 1
                log.info("exchange-sim: listenKey created")
            self.expires_at = trio.current_time() + self.validity_s
            self._changed()
            return Response.json(200, {"listenKey": key})
        if key is None:
            raise ApiError(*NO_KEY)
        if req.method == "PUT":
            self.expires_at = trio.current_time() + self.validity_s
            self.keepalives += 1
            self._changed()
            return Response.json(200, {"listenKey": key})
        self._drop("deleted")
        log.info("exchange-sim: listenKey deleted")
        return Response.json(200, {})

    def expire(self, why: str) -> None:
        """The key expires now: listenKeyExpired on its streams, which then close."""
        key = self.key
        if key is None:
            return
        self.expired += 1
        log.info("exchange-sim: listenKey expired (%s)", why)
        text = msgspec.json.encode({"e": "listenKeyExpired", "E": self.clock.now_ms(),
                                    "listenKey": key}).decode()
        for s in list(self.sessions):
            if s.key == key:
                self._offer(s, text)
        self._drop("expired")

    def _drop(self, why: str) -> None:
        key, self.key = self.key, None
        for s in list(self.sessions):
            if s.key == key and s.closing is None:
                s.closing = f"listenKey {why}"
                s.send.close()  # the sender drains what is queued, then closes
        self._changed()

    # ------------------------------------------------------------------ publishing

    def publish(self, event: dict[str, Any]) -> None:
        """Send `event` (a fixture-shaped dict with its type in "e") to every private
        stream of the account."""
        self.published += 1
        text = msgspec.json.encode(event).decode()
        etype = str(event.get("e", ""))
        key = self.active()
        for s in list(self.sessions):
            if s.key == key and s.closing is None and s.wants(etype):
                self._offer(s, text)

    __call__ = publish

    def _offer(self, s: _Session, text: str) -> None:
        try:
            s.send.send_nowait(text)
        except trio.WouldBlock:
            log.warning("exchange-sim: dropping a slow user stream client (%d events "
                        "queued)", QUEUE_EVENTS)
            s.send.close()
            s.scope.cancel()
        except trio.ClosedResourceError:
            pass

    # ------------------------------------------------------------------ connections

    async def handle(self, req: Request, ws: WebSocket) -> None:
        """`/private/ws?listenKey=...`: refused unless the key is the live one."""
        key = req.query.get("listenKey", "")
        if req.path.rstrip("/") != "/private/ws":
            await ws.reject(404, {"code": -1000, "msg": f"Unknown stream path {req.path}"})
            return
        if not key or key != self.active():
            await ws.reject(400, {"code": NO_KEY[1], "msg": NO_KEY[2]})
            return
        names = req.query.get("events", "")
        await ws.accept()
        s = _Session(ws, key, {e for e in names.split("/") if e} or None)
        self.sessions.add(s)
        self.connections += 1
        self._changed()
        log.info("exchange-sim: user stream connection opened")
        try:
            with s.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._sender, s, nursery)
                    nursery.start_soon(self._guard, self._receiver, s, nursery)
                    nursery.start_soon(self._guard, self._expiry, s, nursery)
        finally:
            self.sessions.discard(s)
            s.send.close()
            self._changed()
            await ws.abort()

    async def _guard(self, task: Any, s: _Session, nursery: trio.Nursery) -> None:
        try:
            await task(s, nursery)
        except Gone:
            pass
        finally:
            nursery.cancel_scope.cancel()

    async def _receiver(self, s: _Session, nursery: trio.Nursery) -> None:
        while await s.ws.receive() is not None:
            pass  # the private stream takes no requests; reading answers pings and closes

    async def _expiry(self, s: _Session, nursery: trio.Nursery) -> None:
        """Expire the key when its time comes (a keep-alive moves the time on)."""
        while s.closing is None:
            if self.key == s.key and trio.current_time() >= self.expires_at:
                self.expire("validity ended")
                continue
            if self.key != s.key:
                await trio.sleep_forever()
            changed = self.changed
            with trio.move_on_at(self.expires_at):
                await changed.wait()
        await trio.sleep_forever()  # the sender closes the connection

    async def _sender(self, s: _Session, nursery: trio.Nursery) -> None:
        async for text in s.recv:
            if text.startswith('{"e":"listenKeyExpired"'):
                await self._write(s, text)
                continue
            if s.lost:
                continue
            if self.faults.roll("key_expiry"):
                log.info("exchange-sim: fault key_expiry: the listenKey expires")
                s.lost = True
                self.expire("fault key_expiry")
                continue
            if self.faults.roll("user_drop"):
                log.info("exchange-sim: fault user_drop: closing a user stream abruptly")
                await s.ws.abort()
                raise Gone("dropped")
            if f := self.faults.roll("user_delay"):
                log.info("exchange-sim: fault user_delay: an event held %.3g s", f.duration_s)
                nursery.start_soon(self._later, s, text, f.duration_s)
                continue
            await self._write(s, text)
            if self.faults.roll("user_dup"):
                await self._write(s, text)
        log.info("exchange-sim: closing a user stream (%s)", s.closing or "closed")
        await s.ws.close(1000, s.closing or "")
        raise Gone("closed")

    async def _later(self, s: _Session, text: str, delay_s: float) -> None:
        await trio.sleep(delay_s)
        await self._write(s, text)

    async def _write(self, s: _Session, text: str) -> None:
        await s.ws.send_text(text)
        self.sent += 1


# ---------------------------------------------------------------------- event shapes

def order_trade_update(order: dict[str, Any], now: int, *, execution: str, status: str,
                       last_qty: str = "0", last_price: str = "0", cum_qty: str = "0",
                       avg_price: str = "0", commission: str = "0", asset: str = "USDT",
                       realized: str = "0", trade_id: int = 0) -> dict[str, Any]:
    """`ORDER_TRADE_UPDATE` for an order payload (order_response.json's keys), in
    order_update_*.json's shape."""
    return {"e": "ORDER_TRADE_UPDATE", "T": now, "E": now, "o": {
        "s": order["symbol"], "c": order["clientOrderId"], "S": order["side"],
        "o": order["type"], "f": order["timeInForce"], "q": order["origQty"],
        "p": order["price"], "ap": avg_price, "sp": order["stopPrice"], "x": execution,
        "X": status, "i": order["orderId"], "l": last_qty, "z": cum_qty, "L": last_price,
        "N": asset, "n": commission, "T": now, "t": trade_id, "b": "0", "a": "0",
        "m": False, "R": order["reduceOnly"], "wt": order["workingType"],
        "ot": order["origType"], "ps": order["positionSide"], "cp": order["closePosition"],
        "AP": "0", "cr": "0", "pP": order["priceProtect"], "si": 0, "ss": 0,
        "rp": realized, "V": order["selfTradePreventionMode"]}}


def trade_lite(order: dict[str, Any], now: int, last_qty: str, last_price: str,
               trade_id: int) -> dict[str, Any]:
    """`TRADE_LITE` (trade_lite.json's shape) for a taker fill of `order`."""
    return {"e": "TRADE_LITE", "E": now, "T": now, "s": order["symbol"],
            "c": order["clientOrderId"], "S": order["side"], "q": order["origQty"],
            "p": order["price"], "i": order["orderId"], "l": last_qty, "L": last_price,
            "t": trade_id, "m": False}


def account_update(account: Account, symbol: str, now: int, reason: str = "ORDER",
                   change: float = 0.0) -> dict[str, Any]:
    """`ACCOUNT_UPDATE` (account_update.json's shape): the symbol's quote balance and its
    position(s) as they stand now; `cr` is the realised PnL of its fills so far."""
    s = account.series(symbol)
    wallet = account.balances.get(s.quote, 0.0)
    realized = sum(float(str(o.get("realizedPnl", "0"))) for o in account.orders
                   if o.get("symbol") == symbol)
    positions = []
    for risk in account.position_risk(symbol):
        positions.append({
            "s": symbol, "pa": risk["positionAmt"], "ep": risk["entryPrice"],
            "bep": risk["breakEvenPrice"], "cr": f"{realized:.8f}",
            "up": risk["unRealizedProfit"], "mt": risk["marginType"],
            "iw": risk["isolatedWallet"], "ps": risk["positionSide"]})
    return {"e": "ACCOUNT_UPDATE", "T": now, "E": now, "a": {
        "m": reason,
        "B": [{"a": s.quote, "wb": f"{wallet:.8f}", "cw": f"{wallet:.8f}",
               "bc": f"{change:.8f}"}],
        "P": positions}}


def market_fill_events(account: Account, order: dict[str, Any], now: int, *, fee: float,
                       pnl: float, trade_id: int) -> list[dict[str, Any]]:
    """What Binance sends for a MARKET order filled whole at once, in its order: NEW,
    TRADE_LITE, TRADE/FILLED, ACCOUNT_UPDATE."""
    s = account.series(str(order["symbol"]))
    qty, price = order["executedQty"], order["avgPrice"]
    return [
        order_trade_update(order, now, execution="NEW", status="NEW", asset=s.quote),
        trade_lite(order, now, qty, price, trade_id),
        order_trade_update(order, now, execution="TRADE", status="FILLED", last_qty=qty,
                           last_price=price, cum_qty=qty, avg_price=price,
                           commission=f"{fee:.8f}", asset=s.quote, realized=f"{pnl:.8f}",
                           trade_id=trade_id),
        account_update(account, str(order["symbol"]), now),
    ]
