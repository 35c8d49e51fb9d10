"""The Algo Order client: parsers over the real shared payloads (openAlgoOrders, the
ALGO_UPDATE events), grid rounding, and the calls against exchange-sim on loopback
(place with rounding, query by client id, list, cancel, -2011 for an unknown cancel,
-2013 for an unknown query, a triggered stop reporting its actualOrderId)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from qtraderd.core.instruments import Instrument
from qtraderd.venues.binance.algo import (
    cancel_algo_order,
    cancel_all_algo_orders,
    on_grid,
    open_algo_orders,
    parse_algo_orders,
    parse_algo_update,
    place_algo_order,
    query_algo_order,
)
from qtraderd.venues.binance.payloads import PayloadError
from qtraderd.venues.binance.rest import BinanceAPIError, RestClient
from qtraderd.venues.binance.signing import ApiCredentials
from qtraderd.venues.sim import SimServer, load_market
from tests.conftest import BINANCE
from tests.venues.sim.test_algo_orders import SYM, T, path_csv

KEY, SECRET = "algo-key", "algo-secret"
INS = Instrument(SYM, "PATH", "USDT", tick_size=0.0001, step_size=0.1, min_qty=0.1,
                 min_notional=5)


def test_parses_the_real_open_algo_orders_payload() -> None:
    (o,) = parse_algo_orders((BINANCE / "http/open_algo_orders.json").read_bytes())
    assert (o.algo_id, o.client_algo_id, o.order_type, o.symbol, o.side, o.status) == (
        123456789, "test-algo-order-1", "STOP_MARKET", "BTCUSDT", "BUY", "NEW")
    assert (o.quantity, o.trigger_price, o.working_type, o.reduce_only) == (
        0.001, 45000.0, "MARK_PRICE", False)
    assert o.actual_order_id is None and o.is_open and o.create_time == 1625474304765


@pytest.mark.parametrize("name,status", [("algo_update_new.json", "NEW"),
                                         ("algo_update_canceled.json", "CANCELED")])
def test_parses_the_real_algo_update_events(name: str, status: str) -> None:
    u = parse_algo_update((BINANCE / "user_data" / name).read_bytes())
    o = u.order
    assert (u.event_time, u.transaction_time) == (1750515742303, 1750515742297)
    assert (o.client_algo_id, o.algo_id, o.order_type, o.symbol, o.side, o.status) == (
        "Q5xaq5EGKgXXa0fD7fs0Ip", 2148719, "TAKE_PROFIT", "BNBUSDT", "SELL", status)
    assert (o.quantity, o.trigger_price, o.working_type, o.reason) == (
        0.01, 750.0, "CONTRACT_PRICE", "Reduce Only reject")
    assert o.actual_order_id is None and o.is_open is (status == "NEW")


def test_malformed_payloads_name_the_problem() -> None:
    with pytest.raises(PayloadError, match="ALGO_UPDATE"):
        parse_algo_update(b'{"e": "ORDER_TRADE_UPDATE", "T": 1, "E": 1, "o": {}}')
    with pytest.raises(PayloadError, match="triggerPrice"):
        parse_algo_orders(b'[{"algoId": 1, "clientAlgoId": "x", "symbol": "S", "side": '
                          b'"BUY", "algoStatus": "NEW", "triggerPrice": "abc"}]')


def test_on_grid() -> None:
    assert on_grid(1.80004, 0.0001) == "1.8000"
    assert on_grid(1.80006, 0.0001) == "1.8001"
    assert on_grid(12.39, 0.1, down=True) == "12.3"
    assert on_grid(0.00123, 0.001, down=True) == "0.001"
    assert on_grid(3.5, 0.0) == "3.5"


async def test_calls_against_the_simulator(nursery: trio.Nursery, tmp_path: Path) -> None:
    market = load_market(csv=[path_csv(tmp_path)], start_ms=T[1])
    sim = SimServer(market, paused=True, api_key=KEY, api_secret=SECRET, speed=15_000)
    await nursery.start(sim.serve)
    async with RestClient(sim.url, credentials=ApiCredentials(KEY, SECRET)) as rest:
        await rest.signed("POST", "/fapi/v1/order", {"symbol": SYM, "side": "BUY",
                                                     "type": "MARKET", "quantity": "100"})
        sl = await place_algo_order(rest, INS, "SELL", "STOP_MARKET", client_algo_id="sl-1",
                                    quantity=100.04, reduce_only=True, trigger_price=1.80004)
        assert (sl.status, sl.quantity, sl.trigger_price, sl.reduce_only) == (
            "NEW", 100.0, 1.8, True)
        tp = await place_algo_order(rest, INS, "SELL", "TAKE_PROFIT_MARKET",
                                    client_algo_id="tp-1", close_position=True,
                                    trigger_price=2.5)
        assert tp.close_position and tp.order_type == "TAKE_PROFIT_MARKET"
        assert [o.client_algo_id for o in await open_algo_orders(rest, SYM)] == ["sl-1",
                                                                                 "tp-1"]
        got = await query_algo_order(rest, client_algo_id="tp-1")
        assert got.algo_id == tp.algo_id
        done = await cancel_algo_order(rest, algo_id=tp.algo_id)
        assert done.client_algo_id == "tp-1"
        with pytest.raises(BinanceAPIError) as e:
            await cancel_algo_order(rest, client_algo_id="tp-1")
        assert e.value.code == -2011
        with pytest.raises(BinanceAPIError) as e:
            await query_algo_order(rest, client_algo_id="never")
        assert e.value.code == -2013
        with pytest.raises(ValueError):
            await place_algo_order(rest, INS, "SELL", "STOP_MARKET", client_algo_id="x",
                                   trigger_price=1.0)
        sim.resume()
        await sim.data_ended.wait()
        sl = await query_algo_order(rest, client_algo_id="sl-1")
        assert sl.status == "FINISHED" and sl.actual_order_id is not None
        assert 1.69 < sl.avg_price <= 1.7
        assert await open_algo_orders(rest) == []
        await cancel_all_algo_orders(rest, SYM)  # nothing open: still a success
