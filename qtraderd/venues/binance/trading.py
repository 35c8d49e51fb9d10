"""Binance USD-M's regular orders and account reads on top of the signed `RestClient`:
place a MARKET order, query / cancel one by its client id, list open orders, and read
positions (`positionRisk`), balances and the account.

Why these rules:
* A MARKET quantity is rounded DOWN to the step size (never more exposure than sized),
  and an order below the minimum quantity or notional is refused here with a typed
  `OrderTooSmall` before anything is sent: a reason code the broker records as a denial,
  instead of an exchange rejection (-4164 / -4004) that would count towards the
  rejection halt. Reduce-only orders skip the notional check, as Binance does.
* The acknowledgement of a placed order carries no fill (BINANCE.md, 2026): `OrderAck`
  has no price fields at all, so nobody can infer a fill from it. Fills come from
  `ORDER_TRADE_UPDATE` or `query_order`.
* Placing follows `RestClient.signed`'s rule: a timeout or 5xx after sending raises
  `RestUncertain`; the caller then looks the order up with `query_order(rest, symbol,
  client_order_id=...)` (the id it stored before sending) and never resends blindly.
  `query_order` answers None when Binance does not know the id (-2013): the order never
  arrived.

Shapes parsed: http/order_response.json (query, cancel, openOrders entries; the ack is the
same without avgPrice/cumQuote), position_risk.json (`GET /fapi/v2/positionRisk`, which
still carries leverage and marginType, unlike v3), balance.json (`GET /fapi/v2/balance`)
and account_info_v2.json (`GET /fapi/v2/account`). Unknown fields are ignored; numbers
arrive as decimal strings and become floats.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from qtraderd.core.instruments import Instrument, on_grid
from qtraderd.venues.binance.payloads import PayloadError, decode
from qtraderd.venues.binance.payloads import decimal_or_zero as _num
from qtraderd.venues.binance.rest import BinanceAPIError, RestClient

__all__ = ["AccountInfo", "AccountPosition", "BalanceInfo", "OrderAck", "OrderInfo",
           "OrderTooSmall", "PositionInfo", "account_balances", "account_info",
           "cancel_order", "market_quantity", "open_orders", "parse_account_info",
           "parse_balances", "parse_order", "parse_order_ack", "parse_orders",
           "parse_position_risk", "place_market_order", "position_risk", "query_order"]

ORDER = "/fapi/v1/order"
OPEN_ORDERS = "/fapi/v1/openOrders"
POSITION_RISK = "/fapi/v2/positionRisk"
BALANCE = "/fapi/v2/balance"
ACCOUNT = "/fapi/v2/account"
ORDER_DOES_NOT_EXIST = -2013
OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED")
# positionRisk says "cross" / "isolated"; the marginType endpoint and config say these.
_MARGIN_TYPES = {"cross": "CROSSED", "crossed": "CROSSED", "isolated": "ISOLATED"}


class OrderTooSmall(Exception):
    """An order refused before sending: `reason_code` ("below_min_qty",
    "below_min_notional") for the denial record, `message` with the figures."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(f"{reason_code}: {message}")
        self.reason_code, self.message = reason_code, message


class OrderAck(msgspec.Struct, frozen=True):
    """What `POST /fapi/v1/order` answers: the order was accepted. No fill information,
    by design (see the module docstring)."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str
    order_type: str
    status: str
    orig_qty: float
    reduce_only: bool
    update_time: int


class OrderInfo(msgspec.Struct, frozen=True):
    """A regular order as `GET /fapi/v1/order`, `DELETE` and `openOrders` report it."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str
    order_type: str
    status: str
    orig_qty: float
    executed_qty: float
    avg_price: float
    cum_quote: float
    price: float
    stop_price: float
    reduce_only: bool
    close_position: bool
    position_side: str
    orig_type: str
    time: int
    update_time: int

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class PositionInfo(msgspec.Struct, frozen=True):
    """One `positionRisk` entry. `position_amt` < 0 is short; `margin_type` is
    "CROSSED" or "ISOLATED" (normalised from "cross" / "isolated")."""

    symbol: str
    position_amt: float
    entry_price: float
    mark_price: float
    unrealized_pnl: float
    liquidation_price: float
    leverage: int
    margin_type: str
    position_side: str
    notional: float
    isolated_margin: float
    break_even_price: float
    max_notional: float
    update_time: int


class BalanceInfo(msgspec.Struct, frozen=True):
    """One asset of the futures wallet (`/fapi/v2/balance` or `/fapi/v2/account`'s
    `assets`)."""

    asset: str
    wallet_balance: float
    available_balance: float
    unrealized_pnl: float
    cross_wallet_balance: float
    max_withdraw_amount: float
    margin_available: bool
    update_time: int


