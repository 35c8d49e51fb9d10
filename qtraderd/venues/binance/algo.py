"""Binance USD-M's Algo Order API on top of the signed `RestClient`: place, query, cancel
and list conditional orders (STOP_MARKET, TAKE_PROFIT_MARKET, TRAILING_STOP_MARKET), and
parse their `ALGO_UPDATE` user events.

Why a module of its own: since 2025-12-09 exchange-side stops exist only here
(`/fapi/v1/order` answers -4120 for them), their ids differ from regular orders'
(`algoId` / `clientAlgoId`, and `actualOrderId` once triggered), and reconciliation must
map one to the other (BINANCE.md).

Placing follows the order rules of `RestClient.signed`: a timeout or 5xx after sending
raises `RestUncertain`; the caller then looks the order up with
`query_algo_order(rest, client_algo_id=...)` (the id it chose and stored before sending),
never resends blindly. Quantities are rounded down to the instrument's step, trigger and
activation prices to the nearest tick (a 0 step / tick: sent as given).

Shapes parsed: the documented `POST`/`GET /fapi/v1/algoOrder` answer (`orderType`) and the
`openAlgoOrders` entries of http/open_algo_orders.json (`type`); user_data/algo_update_*.json
for events. Numbers arrive as decimal strings ("" when not applicable) and become floats.
"""

from __future__ import annotations

from typing import Any

import msgspec

from qtraderd.core.instruments import Instrument, on_grid
from qtraderd.venues.binance.payloads import PayloadError, decode
from qtraderd.venues.binance.payloads import decimal_or_zero as _num
from qtraderd.venues.binance.rest import RestClient

__all__ = ["AlgoCancel", "AlgoOrder", "AlgoUpdate", "cancel_algo_order",
           "cancel_all_algo_orders", "on_grid", "open_algo_orders", "parse_algo_cancel",
           "parse_algo_order", "parse_algo_orders", "parse_algo_update", "place_algo_order",
           "query_algo_order"]

ALGO_ORDER = "/fapi/v1/algoOrder"
OPEN_ALGO_ORDERS = "/fapi/v1/openAlgoOrders"
CANCEL_ALL_ALGO = "/fapi/v1/algoOpenOrders"
OPEN_STATUSES = ("NEW", "TRIGGERING")


class AlgoOrder(msgspec.Struct, frozen=True):
    """One algo order as Binance reports it (REST answer, listing or ALGO_UPDATE).
    `actual_order_id`: the regular order it became once triggered (None before);
    `quantity` 0 for a close-position order; `activate_price` / `callback_rate` only for
    trailing stops (None otherwise)."""

    algo_id: int
    client_algo_id: str
    symbol: str
    side: str
    order_type: str
    status: str
    quantity: float
    trigger_price: float
    working_type: str
    reduce_only: bool
    close_position: bool
    algo_type: str = "CONDITIONAL"
    position_side: str = "BOTH"
    actual_order_id: int | None = None
    avg_price: float = 0.0
    executed_qty: float = 0.0
    activate_price: float | None = None
    callback_rate: float | None = None
    create_time: int = 0
    update_time: int = 0
    trigger_time: int = 0
    reason: str = ""

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class AlgoUpdate(msgspec.Struct, frozen=True):
    """An ALGO_UPDATE user event: its event and transaction times, and the order."""

    event_time: int
    transaction_time: int
    order: AlgoOrder


class AlgoCancel(msgspec.Struct, frozen=True):
    algo_id: int
    client_algo_id: str


# ------------------------------------------------------------------- wire shapes (private)


class _Rest(msgspec.Struct):
    algoId: int
    clientAlgoId: str
    symbol: str
    side: str
    algoStatus: str
    orderType: str = ""
    type: str = ""  # openAlgoOrders' name for orderType
    algoType: str = "CONDITIONAL"
    positionSide: str = "BOTH"
    quantity: str = ""
    triggerPrice: str = ""
    workingType: str = "MARK_PRICE"
    reduceOnly: bool = False
    closePosition: bool = False
    actualOrderId: str | int | None = None
    actualPrice: str | None = None
    avgPrice: str | None = None
    executedQty: str | None = None
    activatePrice: str | None = None
    callbackRate: str | None = None
    createTime: int = 0
    updateTime: int = 0
    triggerTime: int = 0


