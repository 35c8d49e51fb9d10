"""Portfolio: per-symbol statistics and the pause rules (losing streak, expectancy)."""

from __future__ import annotations

from typing import Any

import pytest

from qtraderd.core.config import PortfolioConfig
from qtraderd.core.messages import RiskEvent, Trade
from qtraderd.core.portfolio import Portfolio

IV = 300_000
T0 = 1_700_000_000_000
SYM = "ETHBTC"


def portfolio(**kw: Any) -> Portfolio:
    return Portfolio(PortfolioConfig(**kw), IV)


def trade(net: float, ret: float | None = None, symbol: str = SYM) -> Trade:
    ret = net if ret is None else ret
    return Trade(1, symbol, "BTC", 1, 1.0, T0, 0.05, T0 + IV, 0.05, net, 0.0, net, ret,
                 "x", 1)


def test_losing_streak_pauses_on_the_nth_loss() -> None:
    p = portfolio(max_losing_streak=3, expectancy_trades=0, pause_bars=10)
    assert p.on_trade(trade(-1.0), T0, "ACTIVE") == []
    assert p.on_trade(trade(-1.0), T0 + IV, "ACTIVE") == []
    assert not p.is_paused(SYM)
    (ev,) = p.on_trade(trade(-1.0), T0 + 2 * IV, "REDUCING")
    assert ev == RiskEvent(T0 + 2 * IV, "REDUCING", "REDUCING", "SYMBOL_PAUSED",
                           "LOSING_STREAK: 3 losing trades in a row", SYM)
    assert p.is_paused(SYM)
    assert p.paused() == {SYM: "LOSING_STREAK"}
    assert p.symbols[SYM].paused_until == T0 + 2 * IV + 10 * IV


def test_a_win_resets_the_streak() -> None:
    p = portfolio(max_losing_streak=3, expectancy_trades=0)
    for net in (-1.0, -1.0, 2.0, -1.0, -1.0):
        assert p.on_trade(trade(net), T0, "ACTIVE") == []
    assert p.symbols[SYM].losing_streak == 2
    assert not p.is_paused(SYM)


def test_break_even_trade_counts_as_a_loss() -> None:
    p = portfolio(max_losing_streak=2, expectancy_trades=0)
    p.on_trade(trade(-1.0), T0, "ACTIVE")
    assert len(p.on_trade(trade(0.0), T0, "ACTIVE")) == 1


def test_streaks_are_per_symbol() -> None:
    p = portfolio(max_losing_streak=2, expectancy_trades=0)
    p.on_trade(trade(-1.0), T0, "ACTIVE")
    assert p.on_trade(trade(-1.0, symbol="LTCBTC"), T0, "ACTIVE") == []
    assert not p.is_paused(SYM) and not p.is_paused("LTCBTC")


def test_streak_zero_disables() -> None:
    p = portfolio(max_losing_streak=0, expectancy_trades=0)
    for _ in range(50):
        assert p.on_trade(trade(-1.0), T0, "ACTIVE") == []


def test_negative_expectancy_over_the_last_n_trades() -> None:
    p = portfolio(max_losing_streak=0, expectancy_trades=4, pause_bars=5)
    assert p.on_trade(trade(1.0), T0, "ACTIVE") == []
    assert p.on_trade(trade(-2.0), T0, "ACTIVE") == []
    assert p.on_trade(trade(0.5), T0, "ACTIVE") == []  # only 3 trades so far
    (ev,) = p.on_trade(trade(-0.1), T0 + IV, "ACTIVE")  # mean -0.15 %
    assert ev.reason == "SYMBOL_PAUSED"
    assert ev.detail == "NEGATIVE_EXPECTANCY: mean return -0.15% over the last 4 trades"
    assert p.paused() == {SYM: "NEGATIVE_EXPECTANCY"}


def test_expectancy_uses_return_pct_and_a_rolling_window() -> None:
    p = portfolio(max_losing_streak=0, expectancy_trades=3)
    # net PnL negative but returns positive: no pause
    for _ in range(3):
        assert p.on_trade(trade(-1.0, ret=0.1), T0, "ACTIVE") == []
    # window of 3: a big early loss rolls out
    p = portfolio(max_losing_streak=0, expectancy_trades=3)
    for net in (5.0, 5.0, -4.0):
        assert p.on_trade(trade(net), T0, "ACTIVE") == []  # mean +2
    assert p.on_trade(trade(-1.0), T0, "ACTIVE") == []  # window 5, -4, -1: mean 0
    assert len(p.on_trade(trade(-1.0), T0, "ACTIVE")) == 1  # -4, -1, -1


