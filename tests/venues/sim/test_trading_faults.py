"""exchange-sim's trading faults and funding over real sockets on loopback.

`lost_reply` and `order_5xx` book the order (filled, events published) and then lose or
spoil the answer: qtraderd's RestClient must report RestUncertain, and the order must be
found by its client id. User-event faults strike ALGO_UPDATE like any other event.
Funding settles in SIMULATOR time: a flat price path makes every fee exact, and the
FUNDING_FEE ACCOUNT_UPDATE must parse with the daemon's own parser.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from websockets.trio.client import ClientConnection, connect

from qtraderd.venues.binance.rest import RestClient, RestUncertain
from qtraderd.venues.binance.signing import ApiCredentials
from qtraderd.venues.binance.userdata import BinanceAccountUpdate, parse_user_event
from qtraderd.venues.binance.userstream import private_stream_url
from qtraderd.venues.sim import SimServer
from tests.venues.sim.conftest import StartSim
from tests.venues.sim.sim_helpers import IV, TIMES, same_shape, shared
from tests.venues.sim.test_sim_account import KEY, SECRET, Signed

SYM = "XRPUSDT"
FLAT = "FLATUSDT"
PRICE = 2.0


async def _sim(start_sim: StartSim, **kw: Any) -> SimServer:
    return await start_sim(paused=True, api_key=KEY, api_secret=SECRET, **kw)


@asynccontextmanager
async def _rest(sim: SimServer) -> AsyncIterator[RestClient]:
    async with RestClient(sim.url, credentials=ApiCredentials(KEY, SECRET),
                          max_attempts=1) as rest:
        yield rest


async def _state(sim: SimServer) -> Any:
    async with httpx.AsyncClient(base_url=sim.url) as client:
        return (await client.get("/sim/state")).json()


@asynccontextmanager
async def _private(sim: SimServer) -> AsyncIterator[ClientConnection]:
    """A raw connection to the account's private stream (connected when yielded)."""
    async with httpx.AsyncClient(base_url=sim.url) as client:
        r = await client.post("/fapi/v1/listenKey", headers={"X-MBX-APIKEY": KEY})
        key = r.json()["listenKey"]
    async with connect(private_stream_url(sim.ws_url, key)) as ws:
        with trio.fail_after(5):
            while sim.user_events.connections < 1:
                await sim.user_events.changed.wait()
        yield ws