class _EventOrder(msgspec.Struct):
    caid: str
    aid: int
    at: str
    o: str
    s: str
    S: str
    X: str
    ps: str = "BOTH"
    q: str = ""
    ai: str = ""
    ap: str = ""
    aq: str = ""
    tp: str = ""
    wt: str = "MARK_PRICE"
    cp: bool = False
    R: bool = False
    tt: int = 0
    rm: str = ""


class _Event(msgspec.Struct):
    e: str
    T: int
    E: int
    o: _EventOrder


class _Cancel(msgspec.Struct):
    algoId: int
    clientAlgoId: str


_one_dec = msgspec.json.Decoder(_Rest)
_many_dec = msgspec.json.Decoder(list[_Rest])
_event_dec = msgspec.json.Decoder(_Event)
_cancel_dec = msgspec.json.Decoder(_Cancel)




def _opt(text: str | None, what: str) -> float | None:
    return None if text is None or text == "" else _num(text, what)


def _order_id(value: str | int | None) -> int | None:
    if value is None or value == "" or value == 0:
        return None
    try:
        return int(value)
    except ValueError:
        raise PayloadError(f"actualOrderId: expected an integer, got {value!r}") from None




def _from_rest(r: _Rest) -> AlgoOrder:
    w = f"algo order {r.clientAlgoId}"
    return AlgoOrder(
        algo_id=r.algoId, client_algo_id=r.clientAlgoId, symbol=r.symbol, side=r.side,
        order_type=r.orderType or r.type, status=r.algoStatus,
        quantity=_num(r.quantity, f"{w} quantity"),
        trigger_price=_num(r.triggerPrice, f"{w} triggerPrice"),
        working_type=r.workingType, reduce_only=r.reduceOnly,
        close_position=r.closePosition, algo_type=r.algoType, position_side=r.positionSide,
        actual_order_id=_order_id(r.actualOrderId),
        avg_price=_num(r.avgPrice or r.actualPrice, f"{w} avgPrice"),
        executed_qty=_num(r.executedQty, f"{w} executedQty"),
        activate_price=_opt(r.activatePrice, f"{w} activatePrice"),
        callback_rate=_opt(r.callbackRate, f"{w} callbackRate"),
        create_time=r.createTime, update_time=r.updateTime, trigger_time=r.triggerTime)


def parse_algo_order(body: bytes | str) -> AlgoOrder:
    """The `POST` / `GET /fapi/v1/algoOrder` answer."""
    return _from_rest(decode(_one_dec, body, "algo order"))


def parse_algo_orders(body: bytes | str) -> list[AlgoOrder]:
    """The `GET /fapi/v1/openAlgoOrders` answer."""
    return [_from_rest(r) for r in decode(_many_dec, body, "open algo orders")]


def parse_algo_cancel(body: bytes | str) -> AlgoCancel:
    c = decode(_cancel_dec, body, "algo cancel")
    return AlgoCancel(c.algoId, c.clientAlgoId)


def parse_algo_update(raw: bytes | str) -> AlgoUpdate:
    """An `ALGO_UPDATE` user event (user_data/algo_update_new.json's shape)."""
    ev = decode(_event_dec, raw, "ALGO_UPDATE")
    if ev.e != "ALGO_UPDATE":
        raise PayloadError(f"ALGO_UPDATE: event type {ev.e!r}")
    o = ev.o
    w = f"ALGO_UPDATE {o.caid}"
    order = AlgoOrder(
        algo_id=o.aid, client_algo_id=o.caid, symbol=o.s, side=o.S, order_type=o.o,
        status=o.X, quantity=_num(o.q, f"{w} q"), trigger_price=_num(o.tp, f"{w} tp"),
        working_type=o.wt, reduce_only=o.R, close_position=o.cp, algo_type=o.at,
        position_side=o.ps, actual_order_id=_order_id(o.ai),
        avg_price=_num(o.ap, f"{w} ap"), executed_qty=_num(o.aq, f"{w} aq"),
        update_time=ev.T, trigger_time=o.tt, reason=o.rm)
    return AlgoUpdate(event_time=ev.E, transaction_time=ev.T, order=order)


