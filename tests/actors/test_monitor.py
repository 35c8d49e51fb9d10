"""MonitorActor.handle: trailing stop (activation, callback, only tightens) and time stop."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from qtraderd.actors.monitor import MonitorActor
from qtraderd.core.config import load
from qtraderd.core.costs import CostModel
from qtraderd.core.messages import Amend, Bar, OrderIntent, PositionView, Step
from qtraderd.core.messages import replace as evolve
from tests.helpers import Paper

IV = 300_000
T0 = 1_700_000_000_000 - (1_700_000_000_000 % IV)
SYM = "ETHUSDT"


def monitor(**changes: object) -> MonitorActor:
    cfg = replace(load(env={}).monitor, **changes)
    send, recv = trio.open_memory_channel[Step](1)
    return MonitorActor(cfg, recv, send)


def pos(side: int = 1, entry: float = 100.0, best: float | None = None, stop: float = 0.0,
        take: float = 0.0, bars_held: int = 1, symbol: str = SYM, qty: float = 2.0,
        mark: float | None = None, trailing: bool = False) -> PositionView:
    if best is None:
        best = entry
    if stop == 0.0 and side != 0:
        stop = entry * (1 - side * 0.008)
    if take == 0.0:
        take = entry * (1 + side * 0.016)
    mark = best if mark is None else mark
    return PositionView(symbol, "USDT", side, qty, entry, T0, stop, take, qty * entry / 3,
                        bars_held, best, trailing, mark, side * qty * (mark - entry))


def step(*positions: PositionView, seq: int = 7, symbols: tuple[str, ...] | None = None,
         **kw: object) -> Step:
    if symbols is None:
        symbols = tuple(sorted({p.symbol for p in positions})) or (SYM,)
    bars = tuple(Bar(s, T0 + seq * IV, 100.0, 101.0, 99.0, 100.0, 1.0) for s in symbols)
    return Step(seq=seq, ts=T0 + seq * IV, close_ts=T0 + (seq + 1) * IV, bars=bars,
                positions=positions, **kw)


def test_defaults_are_what_these_tests_assume() -> None:
    cfg = load(env={}).monitor
    assert cfg.trailing is True
    assert cfg.trailing_activation_pct == 1.0 and cfg.trailing_callback_pct == 0.5
    assert cfg.time_stop_bars == 48


def test_no_positions_passes_the_step_through() -> None:
    m = monitor()
    s = step()
    assert m.handle(s) is s


def test_trailing_does_not_activate_below_activation() -> None:
    m = monitor()
    s = step(pos(1, best=100.99))  # +0.99 %
    out = m.handle(s)
    assert out.amends == () and out.intents == ()
    assert out is s


def test_long_trailing_activates_at_activation() -> None:
    m = monitor()
    p = pos(1, best=101.0)  # +1.0 %
    out = m.handle(step(p))
    (a,) = out.amends
    assert a.symbol == SYM and a.reason == "trailing"
    assert a.stop_price == pytest.approx(101.0 * 0.995)
    assert a.take_price == p.take_price
    assert out.intents == ()
    assert m.status() == {"trailing_moves": 1, "time_stops": 0}


def test_long_trailing_tightens_as_best_rises() -> None:
    m = monitor()
    out = m.handle(step(pos(1, best=102.0, stop=101.0 * 0.995, trailing=True)))
    (a,) = out.amends
    assert a.stop_price == pytest.approx(102.0 * 0.995)


def test_long_trailing_never_loosens() -> None:
    m = monitor()
    # stop already above where the trail would put it
    out = m.handle(step(pos(1, best=101.5, stop=101.2)))
    assert out.amends == ()
    # and equal is not a move either
    out = m.handle(step(pos(1, best=101.5, stop=101.5 * 0.995)))
    assert out.amends == ()
    assert m.trail_moves == 0


def test_short_trailing_activates_and_tightens_downwards() -> None:
    m = monitor()
    assert m.handle(step(pos(-1, best=99.01))).amends == ()  # +0.99 % for a short
    p = pos(-1, best=99.0)  # stop at 100.8
    (a,) = m.handle(step(p)).amends
    assert a.stop_price == pytest.approx(99.0 * 1.005)
    assert a.stop_price < p.stop_price
    assert a.take_price == p.take_price


def test_short_trailing_never_loosens() -> None:
    m = monitor()
    out = m.handle(step(pos(-1, best=98.0, stop=98.3)))  # trail would be 98.49
    assert out.amends == ()


def test_short_trailing_places_a_stop_when_there_was_none() -> None:
    m = monitor()
    p = evolve(pos(-1, best=98.0), stop_price=0.0)
    (a,) = m.handle(step(p)).amends
    assert a.stop_price == pytest.approx(98.0 * 1.005)


def test_long_trailing_places_a_stop_when_there_was_none() -> None:
    m = monitor()
    p = evolve(pos(1, best=102.0), stop_price=0.0)
    (a,) = m.handle(step(p)).amends
    assert a.stop_price == pytest.approx(102.0 * 0.995)


def test_trailing_disabled() -> None:
    m = monitor(trailing=False)
    out = m.handle(step(pos(1, best=110.0)))
    assert out.amends == ()


def test_custom_activation_and_callback() -> None:
    m = monitor(trailing_activation_pct=2.0, trailing_callback_pct=1.0)
    assert m.handle(step(pos(1, best=101.9))).amends == ()
    (a,) = m.handle(step(pos(1, best=102.0))).amends
    assert a.stop_price == pytest.approx(102.0 * 0.99)


def test_time_stop_fires_at_exactly_time_stop_bars() -> None:
    m = monitor(time_stop_bars=10)
    assert m.handle(step(pos(1, bars_held=9))).intents == ()
    p = pos(1, bars_held=10, qty=3.0, mark=100.4)
    out = m.handle(step(p, seq=12))
    (it,) = out.intents
    assert it == OrderIntent(id=f"12-{SYM}-T", symbol=SYM, ts=T0 + 12 * IV, side=-1, qty=3.0,
                             ref_price=100.4, purpose="exit", reason="time_stop")
    assert m.status()["time_stops"] == 1


def test_time_stop_for_a_short_buys_back() -> None:
    m = monitor(time_stop_bars=48)
    (it,) = m.handle(step(pos(-1, bars_held=48))).intents
    assert it.side == 1 and it.purpose == "exit" and it.reason == "time_stop"


def test_time_stop_past_the_limit_still_fires() -> None:
    m = monitor(time_stop_bars=5)
    assert len(m.handle(step(pos(1, bars_held=6))).intents) == 1


def test_time_stop_wins_over_trailing() -> None:
    m = monitor(time_stop_bars=5)
    out = m.handle(step(pos(1, best=105.0, bars_held=5)))
    assert len(out.intents) == 1 and out.amends == ()


def test_time_stop_zero_disables() -> None:
    m = monitor(time_stop_bars=0)
    assert m.handle(step(pos(1, bars_held=100_000))).intents == ()


def test_positions_without_a_bar_this_step_are_left_alone() -> None:
    m = monitor(time_stop_bars=5)
    s = step(pos(1, best=105.0, bars_held=5), symbols=("XRPUSDT",))
    out = m.handle(s)
    assert out.amends == () and out.intents == ()


def test_existing_amends_and_intents_are_kept() -> None:
    m = monitor(time_stop_bars=5)
    prior_amend = Amend("XRPUSDT", 1.0, 2.0, "atr")
    prior_intent = OrderIntent("p", "XRPUSDT", T0, 1, 1.0, 1.0, "entry", "signal")
    a = pos(1, best=102.0, symbol="BTCUSDT")
    b = pos(-1, bars_held=5, symbol=SYM)
    out = m.handle(step(a, b, amends=(prior_amend,), intents=(prior_intent,)))
    assert out.amends[0] == prior_amend and len(out.amends) == 2
    assert out.amends[1].symbol == "BTCUSDT"
    assert out.intents[0] == prior_intent and len(out.intents) == 2
    assert out.intents[1].symbol == SYM and out.intents[1].reason == "time_stop"


def test_trailing_with_the_paper_broker_end_to_end() -> None:
    """Amends apply from the next bar; the stop fires as a trailing stop."""
    m = monitor(time_stop_bars=0)
    broker = Paper({"USDT": 10_000.0}, CostModel(0.0005, 0.0002, 0.0))
    broker.submit_now(OrderIntent("E", SYM, T0, 1, 1.0, 100.0, "entry", "signal", 0.05, 0.01,
                              3.0), 1.0)

    def run(i: int, o: float, h: float, lo: float, c: float) -> Step:
        bar = Bar(SYM, T0 + i * IV, o, h, lo, c, 1.0)
        fills, closed = broker.bars((bar,))
        positions, accounts = broker.snapshot()
        s = Step(seq=i, ts=bar.open_time, close_ts=bar.open_time + IV, bars=(bar,),
                 fills=tuple(fills), closed=tuple(closed), positions=positions,
                 accounts=accounts)
        out = m.handle(s)
        broker.amend_now(out.amends)
        return out

    out = run(1, 100.0, 100.5, 99.5, 100.2)  # entry at 100, +0.5 %: not active yet
    assert out.amends == ()
    out = run(2, 100.2, 102.0, 100.1, 101.0)  # best 102: stop -> 101.49
    assert out.amends[0].stop_price == pytest.approx(101.49)
    out = run(3, 101.6, 101.9, 101.5, 101.8)  # best stays 102: no new amend
    assert out.amends == ()
    out = run(4, 101.8, 101.9, 101.0, 101.2)  # falls through 101.49
    (f,) = out.fills
    assert f.reason == "trailing_stop" and f.price == pytest.approx(101.49)
    assert out.closed[0].net_pnl > 0
