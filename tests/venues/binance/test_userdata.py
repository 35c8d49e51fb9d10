"""User data stream parsers over every shared fixture (real Binance payloads): each event
type to its typed payload with the fixture's values; unknown types and fields tolerated."""

from __future__ import annotations

import json

import pytest

from qtraderd.venues.binance.payloads import PayloadError
from qtraderd.venues.binance.userdata import (
    BinanceAccountUpdate,
    BinanceAlgoUpdate,
    BinanceBalance,
    BinanceOrderUpdate,
    BinancePosition,
    BinanceTradeLite,
    BinanceUnknownEvent,
    ListenKeyExpired,
    parse_user_event,
)
from tests.conftest import BINANCE

USER = BINANCE / "user_data"


def load(name: str) -> bytes:
    return (USER / name).read_bytes()


def order(name: str) -> BinanceOrderUpdate:
    ev = parse_user_event(load(name))
    assert isinstance(ev, BinanceOrderUpdate)
    return ev


def test_every_fixture_parses_to_a_known_type() -> None:
    names = sorted(p.name for p in USER.glob("*.json"))
    assert len(names) >= 14
    for name in names:
        ev = parse_user_event(load(name))
        assert not isinstance(ev, BinanceUnknownEvent), name
        assert ev.event_time == json.loads(load(name))["E"], name


def test_order_update_new() -> None:
    ev = order("order_update_new.json")
    assert (ev.symbol, ev.client_id, ev.order_id, ev.side) == ("BTCUSDT", "TEST", 8886774,
                                                               "BUY")
    assert (ev.order_type, ev.orig_type, ev.status, ev.execution_type) == (
        "TRAILING_STOP_MARKET", "TRAILING_STOP_MARKET", "NEW", "NEW")
    assert (ev.qty, ev.stop_price, ev.last_qty, ev.cum_qty) == (0.001, 7103.04, 0.0, 0.0)
    assert (ev.commission, ev.commission_asset, ev.position_side) == (0.0, "USDT", "LONG")
    assert (ev.event_time, ev.transaction_time, ev.trade_time) == (1568879465651,) * 3
    assert not ev.is_fill and not ev.reduce_only


def test_order_update_trades() -> None:
    full = order("order_update_trade.json")
    assert (full.execution_type, full.status, full.last_qty, full.last_price) == (
        "TRADE", "PARTIALLY_FILLED", 0.001, 7100.5)
    assert (full.commission, full.commission_asset, full.realized_pnl) == (0.01, "USDT",
                                                                          12.34)
    assert (full.trade_id, full.maker, full.is_fill) == (12345678, True, True)
    part = order("order_update_trade_partial.json")
    assert (part.qty, part.cum_qty, part.last_qty) == (0.002, 0.001, 0.001)
    assert part.is_fill and part.cum_qty < part.qty


@pytest.mark.parametrize("name,status,cid,qty,price,pnl,fee", [
    ("order_update_calculated.json", "FILLED", "autoclose-1234567890", 0.014, 9910.12, -5.67,
     0.06937084),
    ("order_update_adl.json", "NEW_ADL", "adl_autoclose_12345", 0.005, 42000.0, -2.5, 0.105),
    ("order_update_insurance.json", "NEW_INSURANCE", "autoclose-insurance-5678", 0.02,
     45000.0, -8.0, 0.45),
    ("order_update_settlement.json", "FILLED", "settlement_autoclose-9999", 0.01, 50000.0,
     -10.0, 0.25),
])
def test_exchange_closes_are_fills(name: str, status: str, cid: str, qty: float,
                                   price: float, pnl: float, fee: float) -> None:
    ev = order(name)
    assert (ev.status, ev.client_id, ev.last_qty, ev.last_price) == (status, cid, qty, price)
    assert (ev.realized_pnl, ev.commission, ev.reduce_only, ev.is_fill) == (pnl, fee, True,
                                                                            True)


def test_calculated_pending_has_no_fill_and_no_commission() -> None:
    ev = order("order_update_calculated_pending.json")
    assert (ev.execution_type, ev.status, ev.last_qty) == ("CALCULATED", "NEW", 0.0)
    assert (ev.commission, ev.commission_asset, ev.is_fill) == (0.0, "", False)


def test_delivery_close_without_commission_fields() -> None:
    ev = order("order_update_delivery.json")
    assert (ev.symbol, ev.status, ev.last_qty, ev.last_price) == ("BTCUSD_240329", "FILLED",
                                                                  1.0, 70000.0)
    assert (ev.commission, ev.commission_asset, ev.trade_id) == (0.0, "", 12346003)