class AccountPosition(msgspec.Struct, frozen=True):
    """One `positions` entry of `/fapi/v2/account`: the symbol's settings and amount."""

    symbol: str
    leverage: int
    isolated: bool
    position_side: str
    position_amt: float
    entry_price: float
    update_time: int


class AccountInfo(msgspec.Struct, frozen=True):
    can_trade: bool
    multi_assets_margin: bool
    total_wallet_balance: float
    total_margin_balance: float
    total_unrealized_pnl: float
    available_balance: float
    assets: list[BalanceInfo]
    positions: list[AccountPosition]


# ------------------------------------------------------------------- wire shapes (private)


class _Order(msgspec.Struct):
    orderId: int
    clientOrderId: str
    symbol: str
    side: str
    type: str
    status: str
    origQty: str = ""
    executedQty: str = ""
    avgPrice: str | None = None
    cumQuote: str | None = None
    price: str = ""
    stopPrice: str = ""
    reduceOnly: bool = False
    closePosition: bool = False
    positionSide: str = "BOTH"
    origType: str = ""
    time: int = 0
    updateTime: int = 0


class _Position(msgspec.Struct):
    symbol: str
    positionAmt: str
    entryPrice: str = ""
    markPrice: str = ""
    unRealizedProfit: str = ""
    liquidationPrice: str = ""
    leverage: str = "0"
    marginType: str = "cross"
    positionSide: str = "BOTH"
    notional: str = ""
    isolatedMargin: str = ""
    breakEvenPrice: str = ""
    maxNotionalValue: str = ""
    updateTime: int = 0


class _Balance(msgspec.Struct):
    asset: str
    balance: str = ""
    availableBalance: str = ""
    crossUnPnl: str = ""
    crossWalletBalance: str = ""
    maxWithdrawAmount: str = ""
    marginAvailable: bool = True
    updateTime: int = 0


class _Asset(msgspec.Struct):
    asset: str
    walletBalance: str = ""
    availableBalance: str = ""
    unrealizedProfit: str = ""
    crossWalletBalance: str = ""
    maxWithdrawAmount: str = ""
    marginAvailable: bool = True
    updateTime: int = 0


class _AccountPosition(msgspec.Struct):
    symbol: str
    leverage: str = "0"
    isolated: bool = False
    positionSide: str = "BOTH"
    positionAmt: str = ""
    entryPrice: str = ""
    updateTime: int = 0


class _Account(msgspec.Struct):
    canTrade: bool = False
    multiAssetsMargin: bool = False
    totalWalletBalance: str = ""
    totalMarginBalance: str = ""
    totalUnrealizedProfit: str = ""
    availableBalance: str = ""
    assets: list[_Asset] = []
    positions: list[_AccountPosition] = []


_order_dec = msgspec.json.Decoder(_Order)
_orders_dec = msgspec.json.Decoder(list[_Order])
_positions_dec = msgspec.json.Decoder(list[_Position])
_balances_dec = msgspec.json.Decoder(list[_Balance])
_account_dec = msgspec.json.Decoder(_Account)




def _int(text: str, what: str) -> int:
    try:
        return int(text) if text else 0
    except ValueError:
        raise PayloadError(f"{what}: expected an integer, got {text!r}") from None




def _info(o: _Order) -> OrderInfo:
    w = f"order {o.clientOrderId}"
    return OrderInfo(
        order_id=o.orderId, client_order_id=o.clientOrderId, symbol=o.symbol, side=o.side,
        order_type=o.type, status=o.status, orig_qty=_num(o.origQty, f"{w} origQty"),
        executed_qty=_num(o.executedQty, f"{w} executedQty"),
        avg_price=_num(o.avgPrice, f"{w} avgPrice"),
        cum_quote=_num(o.cumQuote, f"{w} cumQuote"), price=_num(o.price, f"{w} price"),
        stop_price=_num(o.stopPrice, f"{w} stopPrice"), reduce_only=o.reduceOnly,
        close_position=o.closePosition, position_side=o.positionSide,
        orig_type=o.origType or o.type, time=o.time, update_time=o.updateTime)


def parse_order_ack(body: bytes | str) -> OrderAck:
    """The `POST /fapi/v1/order` answer."""
    o = decode(_order_dec, body, "order acknowledgement")
    return OrderAck(order_id=o.orderId, client_order_id=o.clientOrderId, symbol=o.symbol,
                    side=o.side, order_type=o.type, status=o.status,
                    orig_qty=_num(o.origQty, f"order {o.clientOrderId} origQty"),
                    reduce_only=o.reduceOnly, update_time=o.updateTime)


