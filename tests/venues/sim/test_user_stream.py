"""The user data stream end to end on loopback: exchange-sim's listenKey endpoints and
private route (events in exactly the shared fixtures' shapes), and the `UserStream` client
against it: fills parsed to the simulator's own figures, keep-alive on a MockClock, and
re-connection with a "reconnect happened" signal after key expiry and disconnect faults."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
import trio
from trio.testing import MockClock
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect

from qtraderd.venues.binance.rest import RestClient
from qtraderd.venues.binance.signing import ApiCredentials
from qtraderd.venues.binance.userdata import (
    BinanceAccountUpdate,
    BinanceOrderUpdate,
    BinanceTradeLite,
)
from qtraderd.venues.binance.userstream import (
    UserStream,
    UserStreamItem,
    UserStreamReconnected,
    private_stream_url,
)
from qtraderd.venues.sim import SimServer
from tests.venues.sim.conftest import StartSim
from tests.venues.sim.sim_helpers import same_shape, shared
from tests.venues.sim.test_sim_account import KEY, SECRET, Signed

SYM = "XRPUSDT"
FAST = {"reconnect_min_s": 0.01, "reconnect_max_s": 0.05}


async def _sim(start_sim: StartSim, **kw: Any) -> SimServer:
    return await start_sim(paused=True, api_key=KEY, api_secret=SECRET, **kw)


async def _order(sim: SimServer, side: str = "BUY", qty: str = "100", cid: str = "o-1"
                 ) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=sim.url) as client:
        return await Signed(client).ok("POST", "/fapi/v1/order", symbol=SYM, side=side,
                                       type="MARKET", quantity=qty, newClientOrderId=cid)


@asynccontextmanager
async def _stream(sim: SimServer, **kw: Any
                  ) -> AsyncIterator[tuple[UserStream, trio.MemoryReceiveChannel[UserStreamItem]]]:
    """A connected UserStream on the simulator; cancelled (key deleted) on the way out."""
    async with RestClient(sim.url, credentials=ApiCredentials(KEY, SECRET)) as rest:
        stream = UserStream(rest, sim.ws_url, **{**FAST, **kw})
        send, recv = trio.open_memory_channel[UserStreamItem](100)
        async with trio.open_nursery() as nursery:
            await nursery.start(stream.run, send)
            yield stream, recv
            nursery.cancel_scope.cancel()


async def _take(recv: trio.MemoryReceiveChannel[UserStreamItem], n: int,
                timeout: float = 5.0) -> list[UserStreamItem]:
    with trio.fail_after(timeout):
        return [await recv.receive() for _ in range(n)]


async def test_listen_key_endpoints_and_fixture_shaped_events(start_sim: StartSim) -> None:
    sim = await _sim(start_sim)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        hdr = {"X-MBX-APIKEY": KEY}
        r = await client.post("/fapi/v1/listenKey")
        assert (r.status_code, r.json()["code"]) == (401, -2014)
        r = await client.post("/fapi/v1/listenKey", headers={"X-MBX-APIKEY": "other"})
        assert (r.status_code, r.json()["code"]) == (401, -2015)
        r = await client.put("/fapi/v1/listenKey", headers=hdr)
        assert r.json() == {"code": -1125, "msg": "This listenKey does not exist."}
        key = (await client.post("/fapi/v1/listenKey", headers=hdr)).json()["listenKey"]
        assert (await client.post("/fapi/v1/listenKey", headers=hdr)).json() == {
            "listenKey": key}  # one key per account: the active one again
        assert (await client.put("/fapi/v1/listenKey", headers=hdr)).json() == {
            "listenKey": key}
        with pytest.raises(InvalidStatus) as refused:
            async with connect(private_stream_url(sim.ws_url, "wrong-key")):
                pass
        assert refused.value.response.status_code == 400

        async with connect(private_stream_url(sim.ws_url, key)) as ws:
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(5):
                while sim.user_events.connections < 1:
                    await sim.user_events.changed.wait()
            ack = await _order(sim)
            with trio.fail_after(5):
                frames = [msgspec.json.decode(await ws.recv()) for _ in range(4)]
            assert [(f["e"], f.get("o", {}).get("x")) for f in frames] == [
                ("ORDER_TRADE_UPDATE", "NEW"), ("TRADE_LITE", None),
                ("ORDER_TRADE_UPDATE", "TRADE"), ("ACCOUNT_UPDATE", None)]
            new, lite, trade, account = frames
            same_shape(new, shared("user_data/order_update_new.json"))
            same_shape(lite, shared("user_data/trade_lite.json"))
            same_shape(trade, shared("user_data/order_update_trade.json"))
            same_shape(account, shared("user_data/account_update.json"))
            assert (trade["o"]["i"], trade["o"]["c"], trade["o"]["X"]) == (
                ack["orderId"], "o-1", "FILLED")

            r = await client.delete("/fapi/v1/listenKey", headers=hdr)
            assert r.json() == {}
            with trio.fail_after(5):
                with pytest.raises(Exception, match="1000"):  # closed by the server
                    await ws.recv()
        r = await client.put("/fapi/v1/listenKey", headers=hdr)
        assert r.json()["code"] == -1125


async def test_client_parses_a_fill_as_the_simulator_booked_it(start_sim: StartSim) -> None:
    sim = await _sim(start_sim, taker_fee=0.001)
    async with _stream(sim) as (stream, recv):
        await _order(sim, "BUY", "100", "buy-1")
        new, lite, trade, account = await _take(recv, 4)
        await _order(sim, "SELL", "40", "sell-1")
        _, _, sell, account2 = await _take(recv, 4)
        async with httpx.AsyncClient(base_url=sim.url) as client:
            state = (await client.get("/sim/state")).json()
        assert sim.user_events.key is not None
    assert isinstance(new, BinanceOrderUpdate) and isinstance(trade, BinanceOrderUpdate)
    assert (new.execution_type, new.status, new.is_fill) == ("NEW", "NEW", False)
    booked = {o["clientOrderId"]: o for o in state["orders"]}
    b = booked["buy-1"]
    assert (trade.client_id, trade.order_id, trade.status, trade.is_fill) == (
        "buy-1", b["orderId"], "FILLED", True)
    assert (trade.last_qty, trade.cum_qty, trade.last_price, trade.avg_price) == (
        float(b["executedQty"]), 100.0, float(b["avgPrice"]), float(b["avgPrice"]))
    assert (trade.commission, trade.commission_asset) == (float(b["commission"]), "USDT")
    assert isinstance(lite, BinanceTradeLite)
    assert (lite.trade_id, lite.last_price, lite.order_id) == (trade.trade_id,
                                                               trade.last_price,
                                                               trade.order_id)
    assert isinstance(sell, BinanceOrderUpdate)
    assert sell.realized_pnl == pytest.approx(float(booked["sell-1"]["realizedPnl"]))
    assert sell.trade_id == trade.trade_id + 1
    assert isinstance(account, BinanceAccountUpdate)
    assert isinstance(account2, BinanceAccountUpdate)
    assert account2.reason == "ORDER"
    (bal,) = account2.balances
    assert (bal.asset, bal.wallet) == ("USDT", float(state["balances"]["USDT"]))
    (pos,) = account2.positions
    (booked_pos,) = state["positions"]
    assert (pos.symbol, pos.amount, pos.entry_price) == (
        SYM, float(booked_pos["positionAmt"]), float(booked_pos["entryPrice"]))
    assert pos.amount == 60.0 and account.positions[0].amount == 100.0
    assert stream.status()["events"] == 8
    # leaving the block cancelled the stream, which deleted the key
    assert sim.user_events.key is None


async def test_keepalive_runs_on_the_clock(start_sim: StartSim, mock_clock: MockClock
                                           ) -> None:
    mock_clock.rate = 1.0  # real time flows (sockets, timeouts); jumps skip the half hours
    sim = await _sim(start_sim)
    ev = sim.user_events
    # (no WebSocket pings: a jump makes a pong look 30 minutes late)
    async with _stream(sim, ping_interval_s=None) as (stream, _recv):
        for n in (1, 2, 3):
            mock_clock.jump(1800)
            with trio.fail_after(5):
                while ev.keepalives < n:
                    await ev.changed.wait()
        with trio.fail_after(5):  # the client counts once the answer is back
            while stream.keepalives < 3:
                await trio.sleep(0.005)
        assert (ev.keys_created, ev.expired, stream.reconnects, stream.keepalives) == (
            1, 0, 0, 3)
    # without keep-alives the key dies after an hour and the client replaces it
    async with _stream(sim, keepalive_s=7200, ping_interval_s=None) as (stream, recv):
        mock_clock.jump(3601)
        (item,) = await _take(recv, 1)
        assert item == UserStreamReconnected(2, "listenKeyExpired", True)
        assert (ev.expired, ev.keys_created, stream.key_expiries) == (1, 3, 1)


@pytest.mark.parametrize("fault,reason,new_key", [
    ("key_expiry=1", "listenKeyExpired", True),
    ("user_drop=1", "connection lost", False),
])
async def test_fault_then_reconnect_signal_then_events_again(
        start_sim: StartSim, fault: str, reason: str, new_key: bool) -> None:
    sim = await _sim(start_sim)
    async with _stream(sim) as (stream, recv):
        sim.set_faults(fault)
        await _order(sim, cid="lost-1")  # its events are lost with the connection
        (item,) = await _take(recv, 1)
        assert isinstance(item, UserStreamReconnected)
        assert (item.conn, item.new_key) == (2, new_key)
        assert item.reason.startswith(reason)
        sim.set_faults(None)
        await _order(sim, cid="after-1")
        events = await _take(recv, 4)
        assert [getattr(e, "client_id", None) for e in events[:3]] == ["after-1"] * 3
        assert stream.status()["reconnects"] == 1
    assert sim.faults.counts[fault.split("=")[0]] == 1


async def test_duplicated_and_delayed_events_are_delivered(start_sim: StartSim) -> None:
    sim = await _sim(start_sim)
    async with _stream(sim) as (_, recv):
        sim.set_faults("user_dup=1")
        await _order(sim, cid="dup-1")
        items = await _take(recv, 8)
        assert items[0::2] == items[1::2]  # each twice, parsed equal (dedup: the caller's)
        sim.set_faults("user_delay=1:50ms")
        await _order(sim, "SELL", cid="late-1")
        late = await _take(recv, 4)
        assert {type(e).__name__ for e in late} == {"BinanceOrderUpdate", "BinanceTradeLite",
                                                    "BinanceAccountUpdate"}
    assert sim.faults.counts["user_delay"] == 4


async def test_the_listen_key_stays_out_of_the_logs(start_sim: StartSim,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # websockets logs the request line, URL and all
    sim = await _sim(start_sim)
    async with _stream(sim) as (stream, _):
        key = stream.key
        assert key and sim.user_events.key == key
    assert "listenKey=****" in caplog.text
    assert key not in caplog.text
