"""exchange-sim's regular order endpoints over real sockets: MARKET fills with slippage and
taker fee moving the one-way position and the balance, Binance's 2026 acknowledgement
(no fills in it), the order query after it, the rejections (-4120, -1116, -1111, -4164,
-2019, -4116, -2022, -2013, -2011) and `/sim/state`'s record of every request."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from qtraderd.venues.sim.account import Position
from qtraderd.venues.sim.orders import apply_fill, fill_price
from tests.venues.sim.conftest import StartSim
from tests.venues.sim.sim_helpers import same_shape, shared
from tests.venues.sim.test_sim_account import KEY, NOW, SECRET, Signed

SYM = "XRPUSDT"


async def _sim(start_sim: StartSim, **kw: Any) -> Any:
    return await start_sim(paused=True, api_key=KEY, api_secret=SECRET, **kw)


async def _wallet(s: Signed) -> float:
    return float((await s.ok("GET", "/fapi/v2/balance"))[0]["balance"])


async def test_market_buy_then_sell_flattens_with_fees_and_pnl(start_sim: StartSim) -> None:
    sim = await _sim(start_sim, slippage_bps=10, taker_fee=0.001)
    mark = sim.account.mark_price(SYM)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        s = Signed(client)
        ack = await s.ok("POST", "/fapi/v1/order", symbol=SYM, side="BUY", type="MARKET",
                         quantity="1000", newClientOrderId="buy-1")
        # the 2026 acknowledgement: no fills in it, whatever the order did
        assert (ack["status"], ack["executedQty"], ack["clientOrderId"]) == ("NEW", "0.0",
                                                                             "buy-1")
        assert "avgPrice" not in ack and "cumQuote" not in ack
        theirs = {k: v for k, v in shared("http/order_response.json").items()
                  if k not in ("avgPrice", "cumQuote")}
        same_shape(ack, theirs)
        got = await s.ok("GET", "/fapi/v1/order", symbol=SYM, origClientOrderId="buy-1")
        same_shape(got, shared("http/order_response.json"))
        buy = float(got["avgPrice"])
        assert (got["status"], got["executedQty"], got["orderId"]) == ("FILLED", "1000.0",
                                                                       ack["orderId"])
        assert mark * 1.001 <= buy < mark * 1.001 + 0.0001  # paid up 10 bps, on a tick
        assert float(got["cumQuote"]) == pytest.approx(1000 * buy)
        by_id = await s.ok("GET", "/fapi/v1/order", symbol=SYM, orderId=ack["orderId"])
        assert by_id == got
        risk = (await s.ok("GET", "/fapi/v2/positionRisk", symbol=SYM))[0]
        assert (float(risk["positionAmt"]), float(risk["entryPrice"])) == (1000.0, buy)
        assert await _wallet(s) == pytest.approx(10_000 - 1000 * buy * 0.001)

        ack2 = await s.ok("POST", "/fapi/v1/order", symbol=SYM, side="SELL", type="MARKET",
                          quantity="1000", newOrderRespType="RESULT")
        assert ack2["status"] == "NEW" and ack2["clientOrderId"]  # generated id
        sold = await s.ok("GET", "/fapi/v1/order", symbol=SYM,
                          origClientOrderId=ack2["clientOrderId"])
        sell = float(sold["avgPrice"])
        assert mark * 0.999 - 0.0001 < sell <= mark * 0.999  # got 10 bps less
        fees = 1000 * (buy + sell) * 0.001
        assert await _wallet(s) == pytest.approx(10_000 + 1000 * (sell - buy) - fees)
        state = await client.get("/sim/state")
        assert state.json()["positions"] == []
        assert await s.ok("GET", "/fapi/v1/openOrders") == []
        r = await s.call("DELETE", "/fapi/v1/order", symbol=SYM, origClientOrderId="buy-1")
        assert (r.status_code, r.json()) == (400, {"code": -2011,
                                                   "msg": "Unknown order sent."})


async def test_rejections_carry_binance_codes_and_every_request_is_recorded(
        start_sim: StartSim) -> None:
    sim = await _sim(start_sim)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        s = Signed(client)

        async def code(**params: Any) -> int:
            r = await s.call("POST", "/fapi/v1/order", symbol=SYM, **params)
            assert r.status_code == 400, r.text
            return int(r.json()["code"])

        r = await s.call("POST", "/fapi/v1/order", symbol=SYM, side="SELL",
                         type="STOP_MARKET", quantity="100", stopPrice="1.0",
                         newClientOrderId="stop-1")
        assert r.json() == {"code": -4120, "msg": "Order type not supported for this "
                            "endpoint. Please use the Algo Order API endpoints instead."}
        assert await code(side="BUY", type="LIMIT", quantity="10", price="1") == -1116
        assert await code(side="BUY", type="MARKET", quantity="10.05") == -1111
        assert await code(side="BUY", type="MARKET", quantity="4") == -4164  # < 5 USDT
        assert await code(side="BUY", type="MARKET", quantity="1000000") == -2019
        assert await code(side="SELL", type="MARKET", quantity="10",
                          reduceOnly="true") == -2022  # nothing to reduce
        await s.ok("POST", "/fapi/v1/order", symbol=SYM, side="BUY", type="MARKET",
                   quantity="10", newClientOrderId="dup")
        r = await s.call("POST", "/fapi/v1/order", symbol=SYM, side="BUY", type="MARKET",
                         quantity="10", newClientOrderId="dup")
        assert r.json() == {"code": -4116, "msg": "ClientOrderId is duplicated."}
        r = await s.call("POST", "/fapi/v1/order", timestamp=NOW - 60_000, symbol=SYM,
                         side="BUY", type="MARKET", quantity="10", newClientOrderId="late")
        assert r.json()["code"] == -1021
        r = await s.call("GET", "/fapi/v1/order", symbol=SYM, origClientOrderId="stop-1")
        assert r.json() == {"code": -2013, "msg": "Order does not exist."}
        # a reduce-only sell larger than the position closes it, no more
        await s.ok("POST", "/fapi/v1/order", symbol=SYM, side="SELL", type="MARKET",
                   quantity="50", reduceOnly="true", newClientOrderId="close")

        book = (await client.get("/sim/state")).json()
        orders = book["orders"]
        assert [(o["clientOrderId"], o["type"], o["status"], o.get("code"))
                for o in orders] == [
            ("stop-1", "STOP_MARKET", "REJECTED", -4120),
            ("", "LIMIT", "REJECTED", -1116),
            ("", "MARKET", "REJECTED", -1111),
            ("", "MARKET", "REJECTED", -4164),
            ("", "MARKET", "REJECTED", -2019),
            ("", "MARKET", "REJECTED", -2022),
            ("dup", "MARKET", "FILLED", None),
            ("dup", "MARKET", "REJECTED", -4116),
            ("late", "MARKET", "REJECTED", -1021),
            ("close", "MARKET", "FILLED", None)]
        assert all(o["symbol"] == SYM and o["time"] == NOW and o["closePosition"] is False
                   for o in orders)
        assert [o["reduceOnly"] for o in orders][5:] == [True, False, False, False, True]
        assert orders[-1]["executedQty"] == "10.0"
        assert book["positions"] == []


def test_fill_arithmetic_reduces_and_flips() -> None:
    p = Position(SYM)
    assert apply_fill(p, 10, 2.0) == 0.0
    assert apply_fill(p, 30, 1.0) == 0.0
    assert (p.amount, p.entry_price) == (40, 1.25)
    assert apply_fill(p, -20, 1.5) == pytest.approx(5.0)  # half closed, +0.25 each
    assert (p.amount, p.entry_price) == (20, 1.25)
    assert apply_fill(p, -30, 1.0) == pytest.approx(-5.0)  # flips short at the fill
    assert (p.amount, p.entry_price) == (-10, 1.0)
    assert apply_fill(p, 10, 0.5) == pytest.approx(5.0)
    assert (p.amount, p.entry_price) == (0.0, 0.0)
    assert fill_price(1.0741, "BUY", 2, 0.0001) == pytest.approx(1.0744)
    assert fill_price(1.0741, "SELL", 2, 0.0001) == pytest.approx(1.0738)
    assert fill_price(1.0741, "BUY", 0, 0.0001) == pytest.approx(1.0741)
