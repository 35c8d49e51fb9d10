"""PaperBroker: next-open fills, protective orders inside the bar, linear-futures accounting.

The broker is asynchronous and event-driven (venues/base.py); `Paper` below drives it the
way the execution actor does — submit, then hand it a bar and drain its events — and
reads fills and closed trades out of those events. The lifecycle events, cancel and the
export/reconcile round trip have their own tests (test_paper_events.py).
"""

from __future__ import annotations

import pytest

from qtraderd.core.costs import CostModel
from qtraderd.core.messages import Amend, Bar, OrderIntent
from tests.helpers import Paper

IV = 300_000  # 5m bars
T0 = 1_700_000_100_000 - (1_700_000_100_000 % IV)
SLIP = 0.0002  # 2 bps
FEE = 0.0005  # 0.05 % taker
SYM = "ETHUSDT"
START = 10_000.0


def costs(slippage: float = SLIP) -> CostModel:
    return CostModel(taker_fee=FEE, maker_fee=0.0002, slippage=slippage)


def broker(slippage: float = SLIP) -> Paper:
    return Paper({"USDT": START, "BTC": 1.0}, costs(slippage))


def bar(i: int, o: float, h: float, low: float, c: float, symbol: str = SYM) -> Bar:
    assert low <= min(o, c) and h >= max(o, c)
    return Bar(symbol, T0 + i * IV, o, h, low, c, 1000.0)


def flat(i: int, price: float, symbol: str = SYM) -> Bar:
    """A quiet bar: +-0.1 %, inside any default TP/SL."""
    return bar(i, price, price * 1.001, price * 0.999, price, symbol)


def entry(side: int, qty: float = 2.0, symbol: str = SYM, tp: float = 0.016,
          sl: float = 0.008, lev: float = 3.0, id: str = "E1") -> OrderIntent:
    return OrderIntent(id=id, symbol=symbol, ts=T0, side=side, qty=qty, ref_price=100.0,
                       purpose="entry", reason="signal", tp_pct=tp, sl_pct=sl,
                       leverage=lev)


def exit_(side: int, qty: float = 2.0, symbol: str = SYM, reason: str = "time_stop",
          id: str = "X1") -> OrderIntent:
    return OrderIntent(id=id, symbol=symbol, ts=T0, side=side, qty=qty, ref_price=100.0,
                       purpose="exit", reason=reason)


def opened(side: int, open_price: float = 100.0, qty: float = 2.0, **kw: float
           ) -> Paper:
    """A broker holding one position entered at bar 1's open (a quiet bar)."""
    b = broker()
    b.submit_now(entry(side, qty, **kw), qty)
    fills, closed = b.bars((flat(1, open_price),))
    assert len(fills) == 1 and not closed
    return b


# ----------------------------------------------------------------------------- entries


def test_market_order_waits_for_the_next_bar() -> None:
    b = broker()
    b.submit_now(entry(1), 2.0)
    assert b.pending_count() == 1
    assert not b.positions
    # a bar of another symbol does not fill it
    fills, _ = b.bars((flat(1, 0.05, "ETHBTC"),))
    assert fills == [] and b.pending_count() == 1
    fills, _ = b.bars((flat(1, 100.0),))
    assert len(fills) == 1 and b.pending_count() == 0


def test_long_entry_fills_at_next_open_plus_slippage_with_taker_fee() -> None:
    b = broker()
    b.submit_now(entry(1, qty=5.0), 2.0)  # the approved qty wins over the intent's
    fills, closed = b.bars((bar(1, 100.0, 100.5, 99.5, 100.3),))
    assert closed == []
    (f,) = fills
    price = 100.0 * (1 + SLIP)
    assert f.price == pytest.approx(100.02)
    assert f.price == pytest.approx(price)
    assert f.qty == 2.0 and f.side == 1 and f.ts == T0 + IV
    assert f.fee == pytest.approx(2.0 * price * FEE)  # 0.10002
    assert f.fee == pytest.approx(0.10002)
    assert (f.order_id, f.liquidity, f.reason) == ("E1", "taker", "entry")
    assert b.balances["USDT"] == pytest.approx(START - 0.10002)
    pos = b.positions[SYM]
    assert pos.entry_price == pytest.approx(price)
    assert pos.stop_price == pytest.approx(price * (1 - 0.008))
    assert pos.take_price == pytest.approx(price * (1 + 0.016))
    assert pos.margin == pytest.approx(2.0 * price / 3.0)
    assert pos.entry_ts == T0 + IV and pos.quote == "USDT"
    assert pos.bars_held == 1
    assert pos.mark_price == 100.3
    assert pos.best_price == 100.5


