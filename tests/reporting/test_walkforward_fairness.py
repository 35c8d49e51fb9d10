"""Walk-forward fairness on constructed series: the random arm exits and sizes like the
strategy, buy-and-hold is also shown at the strategy's exposure, every arm gets the same
Sharpe, and the intervals on the validation lines are the textbook ones.

No daemon runs here (test_walkforward.py runs one): bars are built by hand so that the
expected exits and figures can be written down.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from qtraderd.core import config as config_mod
from qtraderd.core.config import with_changes
from qtraderd.core.costs import CostModel
from qtraderd.reporting.walkforward_arms import (
    Arm,
    at_exposure,
    buy_hold_arm,
    period_grid,
    random_arm,
)
from qtraderd.reporting.walkforward_plan import Plan
from qtraderd.reporting.walkforward_sim import (
    ExitRules,
    sharpe,
    simulate,
    t_interval,
    t_quantile,
    wilson,
)

MS = 300_000  # 5m
T0 = 1_600_000_000_000


def plan_for(bars: dict[str, np.ndarray], test_from: int, **sections: dict) -> Plan:
    cfg = with_changes(config_mod.load(None, env={}), **sections)
    end = int(max(a[-1, 0] for a in bars.values()))
    return Plan(cfg, Path("."), Path("."), tuple(bars), MS, T0, T0 + test_from * MS, end,
                1.0, 24.0)


def series(close: np.ndarray, spread: float = 1e-4) -> np.ndarray:
    """(n, 6) bars: open = previous close, high/low a hair around the body."""
    close = np.asarray(close, dtype=np.float64)
    o = np.concatenate([[close[0]], close[:-1]])
    hi = np.maximum(o, close) * (1 + spread)
    lo = np.minimum(o, close) * (1 - spread)
    ts = T0 + MS * np.arange(len(close))
    return np.column_stack([ts, o, hi, lo, close, np.ones(len(close))])


def quiet(n: int, seed: int) -> np.ndarray:
    """A random walk of 0.01 % steps: it never reaches a 1.6 % / 0.8 % barrier in 48 bars."""
    rng = np.random.default_rng(seed)
    return series(100.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, n))))


def test_random_trades_never_hold_past_the_time_stop() -> None:
    bars = {"ETHBTC": quiet(600, 1), "LTCBTC": quiet(600, 2)}
    plan = plan_for(bars, 100, monitor={"time_stop_bars": 6, "trailing": False},
                    labels={"horizon_bars": 48})
    grid = period_grid(bars, plan)
    arm, trades = random_arm(bars, plan, grid, [0.05] * 30, seed=3)
    assert arm.entries == 30 and len(trades) == 30
    for sym, decided, exited, *_ in trades:
        # decided at t, filled at t+1's open, held 6 bars, out at t+7's open (or still
        # open when the data ends first)
        if exited == -1:
            assert decided + 7 * MS > plan.test_end
        else:
            assert exited - decided == 7 * MS, (sym, decided, exited)


def test_the_trailing_stop_locks_in_a_smaller_win_than_the_take_profit() -> None:
    # up 1.2 % (past the 1 % activation), then back down: the stop follows 0.5 % behind
    # the best price instead of waiting for the 0.8 % stop loss or the 1.6 % take-profit
    close = np.array([100.0, 100.0, 100.4, 100.8, 101.2, 101.0, 100.5, 100.0, 99.0, 98.0])
    a = series(close, spread=0.0)
    cfg = config_mod.load(None, env={})
    rules = ExitRules.from_config(cfg)
    tr = simulate(a[:, 1], a[:, 2], a[:, 3], 0, 1, 1.0, rules)
    assert tr.reason == "trailing_stop"
    assert tr.exit_i == 6  # the bar opening at 101.0 and falling through 101.2 x 0.995
    costs = CostModel.from_config(cfg.costs)
    assert tr.exit_price == pytest.approx(costs.fill_price(101.2 * 0.995, -1))
    assert 0 < tr.net_return < 0.016
    off = ExitRules(**{**rules.__dict__, "trailing": False})
    assert simulate(a[:, 1], a[:, 2], a[:, 3], 0, 1, 1.0, off).reason == "stop_loss"


def test_random_entries_take_the_strategy_sizes_in_time_order() -> None:
    bars = {"ETHBTC": quiet(500, 4), "XMRBTC": quiet(500, 5)}
    plan = plan_for(bars, 50)
    sizes = [0.01, 0.2, 0.05, 0.11, 0.07, 0.03]
    _, trades = random_arm(bars, plan, period_grid(bars, plan), sizes, seed=1)
    assert [t[1] for t in trades] == sorted(t[1] for t in trades)
    balance = plan.cfg.account.balances["BTC"]
    assert [t[4] for t in trades] == pytest.approx([s * balance for s in sizes])


def test_the_random_arm_is_marked_to_market_every_bar() -> None:
    bars = {"ETHBTC": quiet(400, 6)}
    plan = plan_for(bars, 50, monitor={"time_stop_bars": 40})
    grid = period_grid(bars, plan)
    arm, trades = random_arm(bars, plan, grid, [0.5] * 3, seed=2)
    exits = {t[2] for t in trades}
    moved = np.flatnonzero(np.diff(arm.values) != 0) + 1
    assert any(int(grid[i]) not in exits for i in moved)  # unrealised PnL moves the curve
    assert 0 < arm.exposure < 0.5 and 0 < arm.time_in_market < 1


def test_buy_and_hold_at_exposure_is_exposure_times_buy_and_hold() -> None:
    close = np.concatenate([np.linspace(100, 120, 300), np.linspace(120, 110, 300)])
    bars = {"ETHBTC": series(close), "LTCBTC": series(close[::-1])}
    plan = plan_for(bars, 100)
    grid = period_grid(bars, plan)
    bh = buy_hold_arm(bars, plan, grid)
    scaled = at_exposure(bh, 0.137, "continuous learning")
    full, part = bh.stats(MS)["return_pct"], scaled.stats(MS)["return_pct"]
    assert part == pytest.approx(0.137 * full, rel=1e-12)
    assert scaled.stats(MS)["max_drawdown_pct"] < bh.stats(MS)["max_drawdown_pct"]
    assert scaled.stats(MS)["exposure_pct"] == pytest.approx(13.7)
    assert "13.70 % invested" in scaled.note


def test_every_arm_gets_the_same_sharpe_definition() -> None:
    rng = np.random.default_rng(0)
    values = np.cumprod(1 + rng.normal(2e-5, 1e-3, 500))
    rets = np.diff(np.concatenate([[1.0], values])) / np.concatenate([[1.0], values[:-1]])
    by_hand = rets.mean() / rets.std() * math.sqrt(365 * 288)
    assert sharpe(values, MS) == pytest.approx(by_hand)
    for key in ("continuous", "frozen", "buy_hold", "buy_hold_exposure", "random"):
        assert Arm(key, values, 0, 0, 0, {}).stats(MS)["sharpe"] == pytest.approx(by_hand)
    assert sharpe(np.ones(10), MS) is None


def test_intervals_match_the_textbook() -> None:
    from scipy import stats

    for df in (*range(1, 40), 60, 120, 1000):
        assert t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3), df
    x = [0.01, -0.02, 0.015, 0.004, -0.007]
    m, lo, hi = t_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (lo, hi) == pytest.approx(ref, rel=5e-4) and m == pytest.approx(np.mean(x))
    assert t_interval([0.1]) == (0.1, None, None) and t_interval([]) == (None, None, None)
    lo, hi = wilson(30, 100)  # the textbook example: 0.2189 .. 0.3958
    assert (lo, hi) == pytest.approx((0.2189, 0.3958), abs=1e-4)
    assert wilson(0, 0) == (None, None) and wilson(0, 5)[0] == 0.0