def parse_order(body: bytes | str) -> OrderInfo:
    """The `GET` / `DELETE /fapi/v1/order` answer (http/order_response.json's shape)."""
    return _info(decode(_order_dec, body, "order"))


def parse_orders(body: bytes | str) -> list[OrderInfo]:
    """The `GET /fapi/v1/openOrders` answer."""
    return [_info(o) for o in decode(_orders_dec, body, "open orders")]


def parse_position_risk(body: bytes | str) -> list[PositionInfo]:
    """The `GET /fapi/v2/positionRisk` answer (http/position_risk.json)."""
    out = []
    for p in decode(_positions_dec, body, "positionRisk"):
        w = f"positionRisk {p.symbol}"
        margin = _MARGIN_TYPES.get(p.marginType.lower())
        if margin is None:
            raise PayloadError(f"{w} marginType: expected cross or isolated, got "
                               f"{p.marginType!r}")
        out.append(PositionInfo(
            symbol=p.symbol, position_amt=_num(p.positionAmt, f"{w} positionAmt"),
            entry_price=_num(p.entryPrice, f"{w} entryPrice"),
            mark_price=_num(p.markPrice, f"{w} markPrice"),
            unrealized_pnl=_num(p.unRealizedProfit, f"{w} unRealizedProfit"),
            liquidation_price=_num(p.liquidationPrice, f"{w} liquidationPrice"),
            leverage=_int(p.leverage, f"{w} leverage"), margin_type=margin,
            position_side=p.positionSide, notional=_num(p.notional, f"{w} notional"),
            isolated_margin=_num(p.isolatedMargin, f"{w} isolatedMargin"),
            break_even_price=_num(p.breakEvenPrice, f"{w} breakEvenPrice"),
            max_notional=_num(p.maxNotionalValue, f"{w} maxNotionalValue"),
            update_time=p.updateTime))
    return out


def parse_balances(body: bytes | str) -> list[BalanceInfo]:
    """The `GET /fapi/v2/balance` answer (http/balance.json)."""
    out = []
    for b in decode(_balances_dec, body, "balance"):
        w = f"balance {b.asset}"
        out.append(BalanceInfo(
            asset=b.asset, wallet_balance=_num(b.balance, f"{w} balance"),
            available_balance=_num(b.availableBalance, f"{w} availableBalance"),
            unrealized_pnl=_num(b.crossUnPnl, f"{w} crossUnPnl"),
            cross_wallet_balance=_num(b.crossWalletBalance, f"{w} crossWalletBalance"),
            max_withdraw_amount=_num(b.maxWithdrawAmount, f"{w} maxWithdrawAmount"),
            margin_available=b.marginAvailable, update_time=b.updateTime))
    return out


def parse_account_info(body: bytes | str) -> AccountInfo:
    """The `GET /fapi/v2/account` answer (http/account_info_v2.json)."""
    a = decode(_account_dec, body, "account")
    assets = [BalanceInfo(
        asset=x.asset, wallet_balance=_num(x.walletBalance, f"asset {x.asset}"),
        available_balance=_num(x.availableBalance, f"asset {x.asset}"),
        unrealized_pnl=_num(x.unrealizedProfit, f"asset {x.asset}"),
        cross_wallet_balance=_num(x.crossWalletBalance, f"asset {x.asset}"),
        max_withdraw_amount=_num(x.maxWithdrawAmount, f"asset {x.asset}"),
        margin_available=x.marginAvailable, update_time=x.updateTime) for x in a.assets]
    positions = [AccountPosition(
        symbol=p.symbol, leverage=_int(p.leverage, f"account position {p.symbol} leverage"),
        isolated=p.isolated, position_side=p.positionSide,
        position_amt=_num(p.positionAmt, f"account position {p.symbol}"),
        entry_price=_num(p.entryPrice, f"account position {p.symbol}"),
        update_time=p.updateTime) for p in a.positions]
    return AccountInfo(
        can_trade=a.canTrade, multi_assets_margin=a.multiAssetsMargin,
        total_wallet_balance=_num(a.totalWalletBalance, "account totalWalletBalance"),
        total_margin_balance=_num(a.totalMarginBalance, "account totalMarginBalance"),
        total_unrealized_pnl=_num(a.totalUnrealizedProfit, "account totalUnrealizedProfit"),
        available_balance=_num(a.availableBalance, "account availableBalance"),
        assets=assets, positions=positions)


# ------------------------------------------------------------------- calls