def test_zero_mean_is_not_negative() -> None:
    p = portfolio(max_losing_streak=0, expectancy_trades=2)
    p.on_trade(trade(1.0), T0, "ACTIVE")
    assert p.on_trade(trade(-1.0), T0, "ACTIVE") == []


def test_no_second_pause_event_while_paused_but_stats_keep_counting() -> None:
    p = portfolio(max_losing_streak=1, expectancy_trades=0)
    assert len(p.on_trade(trade(-1.0), T0, "ACTIVE")) == 1
    assert p.on_trade(trade(-1.0), T0, "ACTIVE") == []
    s = p.stats()[SYM]
    assert s["trades"] == 2 and s["losing_streak"] == 2


def test_pause_expires_after_pause_bars() -> None:
    p = portfolio(max_losing_streak=1, expectancy_trades=5, pause_bars=288)
    p.on_trade(trade(-1.0), T0, "ACTIVE")
    end = T0 + 288 * IV
    assert p.expire(end - 1, "ACTIVE") == []
    assert p.is_paused(SYM)
    (ev,) = p.expire(end, "HALTED")
    assert ev == RiskEvent(end, "HALTED", "HALTED", "SYMBOL_RESUMED", "pause expired", SYM)
    assert not p.is_paused(SYM)
    assert p.paused() == {}
    st = p.symbols[SYM]
    assert st.losing_streak == 0 and len(st.recent) == 0
    assert st.trades == 1  # lifetime statistics survive
    assert p.expire(end + IV, "ACTIVE") == []


def test_pause_bars_zero_means_until_resumed() -> None:
    p = portfolio(max_losing_streak=1, expectancy_trades=0, pause_bars=0)
    p.on_trade(trade(-1.0), T0, "ACTIVE")
    assert p.symbols[SYM].paused_until == -1
    assert p.expire(T0 + 10**12, "ACTIVE") == []
    assert p.is_paused(SYM)
    ev = p.resume(SYM, T0 + 5, "ACTIVE", "ctl resume-symbol")
    assert ev is not None and ev.reason == "SYMBOL_RESUMED" and ev.detail == "ctl resume-symbol"
    assert not p.is_paused(SYM)


def test_manual_pause_never_expires_and_resume_clears_it() -> None:
    p = portfolio(pause_bars=1)
    ev = p.pause("LTCBTC", T0, "MANUAL", "ctl pause", "ACTIVE", manual=True)
    assert ev == RiskEvent(T0, "ACTIVE", "ACTIVE", "SYMBOL_PAUSED", "MANUAL: ctl pause",
                           "LTCBTC")
    assert p.expire(T0 + 10**12, "ACTIVE") == []
    assert p.paused() == {"LTCBTC": "MANUAL"}
    assert p.resume("LTCBTC", T0 + 1, "ACTIVE", "ctl resume-symbol") is not None
    assert not p.is_paused("LTCBTC")


def test_resume_of_a_symbol_that_is_not_paused() -> None:
    p = portfolio()
    assert p.resume("NOPE", T0, "ACTIVE", "x") is None
    p.on_trade(trade(1.0), T0, "ACTIVE")
    assert p.resume(SYM, T0, "ACTIVE", "x") is None
    assert not p.is_paused("NOPE")


def test_after_resume_the_streak_starts_again() -> None:
    p = portfolio(max_losing_streak=2, expectancy_trades=0, pause_bars=1)
    p.on_trade(trade(-1.0), T0, "ACTIVE")
    p.on_trade(trade(-1.0), T0, "ACTIVE")
    p.expire(T0 + IV, "ACTIVE")
    assert p.on_trade(trade(-1.0), T0 + 2 * IV, "ACTIVE") == []
    assert len(p.on_trade(trade(-1.0), T0 + 3 * IV, "ACTIVE")) == 1


def test_stats() -> None:
    p = portfolio(max_losing_streak=0, expectancy_trades=10)
    assert p.stats() == {}
    for net in (2.0, -1.0, -1.0, 4.0):
        p.on_trade(trade(net), T0, "ACTIVE")
    assert p.stats() == {SYM: {
        "trades": 4, "win_rate": 0.5, "net_pnl": pytest.approx(4.0), "losing_streak": 0,
        "expectancy_pct": pytest.approx(1.0), "paused": "",
    }}
