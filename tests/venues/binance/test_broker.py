"""The live broker against exchange-sim on loopback: a MARKET entry under its journaled
client id, fills from the user data stream, both protective orders on the Algo Order API
as soon as the entry filled, the stop triggered on the simulator's price path closing the
trade with the exchange's figures and cancelling its sibling; a lost reply looked up by
client id (one intent, one order); and reconciliation after a restart (nothing to do;
a missing stop placed again; a stranger's position halts; orphan algo orders cancelled).

The price path is flat candles (tests/venues/sim/test_algo_orders.py): history at 2.0001,
then 2.0, 2.2, 1.9, 1.7, 2.3 — a long entered at ~2.0 with a 10 % stop (~1.8) and a 25 %
take-profit (~2.5) is stopped out in the 1.7 candle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from qtraderd.core.messages import Fill, OrderUpdate, Trade
from qtraderd.venues.base import Order
from qtraderd.venues.binance.broker import BinanceBroker
from qtraderd.venues.binance.rest import RestClient
from qtraderd.venues.binance.signing import ApiCredentials
from qtraderd.venues.binance.userstream import UserStream
from qtraderd.venues.binance.warmup import check_symbols
from qtraderd.venues.sim import SimServer, load_market
from tests.venues.sim.test_algo_orders import SYM, T, path_csv

KEY, SECRET = "broker-key", "broker-secret"
IV = 300_000
ENTRY = Order("q7-1-PATHUSDT-E", SYM, 1, 100.0, "entry", "signal", T[0], tp_pct=0.25,
              sl_pct=0.10, leverage=3.0, tp_id="q7-1-PATHUSDT-TP", sl_id="q7-1-PATHUSDT-SL",
              ref_price=2.0)


async def until(what: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll `what` until it is truthy (a deadline, no fixed sleep)."""
    with trio.fail_after(timeout):
        while not (got := what()):
            await trio.sleep(0.01)
    return got


async def start(nursery: trio.Nursery, tmp_path: Path, faults: str = "") -> SimServer:
    market = load_market(csv=[path_csv(tmp_path)], start_ms=T[1])
    sim = SimServer(market, paused=True, api_key=KEY, api_secret=SECRET, speed=15_000,
                    **({"faults": faults} if faults else {}))
    await nursery.start(sim.serve)
    return sim


async def broker(nursery: trio.Nursery, sim: SimServer, saved: Any = None,
                 policy: str = "halt") -> BinanceBroker:
    rest = RestClient(sim.url, credentials=ApiCredentials(KEY, SECRET))
    instruments = check_symbols(await rest.exchange_info(), [SYM], "test")
    b = BinanceBroker(rest, instruments, interval_ms=IV, stream=UserStream(rest, sim.ws_url),
                      unknown_positions=policy, leverage=3.0, default_barriers=(0.25, 0.10),
                      run_id=7)
    await nursery.start(b.run)
    await b.reconcile(saved)
    return b


async def book(sim: SimServer) -> Any:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        return (await http.get("/sim/state")).json()


def protected(b: BinanceBroker) -> bool:
    return b._orders.get(ENTRY.sl_id) == "accepted" and \
        b._orders.get(ENTRY.tp_id) == "accepted"


async def test_entry_protection_stop_and_sibling_cancel(nursery: trio.Nursery,
                                                        tmp_path: Path) -> None:
    sim = await start(nursery, tmp_path)
    async with trio.open_nursery() as inner:  # the brokers stop before the simulator
        await _entry_protection_stop(inner, sim)
        inner.cancel_scope.cancel()