def test_short_entry_fills_at_next_open_minus_slippage_with_taker_fee() -> None:
    b = broker()
    b.submit_now(entry(-1), 2.0)
    (f,), _ = b.bars((bar(1, 100.0, 100.5, 99.5, 99.8),))
    price = 100.0 * (1 - SLIP)
    assert f.price == pytest.approx(99.98)
    assert f.side == -1
    assert f.fee == pytest.approx(2.0 * 99.98 * FEE)
    pos = b.positions[SYM]
    assert pos.side == -1
    assert pos.stop_price == pytest.approx(price * 1.008)
    assert pos.take_price == pytest.approx(price * 0.984)
    assert pos.best_price == 99.5
    assert pos.mark_price == 99.8
    assert pos.unrealized() == pytest.approx(-2.0 * (99.8 - price))


def test_entry_in_btc_quoted_pair_charges_the_btc_account() -> None:
    b = broker()
    b.submit_now(entry(1, qty=1.5, symbol="ETHBTC"), 1.5)
    (f,), _ = b.bars((flat(1, 0.05, "ETHBTC"),))
    assert f.price == pytest.approx(0.05 * (1 + SLIP))
    assert b.balances["BTC"] == pytest.approx(1.0 - 1.5 * 0.05 * (1 + SLIP) * FEE)
    assert b.balances["USDT"] == START
    assert b.positions["ETHBTC"].quote == "BTC"


def test_entry_dropped_when_a_position_exists() -> None:
    b = opened(1)
    before = b.balances["USDT"]
    pos = b.positions[SYM]
    b.submit_now(entry(1, id="E2"), 2.0)
    fills, closed = b.bars((flat(2, 100.0),))
    assert fills == [] and closed == []
    assert b.positions[SYM].order_id == "E1"
    assert b.positions[SYM].entry_price == pos.entry_price
    assert b.balances["USDT"] == before
    assert b.pending_count() == 0


def test_second_entry_in_the_same_bar_is_dropped() -> None:
    b = broker()
    b.submit_now(entry(1, id="A"), 2.0)
    b.submit_now(entry(-1, id="B"), 3.0)
    fills, _ = b.bars((flat(1, 100.0),))
    assert [f.order_id for f in fills] == ["A"]
    assert b.positions[SYM].side == 1 and b.positions[SYM].qty == 2.0


def test_no_protective_orders_when_pcts_are_zero() -> None:
    b = broker()
    b.submit_now(entry(1, tp=0.0, sl=0.0), 2.0)
    b.bars((flat(1, 100.0),))
    pos = b.positions[SYM]
    assert pos.stop_price == 0.0 and pos.take_price == 0.0
    fills, closed = b.bars((bar(2, 100.0, 150.0, 50.0, 100.0),))
    assert fills == [] and closed == []
    assert SYM in b.positions


# ----------------------------------------------------------------------------- exits


def test_exit_with_no_position_is_a_noop() -> None:
    b = broker()
    b.submit_now(exit_(-1), 2.0)
    fills, closed = b.bars((flat(1, 100.0),))
    assert fills == [] and closed == []
    assert b.balances == {"USDT": START, "BTC": 1.0}
    assert b.pending_count() == 0
    assert not b.positions


def test_exit_on_the_same_side_as_the_position_is_ignored() -> None:
    b = opened(1)
    b.submit_now(exit_(1), 2.0)
    fills, closed = b.bars((flat(2, 100.0),))
    assert fills == [] and closed == []
    assert SYM in b.positions


