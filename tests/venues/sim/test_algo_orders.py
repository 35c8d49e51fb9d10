"""exchange-sim's Algo Order API over real sockets: STOP_MARKET / TAKE_PROFIT_MARKET /
TRAILING_STOP_MARKET placed on `/fapi/v1/algoOrder`, triggered on the simulator's own price
path into a regular MARKET order (a new orderId in `orders`, `actualOrderId` on the algo
order), reduce-only and close-position honoured (nothing to close: EXPIRED), the
ALGO_UPDATE events in the shared fixture's shape, cancel / cancel-all / query, and
Binance's codes (-1111, -2021, -4116, -2011, -2013, -4137, -4120 still on /fapi/v1/order).

The price path is a made-up CSV of flat candles (each candle one price), so each trigger
moment is known; the test lets the paused simulator run at high speed and waits on
`data_ended` (a trio event): every kline update, and so every trigger check, has happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from qtraderd.venues.sim.server import SimServer
from tests.venues.sim.conftest import StartSim
from tests.venues.sim.sim_helpers import IV, TIMES, same_shape, shared
from tests.venues.sim.test_sim_account import KEY, SECRET, Signed

SYM = "PATHUSDT"
# one flat candle per price: history, then the live path the simulator walks
PRICES = [2.0001, 2.0, 2.2, 1.9, 1.7, 2.3]
T = TIMES[-len(PRICES):]  # the candles' open times


def path_csv(tmp_path: Path) -> Path:
    lines = ["open_time,open,high,low,close,volume"]
    lines += [f"{t},{p},{p},{p},{p},1000.5" for t, p in zip(T, PRICES, strict=True)]
    f = tmp_path / f"{SYM}-5m.csv"
    f.write_text("\n".join(lines) + "\n")
    return f


class Client:
    """Signed calls stamped with the simulator's current time."""

    def __init__(self, sim: SimServer, http: httpx.AsyncClient) -> None:
        self.sim, self.http, self.s = sim, http, Signed(http, KEY, SECRET)

    async def call(self, method: str, path: str, **params: Any) -> httpx.Response:
        return await self.s.call(method, path, timestamp=self.sim.now_ms(), **params)

    async def ok(self, method: str, path: str, **params: Any) -> Any:
        r = await self.call(method, path, **params)
        assert r.status_code == 200, r.text
        return r.json()

    async def code(self, method: str, path: str, **params: Any) -> int:
        r = await self.call(method, path, **params)
        assert r.status_code == 400, r.text
        return int(r.json()["code"])

    async def algo(self, **params: Any) -> Any:
        return await self.ok("POST", "/fapi/v1/algoOrder", symbol=SYM, algoType="CONDITIONAL",
                             **params)

    async def state(self) -> Any:
        return (await self.http.get("/sim/state")).json()


async def _start(start_sim: StartSim, tmp_path: Path) -> tuple[SimServer, list[Any]]:
    sim = await start_sim(live=len(PRICES) - 1, csv_files=[path_csv(tmp_path)], paused=True,
                          api_key=KEY, api_secret=SECRET, speed=IV / 1000 / 0.02)
    events: list[Any] = []
    sim.algo_api.publish = events.append
    return sim, events


async def _long(c: Client, qty: str = "100") -> None:
    await c.ok("POST", "/fapi/v1/order", symbol=SYM, side="BUY", type="MARKET",
               quantity=qty, newClientOrderId="entry")


async def _run(sim: SimServer) -> None:
    """Walk the whole price path: every kline update (and trigger check) has run."""
    sim.resume()
    await sim.data_ended.wait()


def _statuses(events: list[Any], cid: str) -> list[str]:
    return [e["o"]["X"] for e in events if e["o"]["caid"] == cid]


