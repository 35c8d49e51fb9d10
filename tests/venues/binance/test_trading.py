"""The trading client: parsers over the real shared payloads (order, positionRisk, balance,
account), quantity rounding and the too-small denial, the calls against exchange-sim on
loopback (a MARKET order acknowledged without fills, then FILLED by client id; an unknown
id is None; a too-small order never reaches the exchange), and the order-rate counting:
the simulator's X-MBX-ORDER-COUNT-* headers, the client adopting them, throttling before
its budget (on trio's MockClock) and the simulator's -1015 past its limit."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing

from qtraderd.core.instruments import Instrument
from qtraderd.venues.binance.payloads import PayloadError
from qtraderd.venues.binance.rest import BinanceAPIError, RestClient
from qtraderd.venues.binance.signing import ApiCredentials
from qtraderd.venues.binance.trading import (
    OrderTooSmall,
    account_balances,
    account_info,
    cancel_order,
    market_quantity,
    open_orders,
    parse_account_info,
    parse_balances,
    parse_order,
    parse_order_ack,
    parse_position_risk,
    place_market_order,
    position_risk,
    query_order,
)
from qtraderd.venues.sim import SimServer, load_market
from tests.conftest import BINANCE
from tests.venues.sim.sim_helpers import TIMES, XRP
from tests.venues.sim.test_sim_account import KEY, NOW, SECRET, Signed

SYM = "XRPUSDT"
HTTP = BINANCE / "http"
INS = Instrument("BTCUSDT", "BTC", "USDT", tick_size=0.1, step_size=0.001, min_qty=0.001,
                 min_notional=100)


# ------------------------------------------------------------------- parsers


def test_parses_the_real_order_response() -> None:
    raw = (HTTP / "order_response.json").read_bytes()
    o = parse_order(raw)
    assert (o.order_id, o.client_order_id, o.symbol, o.side, o.order_type, o.status) == (
        12345678, "testOrder123", "BTCUSDT", "BUY", "LIMIT", "NEW")
    assert (o.price, o.orig_qty, o.executed_qty, o.avg_price, o.cum_quote) == (
        50000.0, 0.001, 0.0, 0.0, 0.0)
    assert (o.reduce_only, o.close_position, o.position_side, o.orig_type) == (
        False, False, "BOTH", "LIMIT")
    assert o.time == o.update_time == 1625474304765 and o.is_open
    ack = parse_order_ack(raw)
    assert (ack.order_id, ack.client_order_id, ack.status, ack.orig_qty) == (
        12345678, "testOrder123", "NEW", 0.001)
    assert not hasattr(ack, "avg_price")  # an acknowledgement never says what filled


def test_parses_the_real_position_risk() -> None:
    (p,) = parse_position_risk((HTTP / "position_risk.json").read_bytes())
    assert (p.symbol, p.position_amt, p.entry_price, p.mark_price) == (
        "BTCUSDT", 0.001, 50000.0, 51000.0)
    assert (p.unrealized_pnl, p.liquidation_price, p.leverage, p.margin_type) == (
        1.0, 45000.0, 20, "CROSSED")
    assert (p.position_side, p.notional, p.break_even_price, p.max_notional) == (
        "BOTH", 51.0, 50100.0, 250000.0)
    assert p.update_time == 1625474304765


def test_parses_the_real_balance_and_account() -> None:
    (b,) = parse_balances((HTTP / "balance.json").read_bytes())
    assert (b.asset, b.wallet_balance, b.available_balance, b.unrealized_pnl) == (
        "USDT", 122.12345678, 122.12345678, 0.0)
    assert b.margin_available and b.update_time == 1617939110373
    a = parse_account_info((HTTP / "account_info_v2.json").read_bytes())
    assert (a.can_trade, a.multi_assets_margin, a.total_wallet_balance,
            a.available_balance) == (True, False, 23.72469206, 23.72469206)
    assert [(x.asset, x.wallet_balance) for x in a.assets] == [("USDT", 23.72469206)]
    (p,) = a.positions
    assert (p.symbol, p.leverage, p.isolated, p.position_side, p.position_amt) == (
        "BTCUSDT", 100, False, "BOTH", 0.0)


def test_malformed_payloads_name_the_problem() -> None:
    with pytest.raises(PayloadError, match="positionRisk BTCUSDT marginType"):
        parse_position_risk(b'[{"symbol": "BTCUSDT", "positionAmt": "0", '
                            b'"marginType": "both"}]')
    with pytest.raises(PayloadError, match="origQty"):
        parse_order(b'{"orderId": 1, "clientOrderId": "c", "symbol": "S", "side": "BUY", '
                    b'"type": "MARKET", "status": "NEW", "origQty": "x"}')


def test_quantity_is_rounded_down_and_too_small_is_refused() -> None:
    assert market_quantity(INS, 0.0129, ref_price=50_000) == "0.012"
    with pytest.raises(OrderTooSmall) as e:
        market_quantity(INS, 0.0009, ref_price=50_000)
    assert e.value.reason_code == "below_min_qty" and "0.000" in e.value.message
    with pytest.raises(OrderTooSmall) as e:
        market_quantity(INS, 0.0019, ref_price=50_000)  # 0.001 * 50000 = 50 < 100
    assert e.value.reason_code == "below_min_notional" and "50 USDT" in e.value.message
    assert market_quantity(INS, 0.0019, ref_price=50_000, reduce_only=True) == "0.001"
    with pytest.raises(ValueError, match="reference price"):
        market_quantity(INS, 0.01)
    with pytest.raises(ValueError, match="> 0"):
        market_quantity(INS, float("nan"), ref_price=1.0)


# ------------------------------------------------------------------- against the simulator


async def start_sim(nursery: trio.Nursery, **kw: Any) -> SimServer:
    """exchange-sim on XRPUSDT, paused at its first live candle, with the test key pair."""
    sim = SimServer(load_market(csv=[XRP], start_ms=TIMES[-6]), paused=True, api_key=KEY,
                    api_secret=SECRET, **kw)
    await nursery.start(sim.serve)
    return sim


def _client(sim: Any, **kw: Any) -> RestClient:
    return RestClient(sim.url, credentials=ApiCredentials(KEY, SECRET), **kw)


async def _state(sim: Any) -> Any:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        return (await http.get("/sim/state")).json()


async def test_market_order_round_trip(nursery: trio.Nursery) -> None:
    sim = await start_sim(nursery, slippage_bps=0)
    mark = sim.account.mark_price(SYM)
    async with _client(sim) as rest:
        ins = (await rest.exchange_info()).symbols[SYM].instrument
        qty = 100 * ins.step_size * 1.7 + 10 / mark  # off the grid, well above minimums
        ack = await place_market_order(rest, ins, +1, qty, client_order_id="e-1",
                                       ref_price=mark)
        sent = float(market_quantity(ins, qty, ref_price=mark))
        assert sent < qty
        assert (ack.status, ack.client_order_id, ack.side, ack.orig_qty) == (
            "NEW", "e-1", "BUY", sent)
        got = await query_order(rest, SYM, client_order_id="e-1")
        assert got is not None and got.order_id == ack.order_id
        assert (got.status, got.executed_qty, got.avg_price) == ("FILLED", sent, mark)
        assert await query_order(rest, SYM, client_order_id="never-sent") is None
        (pos,) = await position_risk(rest, SYM)
        assert (pos.position_amt, pos.entry_price, pos.margin_type) == (sent, mark,
                                                                        "CROSSED")
        assert await open_orders(rest, SYM) == [] and await open_orders(rest) == []
        with pytest.raises(BinanceAPIError) as e:  # filled at once: nothing to cancel
            await cancel_order(rest, SYM, client_order_id="e-1")
        assert e.value.code == -2011
        (usdt,) = await account_balances(rest)
        assert usdt.asset == "USDT" and usdt.wallet_balance < 10_000  # the taker fee
        assert (await account_info(rest)).assets[0].wallet_balance == usdt.wallet_balance
        close = await place_market_order(rest, ins, -1, sent, client_order_id="x-1",
                                         reduce_only=True)
        assert close.reduce_only
        assert (await position_risk(rest, SYM))[0].position_amt == 0

        before = len((await _state(sim))["orders"])
        with pytest.raises(OrderTooSmall) as too_small:
            await place_market_order(rest, ins, +1, ins.min_qty * 0.99,
                                     client_order_id="tiny", ref_price=mark)
        assert too_small.value.reason_code == "below_min_qty"
        with pytest.raises(OrderTooSmall) as too_small:
            await place_market_order(rest, ins, -1, ins.min_qty, client_order_id="tiny-2",
                                     ref_price=mark)
        assert too_small.value.reason_code == "below_min_notional"
        orders = (await _state(sim))["orders"]
        assert len(orders) == before == 2  # nothing was sent
        assert [o["clientOrderId"] for o in orders] == ["e-1", "x-1"]
        assert [o["reduceOnly"] for o in orders] == [False, True]
        with pytest.raises(ValueError, match="side"):
            await place_market_order(rest, ins, 0, 1.0, client_order_id="z", ref_price=mark)


async def test_order_count_headers_are_counted_and_adopted(nursery: trio.Nursery) -> None:
    sim = await start_sim(nursery)
    async with _client(sim) as a, _client(sim) as b:
        ins = (await a.exchange_info()).symbols[SYM].instrument
        mark = sim.account.mark_price(SYM)
        for i in range(3):
            await place_market_order(a, ins, +1, 10.0, client_order_id=f"a-{i}",
                                     ref_price=mark)
        await query_order(a, SYM, client_order_id="a-0")  # not an order: not counted
        st = a.status()
        assert (st["orders_10s"], st["orders_1m"], st["order_limit_10s"],
                st["order_limit_1m"]) == (3, 3, 300, 1200)
        # another client on the same account learns the account's count from the header
        await place_market_order(b, ins, -1, 10.0, client_order_id="b-0", ref_price=mark)
        assert (b.status()["orders_10s"], b.status()["orders_1m"]) == (4, 4)
        assert sim.rest.orders.counts == [4, 4]


async def test_orders_wait_for_the_window_before_the_limit(
        nursery: trio.Nursery, mock_clock: trio.testing.MockClock) -> None:
    # The clock stands still until the test moves it: the fifth order must wait in the
    # client (never sent) until the 10 s window rolls.
    sim = await start_sim(nursery, speed=1000)
    base = NOW - NOW % 10_000

    def now_ms() -> int:
        return base + int(trio.current_time() * 1000)

    async with _client(sim, now_ms=now_ms, order_limit_10s=5, order_margin=0.2) as rest:
        ins = (await rest.exchange_info()).symbols[SYM].instrument
        mark = sim.account.mark_price(SYM)
        for i in range(4):  # budget: 5 less 20 %
            await place_market_order(rest, ins, +1, 10.0, client_order_id=f"o-{i}",
                                     ref_price=mark)
        assert rest.status()["orders_throttled"] == 0
        done = trio.Event()

        async def fifth() -> None:
            await place_market_order(rest, ins, +1, 10.0, client_order_id="o-4",
                                     ref_price=mark)
            done.set()

        async with trio.open_nursery() as n:
            n.start_soon(fifth)
            await trio.testing.wait_all_tasks_blocked()
            assert rest.status()["orders_throttled"] == 1 and not done.is_set()
            assert len((await _state(sim))["orders"]) == 4
            mock_clock.jump(11)  # the window rolls within 10 s (+50 ms of margin)
            await done.wait()
        st = rest.status()
        assert (st["orders_10s"], st["orders_1m"]) == (1, 5)
        assert [o["clientOrderId"] for o in (await _state(sim))["orders"]][-1] == "o-4"


async def test_simulator_refuses_orders_past_its_limit(nursery: trio.Nursery) -> None:
    sim = await start_sim(nursery)
    sim.rest.orders.limits = (2, 1200)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        s = Signed(http)
        counts = []
        for i in range(3):
            r = await s.call("POST", "/fapi/v1/order", symbol=SYM, side="BUY",
                             type="MARKET", quantity="10", newClientOrderId=f"l-{i}")
            counts.append((r.status_code, r.headers["X-MBX-ORDER-COUNT-10S"],
                           r.headers["X-MBX-ORDER-COUNT-1M"]))
        assert counts == [(200, "1", "1"), (200, "2", "2"), (429, "2", "2")]
        assert r.json() == {"code": -1015, "msg": "Too many new orders; current limit is 2 "
                                                  "orders per TEN_SECONDS."}
        assert 1 <= int(r.headers["Retry-After"]) <= 10
        got = await s.call("GET", "/fapi/v1/order", symbol=SYM, origClientOrderId="l-0")
        assert "X-MBX-ORDER-COUNT-10S" not in got.headers  # only on order requests
        assert len((await _state(sim))["orders"]) == 2  # the refused one never arrived