@pytest.mark.parametrize("name,status", [("algo_update_new.json", "NEW"),
                                         ("algo_update_canceled.json", "CANCELED")])
def test_algo_updates(name: str, status: str) -> None:
    ev = parse_user_event(load(name))
    assert isinstance(ev, BinanceAlgoUpdate)
    assert (ev.client_algo_id, ev.algo_id, ev.status) == ("Q5xaq5EGKgXXa0fD7fs0Ip", 2148719,
                                                         status)
    assert (ev.algo_type, ev.order_type, ev.symbol, ev.side) == ("CONDITIONAL",
                                                                 "TAKE_PROFIT", "BNBUSDT",
                                                                 "SELL")
    assert (ev.qty, ev.trigger_price, ev.price, ev.actual_order_id) == (0.01, 750.0, 750.0,
                                                                        "")
    assert (ev.working_type, ev.reduce_only, ev.close_position) == ("CONTRACT_PRICE", False,
                                                                    False)
    assert (ev.reason, ev.transaction_time, ev.event_time) == ("Reduce Only reject",
                                                              1750515742297, 1750515742303)


def test_account_update_positions_and_balances() -> None:
    ev = parse_user_event(load("account_update.json"))
    assert isinstance(ev, BinanceAccountUpdate)
    assert ev.reason == "ORDER"
    assert ev.balances == (BinanceBalance("USDT", 122624.12345678, 100.12345678,
                                          50.12345678),)
    assert len(ev.positions) == 3
    assert ev.positions[1] == BinancePosition("BTCUSDT", 20.0, 6563.6, 6563.559, 0.0,
                                              2850.212, "isolated", 13200.70726908, "LONG")
    assert (ev.positions[2].amount, ev.positions[2].accumulated_realized) == (-10.0, -45.04)


def test_account_update_bnfcr() -> None:
    ev = parse_user_event(load("account_update_bnfcr.json"))
    assert isinstance(ev, BinanceAccountUpdate)
    assert ev.balances == (BinanceBalance("BNFCR", 5001.28983031, 5001.28983031, 0.0),)
    assert ev.positions == () and ev.transaction_time == 1781606859764


def test_trade_lite() -> None:
    ev = parse_user_event(load("trade_lite.json"))
    assert ev == BinanceTradeLite(1568879465651, 1568879465651, "BTCUSDT", "TEST", "BUY",
                                  0.001, 7100.5, 8886774, 0.001, 7100.5, 12345678, True)


def test_listen_key_expired_with_int_or_string_time_and_in_a_wrapper() -> None:
    a = parse_user_event(b'{"e":"listenKeyExpired","E":1576653824250,"listenKey":"abc"}')
    b = parse_user_event(b'{"stream":"abc","data":{"e":"listenKeyExpired",'
                         b'"E":"1576653824250","listenKey":"abc"}}')
    assert a == b == ListenKeyExpired(1576653824250, "abc")


def test_unknown_fields_ignored_unknown_types_typed() -> None:
    doc = json.loads(load("order_update_trade.json"))
    doc["o"]["gtd"], doc["o"]["pm"], doc["new_top_level"] = 0, "NONE", {"x": 1}
    assert parse_user_event(json.dumps(doc)) == order("order_update_trade.json")
    ev = parse_user_event(b'{"e":"STRATEGY_UPDATE","E":5,"su":{}}')
    assert isinstance(ev, BinanceUnknownEvent)
    assert (ev.event_type, ev.event_time) == ("STRATEGY_UPDATE", 5)


@pytest.mark.parametrize("raw,words", [
    (b"not json", "user data frame"),
    (b'{"E": 1}', "without an event type"),
    (b'{"e":"ORDER_TRADE_UPDATE","E":1,"o":{"s":"X"}}', "ORDER_TRADE_UPDATE"),
    (b'{"e":"TRADE_LITE","E":1,"s":"X","c":"c","S":"BUY","q":"x","p":"1","i":1,"l":"1",'
     b'"L":"1","t":1}', "TRADE_LITE X c q"),
])
def test_malformed_frames_name_the_problem(raw: bytes, words: str) -> None:
    with pytest.raises(PayloadError, match=words):
        parse_user_event(raw)


def test_duplicate_frames_parse_equal() -> None:
    raw = load("order_update_trade.json")
    assert parse_user_event(raw) == parse_user_event(raw)