def test_long_round_trip_pnl_balance_and_equity() -> None:
    b = broker()
    b.submit_now(entry(1), 2.0)
    b.bars((bar(1, 100.0, 101.2, 99.5, 101.0),))
    entry_px = 100.02
    entry_fee = 2.0 * entry_px * FEE
    positions, accounts = b.snapshot()
    (pv,) = positions
    usdt = next(a for a in accounts if a.quote == "USDT")
    assert pv.unrealized == pytest.approx(2.0 * (101.0 - entry_px))
    assert usdt.balance == pytest.approx(START - entry_fee)
    assert usdt.equity == pytest.approx(START - entry_fee + 2.0 * (101.0 - entry_px))
    assert usdt.exposure == pytest.approx(2.0 * 101.0)
    assert usdt.margin_used == pytest.approx(2.0 * entry_px / 3.0)
    assert usdt.open_positions == 1
    btc = next(a for a in accounts if a.quote == "BTC")
    assert (btc.balance, btc.equity, btc.exposure, btc.open_positions) == (1.0, 1.0, 0.0, 0)

    b.submit_now(exit_(-1), 2.0)
    fills, closed = b.bars((bar(2, 101.5, 101.6, 101.0, 101.2),))
    exit_px = 101.5 * (1 - SLIP)
    exit_fee = 2.0 * exit_px * FEE
    (f,) = fills
    assert f.price == pytest.approx(exit_px)
    assert f.side == -1 and f.fee == pytest.approx(exit_fee)
    assert (f.order_id, f.reason) == ("X1", "time_stop")
    (t,) = closed
    gross = 2.0 * (exit_px - entry_px)
    net = gross - entry_fee - exit_fee
    assert t.gross_pnl == pytest.approx(gross)
    assert t.fees == pytest.approx(entry_fee + exit_fee)
    assert t.net_pnl == pytest.approx(net)
    assert t.return_pct == pytest.approx(100.0 * net / (2.0 * entry_px / 3.0))
    assert (t.side, t.qty, t.quote, t.exit_reason, t.id) == (1, 2.0, "USDT", "time_stop", 1)
    assert (t.entry_ts, t.exit_ts) == (T0 + IV, T0 + 2 * IV)
    assert t.entry_price == pytest.approx(entry_px)
    assert t.exit_price == pytest.approx(exit_px)
    assert t.bars_held == 1
    assert b.balances["USDT"] == pytest.approx(START + net)
    positions, accounts = b.snapshot()
    assert positions == ()
    usdt = next(a for a in accounts if a.quote == "USDT")
    assert usdt.equity == usdt.balance == pytest.approx(START + net)
    assert usdt.exposure == 0.0 and usdt.margin_used == 0.0 and usdt.open_positions == 0


def test_short_round_trip_profits_when_price_falls() -> None:
    b = opened(-1)
    entry_px = 100.0 * (1 - SLIP)
    b.submit_now(exit_(1, reason="flatten"), 2.0)
    (f,), (t,) = b.bars((flat(2, 99.5),))
    exit_px = 99.5 * (1 + SLIP)  # buying back pays up
    assert f.price == pytest.approx(exit_px)
    assert f.side == 1
    gross = -2.0 * (exit_px - entry_px)
    fees = 2.0 * entry_px * FEE + 2.0 * exit_px * FEE
    assert gross > 0
    assert t.gross_pnl == pytest.approx(gross)
    assert t.net_pnl == pytest.approx(gross - fees)
    assert t.exit_reason == "flatten"
    assert b.balances["USDT"] == pytest.approx(START + gross - fees)


def test_exits_fill_before_entries_reversal() -> None:
    b = opened(1)
    b.submit_now(entry(-1, id="E2"), 3.0)  # queued first, but exits go first
    b.submit_now(exit_(-1), 2.0)
    fills, closed = b.bars((flat(2, 100.0),))
    assert [(f.order_id, f.reason) for f in fills] == [("X1", "time_stop"), ("E2", "entry")]
    assert len(closed) == 1 and closed[0].side == 1
    pos = b.positions[SYM]
    assert pos.side == -1 and pos.qty == 3.0 and pos.order_id == "E2"


def test_trade_ids_increase() -> None:
    b = opened(1)
    b.submit_now(exit_(-1), 2.0)
    _, (t1,) = b.bars((flat(2, 100.0),))
    b.submit_now(entry(1, id="E2"), 2.0)
    b.bars((flat(3, 100.0),))
    b.submit_now(exit_(-1, id="X2"), 2.0)
    _, (t2,) = b.bars((flat(4, 100.0),))
    assert (t1.id, t2.id) == (1, 2)


# ----------------------------------------------------------------------------- protective