async def test_stop_market_triggers_once_and_closes_the_long(start_sim: StartSim,
                                                             tmp_path: Path) -> None:
    sim, events = await _start(start_sim, tmp_path)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        c = Client(sim, http)
        await _long(c)
        placed = await c.algo(side="SELL", type="STOP_MARKET", quantity="100",
                              reduceOnly="true", triggerPrice="1.8000", clientAlgoId="sl-1")
        assert (placed["algoStatus"], placed["orderType"], placed["triggerPrice"],
                placed["workingType"], placed["clientAlgoId"]) == (
            "NEW", "STOP_MARKET", "1.8000", "MARK_PRICE", "sl-1")
        listed = await c.ok("GET", "/fapi/v1/openAlgoOrders", symbol=SYM)
        same_shape(listed, shared("http/open_algo_orders.json"))
        assert listed[0]["algoId"] == placed["algoId"]
        await _run(sim)

        got = await c.ok("GET", "/fapi/v1/algoOrder", clientAlgoId="sl-1")
        assert got["algoStatus"] == "FINISHED" and got["actualOrderId"]
        assert sim.algo_api.triggers == 1
        book = await c.state()
        assert book["positions"] == []
        (algo,) = book["algo_orders"]
        assert (algo["clientAlgoId"], algo["status"], algo["type"], algo["side"],
                algo["triggerPrice"], algo["time"]) == ("sl-1", "FINISHED", "STOP_MARKET",
                                                        "SELL", "1.8000", T[1])
        fill = [o for o in book["orders"] if o.get("orderId") == algo["actualOrderId"]]
        assert len(fill) == 1 and str(fill[0]["orderId"]) == got["actualOrderId"]
        assert (fill[0]["type"], fill[0]["side"], fill[0]["status"], fill[0]["reduceOnly"],
                fill[0]["executedQty"]) == ("MARKET", "SELL", "FILLED", True, "100.0")
        assert T[4] <= fill[0]["time"] < T[4] + IV  # in the candle at 1.7, not before
        assert 1.69 < float(fill[0]["avgPrice"]) <= 1.7
        assert await c.ok("GET", "/fapi/v1/openAlgoOrders") == []

    assert _statuses(events, "sl-1") == ["NEW", "TRIGGERING", "TRIGGERED", "FINISHED"]
    for e in events:
        same_shape(e, shared("user_data/algo_update_new.json"))
    last = events[-1]["o"]
    assert (last["ai"], last["aq"], last["act"], last["R"], last["tp"]) == (
        got["actualOrderId"], "100.0", "MARKET", True, "1.8000")


async def test_take_profit_close_position_and_its_sibling_expires(start_sim: StartSim,
                                                                  tmp_path: Path) -> None:
    sim, events = await _start(start_sim, tmp_path)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        c = Client(sim, http)
        await _long(c, "50")
        await c.algo(side="SELL", type="TAKE_PROFIT_MARKET", closePosition="true",
                     triggerPrice="2.15", clientAlgoId="tp-1", workingType="CONTRACT_PRICE")
        await c.algo(side="SELL", type="STOP_MARKET", closePosition="true",
                     triggerPrice="1.8", clientAlgoId="sl-1")
        await _run(sim)
        book = await c.state()
        assert book["positions"] == []
        status = {a["clientAlgoId"]: a["status"] for a in book["algo_orders"]}
        assert status == {"tp-1": "FINISHED", "sl-1": "EXPIRED"}
        tp = await c.ok("GET", "/fapi/v1/algoOrder", clientAlgoId="tp-1")
        fill = next(o for o in book["orders"] if str(o.get("orderId")) == tp["actualOrderId"])
        assert (fill["executedQty"], fill["side"]) == ("50.0", "SELL")
        assert T[2] <= fill["time"] < T[2] + IV  # at 2.2
        assert float(fill["avgPrice"]) > 2.19
    assert _statuses(events, "sl-1") == ["NEW", "TRIGGERING", "EXPIRED"]
    assert events[-1]["o"]["rm"] == "Reduce Only reject" and events[-1]["o"]["cp"] is True
    assert len([o for o in book["orders"] if o["status"] == "FILLED"]) == 2  # entry + tp


async def test_trailing_stop_follows_the_high_and_triggers_on_the_retrace(
        start_sim: StartSim, tmp_path: Path) -> None:
    sim, events = await _start(start_sim, tmp_path)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        c = Client(sim, http)
        await _long(c)
        placed = await c.algo(side="SELL", type="TRAILING_STOP_MARKET", quantity="100",
                              reduceOnly="true", callbackRate="5", clientAlgoId="trail")
        assert (placed["triggerPrice"], placed["callbackRate"]) == ("1.9000", "5")
        await _run(sim)
        book = await c.state()
        (algo,) = book["algo_orders"]
        # best 2.2 -> stop 2.09; the drop to 1.9 (not the later 1.7) triggers it
        assert (algo["status"], algo["triggerPrice"]) == ("FINISHED", "2.0900")
        fill = next(o for o in book["orders"] if o.get("orderId") == algo["actualOrderId"])
        assert T[3] <= fill["time"] < T[3] + IV
        assert book["positions"] == []
    assert _statuses(events, "trail") == ["NEW", "TRIGGERING", "TRIGGERED", "FINISHED"]