async def _entry_protection_stop(nursery: trio.Nursery, sim: SimServer) -> None:
    b = await broker(nursery, sim)
    await b.submit(ENTRY)
    await until(lambda: protected(b))
    pos = b.positions[SYM]
    assert pos.qty == 100.0 and 2.0 <= pos.entry_price < 2.01 and pos.entry_fee > 0
    state = await book(sim)
    algos = {a["clientAlgoId"]: a for a in state["algo_orders"]}
    assert set(algos) == {ENTRY.sl_id, ENTRY.tp_id}
    assert algos[ENTRY.sl_id]["type"] == "STOP_MARKET"
    assert algos[ENTRY.tp_id]["type"] == "TAKE_PROFIT_MARKET"
    assert abs(float(algos[ENTRY.sl_id]["triggerPrice"]) - pos.entry_price * 0.9) < 1e-3

    sim.resume()
    await sim.data_ended.wait()
    await until(lambda: SYM not in b.positions and ENTRY.tp_id not in b._orders)
    events = b.drain()
    fills = [e for e in events if isinstance(e, Fill)]
    assert [(f.order_id, f.side, f.reason) for f in fills] == [
        (ENTRY.client_id, 1, "entry"), (ENTRY.sl_id, -1, "stop_loss")]
    assert fills[1].ts == T[4]  # dated by the bar it happened in: the 1.7 candle
    (trade,) = [e for e in events if isinstance(e, Trade)]
    assert trade.exit_reason == "stop_loss" and trade.qty == 100.0
    assert 1.69 < trade.exit_price <= 1.7
    assert abs(trade.gross_pnl - 100.0 * (trade.exit_price - trade.entry_price)) < 1e-6
    assert trade.fees > 0 and trade.net_pnl < trade.gross_pnl
    moves = [(e.client_id, e.status) for e in events if isinstance(e, OrderUpdate)]
    assert (ENTRY.tp_id, "cancelled") in moves and (ENTRY.sl_id, "filled") in moves
    state = await book(sim)
    assert state["positions"] == []
    assert [o["clientOrderId"] for o in state["orders"]
            if o["clientOrderId"] == ENTRY.client_id] == [ENTRY.client_id]
    assert {a["clientAlgoId"]: a["status"] for a in state["algo_orders"]} == {
        ENTRY.sl_id: "FINISHED", ENTRY.tp_id: "CANCELED"}


async def test_a_lost_reply_is_looked_up_not_resent(nursery: trio.Nursery,
                                                    tmp_path: Path) -> None:
    sim = await start(nursery, tmp_path, faults="lost_reply=1")
    async with trio.open_nursery() as inner:
        await _lost_reply(inner, sim)
        inner.cancel_scope.cancel()


async def _lost_reply(nursery: trio.Nursery, sim: SimServer) -> None:
    b = await broker(nursery, sim)
    await b.submit(ENTRY)
    await until(lambda: protected(b))
    assert b.lookups >= 3 and b.resent == 0  # the entry and both protective orders
    state = await book(sim)
    assert [o["clientOrderId"] for o in state["orders"]] == [ENTRY.client_id]
    assert sorted(a["clientAlgoId"] for a in state["algo_orders"]) == sorted(
        [ENTRY.sl_id, ENTRY.tp_id])


async def test_reconcile_after_a_restart(nursery: trio.Nursery, tmp_path: Path) -> None:
    sim = await start(nursery, tmp_path)
    async with trio.open_nursery() as inner:
        await _restarts(inner, sim)
        inner.cancel_scope.cancel()


async def _restarts(nursery: trio.Nursery, sim: SimServer) -> None:
    first = await broker(nursery, sim)
    await first.submit(ENTRY)
    await until(lambda: protected(first))
    saved = first.export_state()

    again = await broker(nursery, sim, saved)  # a restart with the last checkpoint
    assert again.positions[SYM].qty == 100.0 and protected(again) and again.alerts == []

    async with RestClient(sim.url, credentials=ApiCredentials(KEY, SECRET)) as rest:
        await rest.signed("DELETE", "/fapi/v1/algoOrder", {"clientAlgoId": ENTRY.sl_id})
        await rest.signed("POST", "/fapi/v1/algoOrder", {
            "symbol": SYM, "algoType": "CONDITIONAL", "side": "SELL", "type": "STOP_MARKET",
            "closePosition": "true", "triggerPrice": "1.5000", "clientAlgoId": "stranger"})
    third = await broker(nursery, sim, saved)
    assert protected(third) and third.alerts == []
    state = await book(sim)
    open_ids = sorted(a["clientAlgoId"] for a in state["algo_orders"] if a["status"] == "NEW")
    assert open_ids == sorted([ENTRY.sl_id, ENTRY.tp_id])  # recreated; the extra stop gone

    async with RestClient(sim.url, credentials=ApiCredentials(KEY, SECRET)) as rest:
        await rest.signed("DELETE", "/fapi/v1/algoOrder", {"clientAlgoId": ENTRY.tp_id})
    found = await third.reconcile_now()  # `ctl reconcile`
    assert found == [f"{SYM}: TAKE_PROFIT_MARKET {ENTRY.tp_id} missing: placed again"]
    assert await third.reconcile_now() == []

    fresh = await broker(nursery, sim, None)  # the position is not ours: halt
    assert len(fresh.alerts) == 1 and "unknown position" in fresh.alerts[0]
    assert SYM not in fresh.positions