def test_long_take_profit_fills_at_the_level() -> None:
    b = opened(1)
    take = b.positions[SYM].take_price  # 100.02 * 1.016 = 101.62032
    (f,), (t,) = b.bars((bar(2, 100.5, 102.0, 100.2, 101.0),))
    assert f.price == pytest.approx(take * (1 - SLIP))
    assert (f.reason, f.order_id, f.side) == ("take_profit", "E1-TP", -1)
    assert t.exit_reason == "take_profit" and t.net_pnl > 0
    assert t.bars_held == 1
    assert SYM not in b.positions


def test_short_take_profit_fills_at_the_level() -> None:
    b = opened(-1)
    take = b.positions[SYM].take_price  # 99.98 * 0.984
    (f,), (t,) = b.bars((bar(2, 99.5, 99.8, 98.0, 98.5),))
    assert f.price == pytest.approx(take * (1 + SLIP))
    assert f.reason == "take_profit" and f.side == 1
    assert t.net_pnl > 0


def test_long_stop_loss_fills_at_the_level() -> None:
    b = opened(1)
    stop = b.positions[SYM].stop_price  # 100.02 * 0.992 = 99.21984
    (f,), (t,) = b.bars((bar(2, 99.8, 100.0, 99.0, 99.5),))
    assert f.price == pytest.approx(stop * (1 - SLIP))
    assert (f.reason, f.order_id) == ("stop_loss", "E1-SL")
    assert t.exit_reason == "stop_loss" and t.net_pnl < 0


def test_long_stop_first_when_bar_touches_both() -> None:
    b = opened(1)
    stop = b.positions[SYM].stop_price
    (f,), (t,) = b.bars((bar(2, 100.0, 103.0, 98.0, 101.0),))
    assert f.reason == "stop_loss"
    assert f.price == pytest.approx(stop * (1 - SLIP))
    assert t.exit_reason == "stop_loss"


def test_short_stop_first_when_bar_touches_both() -> None:
    b = opened(-1)
    stop = b.positions[SYM].stop_price  # 99.98 * 1.008
    (f,), (t,) = b.bars((bar(2, 100.0, 102.0, 97.0, 99.0),))
    assert f.reason == "stop_loss" and f.side == 1
    assert f.price == pytest.approx(stop * (1 + SLIP))
    assert t.net_pnl < 0


def test_long_gap_through_stop_fills_at_the_open() -> None:
    b = opened(1)
    stop = b.positions[SYM].stop_price
    (f,), (t,) = b.bars((bar(2, 98.0, 98.5, 97.5, 98.2),))
    assert f.price == pytest.approx(98.0 * (1 - SLIP))
    assert f.price < stop * (1 - SLIP)  # worse than the stop
    assert t.exit_reason == "stop_loss"


def test_short_gap_through_stop_fills_at_the_open() -> None:
    b = opened(-1)
    stop = b.positions[SYM].stop_price
    (f,), _ = b.bars((bar(2, 102.0, 102.5, 101.5, 102.0),))
    assert f.price == pytest.approx(102.0 * (1 + SLIP))
    assert f.price > stop * (1 + SLIP)


def test_long_gap_beyond_take_fills_at_the_open() -> None:
    b = opened(1)
    take = b.positions[SYM].take_price
    (f,), _ = b.bars((bar(2, 103.0, 103.5, 102.5, 103.0),))
    assert f.reason == "take_profit"
    assert f.price == pytest.approx(103.0 * (1 - SLIP))
    assert f.price > take * (1 - SLIP)


def test_gap_beyond_take_wins_even_if_the_bar_later_reaches_the_stop() -> None:
    # The open is the first price of the bar: the take-profit filled there, before the
    # bar fell through the stop, so "stop first" does not apply.
    b = opened(1)
    (f,), (t,) = b.bars((bar(2, 103.0, 103.5, 98.0, 98.5),))
    assert f.reason == "take_profit"
    assert f.price == pytest.approx(103.0 * (1 - SLIP))
    assert t.net_pnl > 0
    s = opened(-1)
    (f,), _ = s.bars((bar(2, 97.0, 102.0, 96.5, 101.0),))
    assert f.reason == "take_profit"
    assert f.price == pytest.approx(97.0 * (1 + SLIP))


