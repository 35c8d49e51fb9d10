"""The paper broker through the async interface: lifecycle events, cancel, and the
export_state -> reconcile round trip (a restored broker continues bit-identically)."""

from __future__ import annotations

import json
import logging
import random

from qtraderd.core.costs import CostModel
from qtraderd.core.messages import AccountView, Amend, Bar, Fill, OrderUpdate, PositionView, Trade
from qtraderd.venues.base import Order
from qtraderd.venues.paper import PaperBroker
from tests.helpers import now

IV = 300_000
T0 = 1_700_000_100_000 - (1_700_000_100_000 % IV)
SYM = "ETHUSDT"


def broker() -> PaperBroker:
    return PaperBroker({"USDT": 10_000.0, "BTC": 1.0}, CostModel(0.0005, 0.0002, 0.0002))


def entry(cid: str = "q1-1-ETHUSDT-E", side: int = 1, symbol: str = SYM, tp: float = 0.016,
          sl: float = 0.008) -> Order:
    return Order(cid, symbol, side, 2.0, "entry", "signal", T0, tp, sl, 3.0,
                 tp_id=cid[:-1] + "TP", sl_id=cid[:-1] + "SL")


def exit_(cid: str = "q1-2-ETHUSDT-X", side: int = -1) -> Order:
    return Order(cid, SYM, side, 2.0, "exit", "time_stop", T0)


def bar(i: int, o: float, h: float, lo: float, c: float, symbol: str = SYM) -> Bar:
    return Bar(symbol, T0 + i * IV, o, h, lo, c, 1.0)


def moves(events: list) -> list[tuple[str, str]]:
    return [(e.client_id, e.status) for e in events if type(e) is OrderUpdate]


def test_entry_lifecycle_accept_fill_protect_then_stop_first() -> None:
    b = broker()
    now(b.submit(entry()))
    assert moves(b.drain()) == [("q1-1-ETHUSDT-E", "accepted")]  # before any bar
    now(b.on_bars((bar(1, 100.0, 100.1, 99.9, 100.0),)))
    ev = b.drain()
    assert moves(ev) == [("q1-1-ETHUSDT-E", "filled"),
                         ("q1-1-ETHUSDT-SL", "new"), ("q1-1-ETHUSDT-SL", "accepted"),
                         ("q1-1-ETHUSDT-TP", "new"), ("q1-1-ETHUSDT-TP", "accepted")]
    (f,) = [e for e in ev if type(e) is Fill]
    assert f.ts == T0 + IV and f.price == 100.0 * 1.0002  # next open + slippage
    assert [e.quote for e in ev if type(e) is AccountView] == ["BTC", "USDT"]
    assert b.open_orders() == [("q1-1-ETHUSDT-SL", "accepted"),
                               ("q1-1-ETHUSDT-TP", "accepted")]
    now(b.on_bars((bar(2, 100.0, 103.0, 98.0, 101.0),)))  # touches both: stop first
    ev = b.drain()
    assert moves(ev) == [("q1-1-ETHUSDT-SL", "filled"), ("q1-1-ETHUSDT-TP", "cancelled")]
    (f,) = [e for e in ev if type(e) is Fill]
    assert (f.order_id, f.reason) == ("q1-1-ETHUSDT-SL", "stop_loss")
    assert [e.exit_reason for e in ev if type(e) is Trade] == ["stop_loss"]
    assert [e.qty for e in ev if type(e) is PositionView] == [0.0]  # the position is gone
    assert b.open_orders() == []


def test_entry_on_an_open_position_and_exit_of_a_closed_one_expire() -> None:
    b = broker()
    now(b.submit(exit_()))
    now(b.on_bars((bar(1, 100.0, 100.1, 99.9, 100.0),)))
    ev = [e for e in b.drain() if type(e) is OrderUpdate]
    assert [(e.status, e.reason) for e in ev] == [("accepted", "submitted"),
                                                  ("expired", "no open position to exit")]
    now(b.submit(entry()))
    now(b.submit(entry("q1-1-ETHUSDT-E2", side=-1)))  # a second entry in the same bar
    now(b.on_bars((bar(2, 100.0, 100.1, 99.9, 100.0),)))
    ev = {(e.client_id, e.status): e.reason for e in b.drain() if type(e) is OrderUpdate}
    assert ev[("q1-1-ETHUSDT-E", "filled")] == "filled at open"
    assert ev[("q1-1-ETHUSDT-E2", "expired")] == "position already open"


def test_market_exit_fills_and_cancels_both_protective_orders() -> None:
    b = broker()
    now(b.submit(entry()))
    now(b.on_bars((bar(1, 100.0, 100.1, 99.9, 100.0),)))
    b.drain()
    now(b.submit(exit_()))
    now(b.on_bars((bar(2, 100.0, 100.1, 95.0, 96.0),)))  # would hit the stop
    assert moves(b.drain()) == [("q1-2-ETHUSDT-X", "accepted"), ("q1-2-ETHUSDT-X", "filled"),
                                ("q1-1-ETHUSDT-SL", "cancelled"),
                                ("q1-1-ETHUSDT-TP", "cancelled")]