async def test_cancel_query_and_rejections(start_sim: StartSim, tmp_path: Path) -> None:
    sim, events = await _start(start_sim, tmp_path)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        c = Client(sim, http)
        post = "POST", "/fapi/v1/algoOrder"
        base = {"symbol": SYM, "algoType": "CONDITIONAL", "side": "SELL", "quantity": "10"}
        # conditional types stay refused on the regular endpoint
        r = await c.call("POST", "/fapi/v1/order", symbol=SYM, side="SELL",
                         type="STOP_MARKET", quantity="10", stopPrice="1.8")
        assert r.json()["code"] == -4120
        assert await c.code(*post, **base, type="STOP_MARKET", triggerPrice="1.80005") == -1111
        assert await c.code(*post, **base, type="STOP_MARKET", triggerPrice="2.1") == -2021
        assert await c.code(*post, **base, type="STOP", triggerPrice="1.8") == -1116
        assert await c.code(*post, **{**base, "algoType": "VP"}, type="STOP_MARKET",
                            triggerPrice="1.8") == -1130
        assert await c.code(*post, **base, type="STOP_MARKET", triggerPrice="1.8",
                            closePosition="true") == -4137
        assert await c.code(*post, **base, type="TRAILING_STOP_MARKET",
                            callbackRate="25") == -1130
        assert await c.code(*post, **base, type="TRAILING_STOP_MARKET", callbackRate="1",
                            activatePrice="1.9") == -4135
        await c.algo(side="SELL", type="STOP_MARKET", quantity="10", triggerPrice="1.8",
                     clientAlgoId="a")
        assert await c.code(*post, **base, type="STOP_MARKET", triggerPrice="1.7",
                            clientAlgoId="a") == -4116
        b = await c.algo(side="BUY", type="STOP_MARKET", quantity="10", triggerPrice="2.1",
                         clientAlgoId="b")
        await c.algo(side="BUY", type="TAKE_PROFIT_MARKET", quantity="10",
                     triggerPrice="1.5", clientAlgoId="c")
        done = await c.ok("DELETE", "/fapi/v1/algoOrder", algoId=b["algoId"])
        assert done == {"algoId": b["algoId"], "clientAlgoId": "b", "code": "200",
                        "msg": "success"}
        assert await c.code("DELETE", "/fapi/v1/algoOrder", algoId=b["algoId"]) == -2011
        assert await c.code("DELETE", "/fapi/v1/algoOrder", clientAlgoId="nope") == -2011
        assert await c.code("GET", "/fapi/v1/algoOrder", clientAlgoId="nope") == -2013
        got = await c.ok("GET", "/fapi/v1/algoOrder", algoId=b["algoId"])
        assert got["algoStatus"] == "CANCELED"
        assert [o["clientAlgoId"] for o in await c.ok("GET", "/fapi/v1/openAlgoOrders")
                ] == ["a", "c"]
        await c.ok("DELETE", "/fapi/v1/algoOpenOrders", symbol=SYM)
        assert await c.ok("GET", "/fapi/v1/openAlgoOrders", symbol=SYM) == []
        book = await c.state()
        rows = [(a["clientAlgoId"], a["status"], a.get("code")) for a in book["algo_orders"]]
        assert rows[-4:] == [("a", "CANCELED", None), ("a", "REJECTED", -4116),
                             ("b", "CANCELED", None), ("c", "CANCELED", None)]
        assert [a.get("code") for a in book["algo_orders"][:7]] == [
            -1111, -2021, -1116, -1130, -4137, -1130, -4135]
        await _run(sim)  # nothing left to trigger
        assert sim.algo_api.triggers == 0
    assert _statuses(events, "b") == ["NEW", "CANCELED"]


@pytest.mark.parametrize("side,otype,trigger,mark,hit", [
    ("SELL", "STOP_MARKET", 1.8, 1.8, True), ("SELL", "STOP_MARKET", 1.8, 1.81, False),
    ("BUY", "STOP_MARKET", 2.1, 2.1, True), ("BUY", "STOP_MARKET", 2.1, 2.0, False),
    ("SELL", "TAKE_PROFIT_MARKET", 2.1, 2.1, True), ("BUY", "TAKE_PROFIT_MARKET", 1.5, 1.6,
                                                      False)])
def test_trigger_rule(side: str, otype: str, trigger: float, mark: float, hit: bool) -> None:
    from qtraderd.venues.sim.algo import _crossed
    assert _crossed(otype, side, trigger, mark) is hit