def test_position_opened_at_the_open_is_exposed_to_that_bar() -> None:
    b = broker()
    b.submit_now(entry(1), 2.0)
    fills, closed = b.bars((bar(1, 100.0, 100.2, 99.0, 99.5),))
    assert [f.reason for f in fills] == ["entry", "stop_loss"]
    (t,) = closed
    assert t.entry_ts == t.exit_ts == T0 + IV
    assert t.bars_held == 0
    assert t.exit_price == pytest.approx(100.02 * 0.992 * (1 - SLIP))
    assert not b.positions
    fee_in = 2.0 * 100.02 * FEE
    assert t.fees == pytest.approx(fee_in + 2.0 * t.exit_price * FEE)
    assert b.balances["USDT"] == pytest.approx(START + t.net_pnl)


def test_bars_held_and_best_price_track_each_bar() -> None:
    b = opened(1)  # bar 1: high 100.1
    pos = b.positions[SYM]
    assert pos.bars_held == 1 and pos.best_price == pytest.approx(100.1)
    b.bars((bar(2, 100.0, 100.8, 99.9, 100.5),))
    b.bars((bar(3, 100.5, 100.6, 100.0, 100.2),))
    assert pos.bars_held == 3
    assert pos.best_price == pytest.approx(100.8)  # never falls back
    assert pos.mark_price == 100.2
    s = opened(-1)
    s.bars((bar(2, 100.0, 100.1, 99.3, 99.6),))
    assert s.positions[SYM].best_price == pytest.approx(99.3)


def test_amend_moves_levels_and_trailing_stop_reports_its_reason() -> None:
    b = opened(1)
    b.amend_now((Amend(SYM, 100.5, 110.0, "trailing"), Amend("XRPUSDT", 1.0, 2.0, "trailing")))
    pos = b.positions[SYM]
    assert (pos.stop_price, pos.take_price, pos.trailing) == (100.5, 110.0, True)
    (f,), (t,) = b.bars((bar(2, 100.8, 101.0, 100.4, 100.6),))
    assert f.reason == "trailing_stop"
    assert f.price == pytest.approx(100.5 * (1 - SLIP))
    assert t.exit_reason == "trailing_stop"


def test_non_trailing_amend_keeps_stop_loss_reason() -> None:
    b = opened(1)
    b.amend_now((Amend(SYM, 99.9, 120.0, "atr"),))
    assert b.positions[SYM].trailing is False
    (f,), _ = b.bars((bar(2, 100.0, 100.1, 99.8, 99.9),))
    assert f.reason == "stop_loss" and f.price == pytest.approx(99.9 * (1 - SLIP))


def test_pending_exit_closes_before_protective_orders_are_checked() -> None:
    b = opened(1)
    b.submit_now(exit_(-1), 2.0)
    fills, closed = b.bars((bar(2, 100.0, 100.1, 95.0, 96.0),))  # would hit the stop
    assert [f.reason for f in fills] == ["time_stop"]
    assert closed[0].exit_price == pytest.approx(100.0 * (1 - SLIP))


def test_zero_slippage_fills_exactly_at_levels() -> None:
    b = broker(slippage=0.0)
    b.submit_now(entry(1), 2.0)
    b.bars((flat(1, 100.0),))
    assert b.positions[SYM].entry_price == 100.0
    (f,), _ = b.bars((bar(2, 100.0, 100.2, 99.0, 99.5),))
    assert f.price == pytest.approx(99.2)


def test_two_symbols_in_one_step_are_independent() -> None:
    b = broker()
    b.submit_now(entry(1, symbol="ETHBTC", qty=1.0), 1.0)
    b.submit_now(entry(-1, symbol="XRPUSDT", qty=100.0, id="E2"), 100.0)
    fills, _ = b.bars((flat(1, 0.05, "ETHBTC"), flat(1, 0.5, "XRPUSDT")))
    assert [f.symbol for f in fills] == ["ETHBTC", "XRPUSDT"]
    positions, accounts = b.snapshot()
    assert [p.symbol for p in positions] == ["ETHBTC", "XRPUSDT"]
    by_quote = {a.quote: a for a in accounts}
    assert by_quote["BTC"].open_positions == 1 and by_quote["USDT"].open_positions == 1
    assert by_quote["BTC"].balance == pytest.approx(1.0 - 0.05 * (1 + SLIP) * FEE)
    assert by_quote["USDT"].balance == pytest.approx(START - 100.0 * 0.5 * (1 - SLIP) * FEE)