# ------------------------------------------------------------------- calls


async def place_algo_order(rest: RestClient, instrument: Instrument, side: str,
                           order_type: str, *, client_algo_id: str,
                           quantity: float | None = None, close_position: bool = False,
                           reduce_only: bool = False, trigger_price: float | None = None,
                           working_type: str = "MARK_PRICE",
                           callback_rate: float | None = None,
                           activate_price: float | None = None) -> AlgoOrder:
    """`POST /fapi/v1/algoOrder` (algoType CONDITIONAL). Give `quantity` (rounded down to
    the step) or `close_position=True`; `trigger_price` for STOP_MARKET /
    TAKE_PROFIT_MARKET, `callback_rate` (percent) and optional `activate_price` for
    TRAILING_STOP_MARKET. Raises BinanceAPIError, RestUncertain (then query by
    `client_algo_id`), RestUnavailable, ValueError for a call that cannot be right."""
    if (quantity is None) != close_position:
        raise ValueError("place_algo_order: give either quantity or close_position=True")
    ins = instrument
    params: dict[str, Any] = {"algoType": "CONDITIONAL", "symbol": ins.symbol, "side": side,
                              "type": order_type, "clientAlgoId": client_algo_id,
                              "workingType": working_type}
    if close_position:
        params["closePosition"] = "true"
    else:
        assert quantity is not None
        params["quantity"] = on_grid(quantity, ins.step_size, down=True)
        if reduce_only:
            params["reduceOnly"] = "true"
    if trigger_price is not None:
        params["triggerPrice"] = on_grid(trigger_price, ins.tick_size)
    if callback_rate is not None:
        params["callbackRate"] = on_grid(callback_rate, 0.1)
    if activate_price is not None:
        params["activatePrice"] = on_grid(activate_price, ins.tick_size)
    return parse_algo_order(await rest.signed("POST", ALGO_ORDER, params))


def _ids(algo_id: int | None, client_algo_id: str | None) -> dict[str, Any]:
    if algo_id is None and not client_algo_id:
        raise ValueError("give algo_id or client_algo_id")
    return {"algoId": algo_id} if algo_id is not None else {"clientAlgoId": client_algo_id}


async def query_algo_order(rest: RestClient, *, client_algo_id: str | None = None,
                           algo_id: int | None = None) -> AlgoOrder:
    """`GET /fapi/v1/algoOrder`; BinanceAPIError -2013 when the exchange does not know it."""
    return parse_algo_order(await rest.signed("GET", ALGO_ORDER,
                                              _ids(algo_id, client_algo_id)))


async def cancel_algo_order(rest: RestClient, *, client_algo_id: str | None = None,
                            algo_id: int | None = None) -> AlgoCancel:
    """`DELETE /fapi/v1/algoOrder`; BinanceAPIError -2011 for an unknown (or no longer
    open) order, which after a lost reply means the first cancel worked."""
    return parse_algo_cancel(await rest.signed("DELETE", ALGO_ORDER,
                                               _ids(algo_id, client_algo_id)))


async def cancel_all_algo_orders(rest: RestClient, symbol: str) -> None:
    """`DELETE /fapi/v1/algoOpenOrders`: every open algo order of `symbol`."""
    await rest.signed("DELETE", CANCEL_ALL_ALGO, {"symbol": symbol})


async def open_algo_orders(rest: RestClient, symbol: str | None = None) -> list[AlgoOrder]:
    """`GET /fapi/v1/openAlgoOrders` (one symbol: weight 1; all: 40)."""
    params = {"symbol": symbol} if symbol else {}
    body = await rest.signed("GET", OPEN_ALGO_ORDERS, params, weight=1 if symbol else 40)
    return parse_algo_orders(body)