async def _frames(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    with trio.fail_after(5):
        return [msgspec.json.decode(await ws.recv()) for _ in range(n)]


@pytest.mark.parametrize(("fault", "failure", "mark"), [
    ("lost_reply=1", "RemoteProtocolError", ("reply_lost", True)),
    ("order_5xx=1", "HTTP 503", ("reply_status", 503)),
])
async def test_an_order_is_filled_though_its_reply_is_lost(
        start_sim: StartSim, fault: str, failure: str, mark: tuple[str, object]) -> None:
    sim = await _sim(start_sim, faults=fault)
    async with _rest(sim) as rest:
        with pytest.raises(RestUncertain) as uncertain:
            await rest.signed("POST", "/fapi/v1/order", {
                "symbol": SYM, "side": "BUY", "type": "MARKET", "quantity": "100",
                "newClientOrderId": "lost-1"})
        assert failure in uncertain.value.failure
        state = await _state(sim)
        (row,) = state["orders"]
        assert (row["clientOrderId"], row["status"], row["executedQty"], row[mark[0]]) == (
            "lost-1", "FILLED", "100.0", mark[1])
        assert state["faults"] == {fault.split("=")[0]: 1}
        assert state["positions"][0]["positionAmt"] == "100.0"
        assert sim.user_events.published == 4  # NEW, TRADE_LITE, FILLED, ACCOUNT_UPDATE
        sim.set_faults("")
        got = msgspec.json.decode(await rest.signed("GET", "/fapi/v1/order", {
            "symbol": SYM, "origClientOrderId": "lost-1"}))
        assert (got["status"], got["orderId"]) == ("FILLED", row["orderId"])


async def test_order_5xx_answers_binance_unknown_error(start_sim: StartSim) -> None:
    sim = await _sim(start_sim, faults="order_5xx=1")
    async with httpx.AsyncClient(base_url=sim.url) as client:
        s = Signed(client)
        r = await s.call("POST", "/fapi/v1/order", timestamp=sim.now_ms(), symbol=SYM,
                         side="BUY", type="MARKET", quantity="100", newClientOrderId="x-1")
        assert (r.status_code, r.json()["code"]) == (503, -1000)
        # a refused order is answered as ever: the fault strikes executed orders only
        r = await s.call("POST", "/fapi/v1/order", timestamp=sim.now_ms(), symbol=SYM,
                         side="BUY", type="MARKET", quantity="100", newClientOrderId="x-1")
        assert (r.status_code, r.json()["code"]) == (400, -4116)
    assert sim.faults.counts["order_5xx"] == 1


async def test_an_algo_order_is_placed_though_its_reply_is_lost(start_sim: StartSim
                                                                ) -> None:
    sim = await _sim(start_sim, faults="lost_reply=1")
    s = sim.account.series(SYM)
    trigger = s.price(sim.account.mark_price(SYM) * 0.5)
    async with _rest(sim) as rest:
        with pytest.raises(RestUncertain):
            await rest.signed("POST", "/fapi/v1/algoOrder", {
                "symbol": SYM, "algoType": "CONDITIONAL", "side": "SELL",
                "type": "STOP_MARKET", "quantity": "100", "triggerPrice": trigger,
                "clientAlgoId": "sl-lost"})
        (row,) = (await _state(sim))["algo_orders"]
        assert (row["clientAlgoId"], row["status"], row["reply_lost"]) == (
            "sl-lost", "NEW", True)
        sim.set_faults("")
        got = msgspec.json.decode(await rest.signed("GET", "/fapi/v1/algoOrder", {
            "clientAlgoId": "sl-lost"}))
        assert (got["algoStatus"], got["triggerPrice"]) == ("NEW", trigger)


async def test_user_event_faults_strike_algo_updates(start_sim: StartSim) -> None:
    sim = await _sim(start_sim)
    s = sim.account.series(SYM)
    async with _private(sim) as ws, httpx.AsyncClient(base_url=sim.url) as client:
        sim.set_faults("user_dup=1")
        placed = await Signed(client).ok(
            "POST", "/fapi/v1/algoOrder", timestamp=sim.now_ms(), symbol=SYM,
            algoType="CONDITIONAL", side="SELL", type="STOP_MARKET", quantity="100",
            triggerPrice=s.price(sim.account.mark_price(SYM) * 0.5), clientAlgoId="sl-dup")
        first, second = await _frames(ws, 2)
        assert first == second
        assert (first["e"], first["o"]["aid"], first["o"]["X"]) == (
            "ALGO_UPDATE", placed["algoId"], "NEW")
        same_shape(first, shared("user_data/algo_update_new.json"))
        assert sim.faults.counts["user_dup"] == 1


def _flat_csv(tmp_path: Path, n: int) -> Path:
    lines = ["open_time,open,high,low,close,volume"]
    lines += [f"{t},{PRICE},{PRICE},{PRICE},{PRICE},1000.5" for t in TIMES[-n:]]
    f = tmp_path / f"{FLAT}-5m.csv"
    f.write_text("\n".join(lines) + "\n")
    return f


@pytest.mark.parametrize(("side", "margin"), [("BUY", "CROSSED"), ("SELL", "ISOLATED")])
async def test_funding_settles_in_sim_time_and_is_published(
        start_sim: StartSim, tmp_path: Path, side: str, margin: str) -> None:
    """A long pays a positive rate, a short receives it; a cross position's event carries
    the balance only, an isolated one's also the position."""
    live, hour, rate, qty = 29, 3_600_000, 0.0001, 100.0
    sim = await _sim(start_sim, live=live, csv_files=[_flat_csv(tmp_path, live + 1)],
                     speed=IV / 1000 / 0.02, funding_interval_h=1.0, funding_rate=rate)
    start, last = TIMES[-live], TIMES[-1] + IV
    due = [m for m in range((start // hour + 1) * hour, last + 1, hour)]
    assert len(due) >= 2
    async with _private(sim) as ws, httpx.AsyncClient(base_url=sim.url) as client:
        signed = Signed(client)
        if margin == "ISOLATED":
            await signed.ok("POST", "/fapi/v1/marginType", timestamp=sim.now_ms(),
                            symbol=FLAT, marginType=margin)
        await signed.ok("POST", "/fapi/v1/order", timestamp=sim.now_ms(), symbol=FLAT,
                        side=side, type="MARKET", quantity="100", newClientOrderId="pos-1")
        await _frames(ws, 4)  # the fill's events
        before = float((await _state(sim))["balances"]["USDT"])
        sim.resume()
        frames = await _frames(ws, len(due))
        with trio.fail_after(5):
            await sim.data_ended.wait()
        state = await _state(sim)

    fee = -qty * PRICE * rate * (1 if side == "BUY" else -1)
    assert float(state["balances"]["USDT"]) == pytest.approx(before + fee * len(due),
                                                             abs=1e-8)
    assert state["funding"]["settlements"] == {FLAT: len(due)}
    assert float(state["funding"]["fees"][FLAT]) == pytest.approx(fee * len(due))
    for i, (frame, at) in enumerate(zip(frames, due, strict=True)):
        same_shape(frame, shared("user_data/account_update_bnfcr.json" if margin ==
                                 "CROSSED" else "user_data/account_update.json"))
        assert frame["a"]["m"] == "FUNDING_FEE" and frame["T"] == at
        ev = parse_user_event(msgspec.json.encode(frame))
        assert isinstance(ev, BinanceAccountUpdate)
        (b,) = ev.balances
        assert ev.reason == "FUNDING_FEE"
        if margin == "CROSSED":
            assert ev.positions == ()
        else:
            (p,) = ev.positions
            assert (p.symbol, p.amount) == (FLAT, -qty)
        assert b.change == pytest.approx(fee)
        assert b.wallet == pytest.approx(before + fee * (i + 1))