def test_cancel_a_pending_order_a_resting_stop_and_an_unknown_id(caplog) -> None:
    caplog.set_level(logging.INFO, "qtraderd.paper")
    b = broker()
    now(b.submit(entry()))
    now(b.cancel("q1-1-ETHUSDT-E"))
    assert moves(b.drain()) == [("q1-1-ETHUSDT-E", "accepted"), ("q1-1-ETHUSDT-E", "cancelled")]
    now(b.on_bars((bar(1, 100.0, 100.1, 99.9, 100.0),)))
    assert not b.positions  # the cancelled order never filled
    now(b.submit(entry("q1-3-ETHUSDT-E")))
    now(b.on_bars((bar(2, 100.0, 100.1, 99.9, 100.0),)))
    b.drain()
    now(b.cancel("q1-3-ETHUSDT-SL"))
    ev = b.drain()
    assert moves(ev) == [("q1-3-ETHUSDT-SL", "cancelled")]
    assert b.positions[SYM].stop_price == 0.0 and b.positions[SYM].take_price > 0
    now(b.on_bars((bar(3, 100.0, 100.1, 50.0, 60.0),)))  # no stop any more
    assert SYM in b.positions
    now(b.cancel("nope"))
    assert moves(b.drain()) == [] and "cancel ignored: nope is not an open order" in caplog.text


def script(n: int, seed: int) -> list[tuple[list[Order], tuple[Bar, ...], list[Amend]]]:
    """A random but fixed sequence of orders, bars and amendments over two symbols."""
    rng = random.Random(seed)
    px = {SYM: 100.0, "ETHBTC": 0.05}
    out = []
    for i in range(1, n + 1):
        orders, amends, bars = [], [], []
        for s in (SYM, "ETHBTC"):
            o = px[s]
            c = o * (1 + rng.gauss(0, 0.01))
            hi, lo = max(o, c) * (1 + abs(rng.gauss(0, 0.004))), min(o, c) * (
                1 - abs(rng.gauss(0, 0.004)))
            bars.append(Bar(s, T0 + i * IV, o, hi, lo, c, 1.0))
            px[s] = c
            r = rng.random()
            if r < 0.25:
                orders.append(Order(f"q1-{i}-{s}-E", s, rng.choice((1, -1)), 1.5, "entry",
                                    "signal", T0 + i * IV, 0.02, 0.01, 2.0,
                                    f"q1-{i}-{s}-TP", f"q1-{i}-{s}-SL"))
            elif r < 0.35:
                orders.append(Order(f"q1-{i}-{s}-X", s, rng.choice((1, -1)), 1.5, "exit",
                                    "time_stop", T0 + i * IV))
            elif r < 0.5:
                amends.append(Amend(s, c * 0.99, c * 1.05, "trailing"))
        out.append((orders, tuple(bars), amends))
    return out


def play(b: PaperBroker, steps) -> list:
    events = []
    for orders, bars, amends in steps:
        now(b.on_bars(bars))
        events += b.drain()
        for a in amends:
            now(b.amend(a, 0))
        for o in orders:
            now(b.submit(o))
    return events


def test_export_state_reconcile_round_trip_continues_bit_identically() -> None:
    steps = script(400, seed=3)
    whole = broker()
    expected = play(whole, steps)
    assert sum(type(e) is Trade for e in expected) > 20  # the script really trades
    for cut in range(200, 400):  # a cut with a position and pending orders in flight
        first = broker()
        head = play(first, steps[:cut])
        saved = json.loads(json.dumps(first.export_state()))  # through JSON, as a checkpoint
        if saved["positions"] and saved["pending"]:
            break
    else:
        raise AssertionError("no mid-flight cut in the script")
    assert saved == first.export_state() and saved["orders"]
    restored = broker()
    now(restored.reconcile(saved))
    reported = restored.drain()  # reconcile reports the restored positions and accounts
    assert {e.symbol for e in reported if type(e) is PositionView} == set(first.positions)
    assert restored.open_orders() == first.open_orders()
    carried = [e for e in reported if type(e) is OrderUpdate]  # queued before the export
    tail = play(restored, steps[cut:])
    assert head + carried + tail == expected  # every float equal, not approximately
    assert restored.export_state() == whole.export_state()


def test_reconcile_without_saved_state_reports_a_fresh_account() -> None:
    b = broker()
    now(b.reconcile(None))
    ev = b.drain()
    assert [(e.quote, e.balance) for e in ev] == [("BTC", 1.0), ("USDT", 10_000.0)]