def market_quantity(instrument: Instrument, qty: float, *, ref_price: float | None = None,
                    reduce_only: bool = False) -> str:
    """`qty` rounded down to the step, as sent; raises OrderTooSmall below the minimum
    quantity, or (not reduce-only) below the minimum notional at `ref_price`."""
    ins = instrument
    if not (math.isfinite(qty) and qty > 0):
        raise ValueError(f"{ins.symbol}: order quantity must be a number > 0, got {qty!r}")
    text = on_grid(qty, ins.step_size, down=True)
    q = float(text)
    if q <= 0 or q < ins.min_qty:
        raise OrderTooSmall("below_min_qty", f"{ins.symbol}: quantity {qty:g} is {text} on "
                                             f"the step {ins.step_size:g}, below the minimum "
                                             f"quantity {ins.min_qty:g}")
    if ins.min_notional and not reduce_only:
        if ref_price is None or not (math.isfinite(ref_price) and ref_price > 0):
            raise ValueError(f"{ins.symbol}: a reference price > 0 is needed to check the "
                             f"minimum notional, got {ref_price!r}")
        if q * ref_price < ins.min_notional:
            raise OrderTooSmall("below_min_notional",
                                f"{ins.symbol}: {text} at {ref_price:g} is "
                                f"{q * ref_price:.6g} {ins.quote}, below the minimum "
                                f"notional {ins.min_notional:g}")
    return text


async def place_market_order(rest: RestClient, instrument: Instrument, side: int,
                             qty: float, *, client_order_id: str, reduce_only: bool = False,
                             ref_price: float | None = None) -> OrderAck:
    """`POST /fapi/v1/order`, type MARKET, `side` +1 buy / -1 sell, `qty` rounded down to
    the step. Raises OrderTooSmall (nothing sent), ValueError (a call that cannot be
    right), BinanceAPIError (rejected: its code and msg), RestUncertain (then
    `query_order` by `client_order_id`), RestUnavailable."""
    if side not in (1, -1):
        raise ValueError(f"{instrument.symbol}: side must be +1 (buy) or -1 (sell), "
                         f"got {side!r}")
    quantity = market_quantity(instrument, qty, ref_price=ref_price, reduce_only=reduce_only)
    params: dict[str, Any] = {"symbol": instrument.symbol,
                              "side": "BUY" if side > 0 else "SELL", "type": "MARKET",
                              "quantity": quantity, "newClientOrderId": client_order_id}
    if reduce_only:
        params["reduceOnly"] = "true"
    return parse_order_ack(await rest.signed("POST", ORDER, params))


async def query_order(rest: RestClient, symbol: str, *, client_order_id: str
                      ) -> OrderInfo | None:
    """`GET /fapi/v1/order` by client id; None when Binance does not know it (-2013)."""
    try:
        body = await rest.signed("GET", ORDER, {"symbol": symbol,
                                                "origClientOrderId": client_order_id})
    except BinanceAPIError as exc:
        if exc.code == ORDER_DOES_NOT_EXIST:
            return None
        raise
    return parse_order(body)


async def cancel_order(rest: RestClient, symbol: str, *, client_order_id: str) -> OrderInfo:
    """`DELETE /fapi/v1/order` by client id; BinanceAPIError -2011 for an unknown or no
    longer open order (after a lost reply: the first cancel worked)."""
    return parse_order(await rest.signed("DELETE", ORDER, {
        "symbol": symbol, "origClientOrderId": client_order_id}))


async def open_orders(rest: RestClient, symbol: str | None = None) -> list[OrderInfo]:
    """`GET /fapi/v1/openOrders` (one symbol: weight 1; all: 40)."""
    params = {"symbol": symbol} if symbol else {}
    return parse_orders(await rest.signed("GET", OPEN_ORDERS, params,
                                          weight=1 if symbol else 40))


async def position_risk(rest: RestClient, symbol: str | None = None) -> list[PositionInfo]:
    """`GET /fapi/v2/positionRisk` (weight 5): every symbol's entry (zero positions
    included), or one symbol's."""
    params = {"symbol": symbol} if symbol else {}
    return parse_position_risk(await rest.signed("GET", POSITION_RISK, params, weight=5))


async def account_balances(rest: RestClient) -> list[BalanceInfo]:
    """`GET /fapi/v2/balance` (weight 5)."""
    return parse_balances(await rest.signed("GET", BALANCE, weight=5))


async def account_info(rest: RestClient) -> AccountInfo:
    """`GET /fapi/v2/account` (weight 5)."""
    return parse_account_info(await rest.signed("GET", ACCOUNT, weight=5))
