"""The arms of `qtraderd walkforward`, each as an equity multiple on one time grid.

Fairness rules (each has a test):
* every curve is marked to market at the close of every grid bar (the bar closes of the
  test period, 1.0 at its start), so return, drawdown and the one Sharpe per arm
  (`walkforward_sim.sharpe`) are computed the same way, at the same frequency, for all;
* random entries leave the market through the daemon's own exits (TP/SL, trailing stop,
  time stop: `walkforward_sim.simulate`) and take the strategy's own sizes: the k-th random
  entry in time commits the same fraction of its account as the strategy's k-th entry
  did (RL multiplier, plugin scaling and risk reductions included);
* buy-and-hold is shown twice: fully invested, and at the strategy's exposure - the
  time-average over the test period's bars of the strategy's open notional divided by
  its equity (`Arm.exposure`), the rest held as cash. Its return is exactly exposure x
  the fully invested return; it answers "was the market exposure the strategy took
  worth more than the same exposure held passively?".
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qtraderd.core.config import per_quote
from qtraderd.core.costs import CostModel
from qtraderd.core.instruments import quote_asset
from qtraderd.features.spec import FEATURE_NAMES, compute
from qtraderd.reporting.walkforward_plan import ARMS, Plan
from qtraderd.reporting.walkforward_sim import ExitRules, SimTrade, sharpe, simulate, t_interval

_I_ATR = FEATURE_NAMES.index("atr_14")


@dataclass
class Arm:
    """One arm on the common time grid of the test period (value 1.0 = its start)."""

    key: str
    values: np.ndarray  # equity multiple at the close of every grid bar
    entries: int
    trades: int  # closed
    wins: int
    net_pnl: dict[str, float]  # per quote currency, realised
    note: str = ""
    exposure: float = 0.0  # mean over grid bars of open notional / equity
    time_in_market: float = 0.0  # fraction of grid bars with a position open
    # (exit ts, net return on the entry notional) of every closed trade
    trade_returns: list[tuple[int, float]] = field(default_factory=list)

    def stats(self, interval_ms: int) -> dict[str, Any]:
        """Return, drawdown, Sharpe, exposure and the trades' mean return with its 95 %
        t-interval, over the test period."""
        v = np.concatenate([[1.0], self.values])
        peak = np.maximum.accumulate(v)
        mean, lo, hi = t_interval([r for _, r in self.trade_returns])
        return {"arm": ARMS[self.key], "entries": self.entries, "trades": self.trades,
                "win_rate_pct": 100.0 * self.wins / self.trades if self.trades else None,
                "net_pnl": self.net_pnl, "return_pct": 100.0 * (v[-1] - 1.0),
                "max_drawdown_pct": 100.0 * float(np.max(1.0 - v / peak)),
                "sharpe": sharpe(self.values, interval_ms), "bars": len(self.values),
                "exposure_pct": 100.0 * self.exposure,
                "time_in_market_pct": 100.0 * self.time_in_market,
                "mean_trade_pct": pct(mean), "mean_trade_ci95_pct": [pct(lo), pct(hi)],
                "note": self.note}


def pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def load_bars(conn: sqlite3.Connection, plan: Plan) -> dict[str, np.ndarray]:
    """(n, 6) arrays of open_time, open, high, low, close, volume per symbol, up to the
    test end (from the first replayed bar: ATR features need the same history)."""
    out = {}
    for sym in plan.symbols:
        rows = conn.execute("SELECT open_time, open, high, low, close, volume FROM bars WHERE "
                            "symbol=? AND interval=? AND open_time<=? ORDER BY open_time",
                            (sym, plan.cfg.feed.interval, plan.test_end)).fetchall()
        out[sym] = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return out


def period_grid(bars: dict[str, np.ndarray], plan: Plan) -> np.ndarray:
    ts = np.concatenate([a[:, 0] for a in bars.values()]).astype(np.int64)
    return np.unique(ts[(ts >= plan.test_start) & (ts <= plan.test_end)])


def ffill(grid: np.ndarray, ts: np.ndarray, values: np.ndarray, before: float) -> np.ndarray:
    """values at the last ts <= each grid time (`before` where there is none yet)."""
    idx = np.searchsorted(ts, grid, side="right") - 1
    return np.where(idx >= 0, values[np.maximum(idx, 0)], before)


def daemon_arm(conn: sqlite3.Connection, run_id: int, plan: Plan, grid: np.ndarray,
               key: str) -> Arm:
    """A daemon arm from its store: equity (marked to market), exposure and trades in the
    test period. With several quote currencies the multiple (and the exposure) is the
    mean of each account's."""
    curves, expo, busy, pnl = [], [], [], {}
    for q in sorted({quote_asset(s) for s in plan.symbols}):
        rows = np.array(conn.execute("SELECT ts, equity, exposure, open_positions FROM equity "
                                     "WHERE run_id=? AND quote=? ORDER BY seq", (run_id, q)
                                     ).fetchall(), dtype=np.float64).reshape(-1, 4)
        pre = rows[rows[:, 0] < plan.test_start]
        base = float(pre[-1, 1]) if len(pre) else per_quote(plan.cfg.account.balances, q)
        curves.append(ffill(grid, rows[:, 0], rows[:, 1], base) / base)
        eq = np.where(rows[:, 1] > 0, rows[:, 1], np.inf)
        expo.append(ffill(grid, rows[:, 0], rows[:, 2] / eq, 0.0))
        busy.append(ffill(grid, rows[:, 0], rows[:, 3], 0.0) > 0)
        pnl[q] = float(conn.execute(
            "SELECT coalesce(sum(net_pnl), 0) FROM trades WHERE run_id=? AND quote=? AND "
            "entry_ts>=?", (run_id, q, plan.test_start)).fetchone()[0])
    closed = conn.execute("SELECT exit_ts, net_pnl, qty * entry_price FROM trades WHERE "
                          "run_id=? AND entry_ts>=? ORDER BY exit_ts, id",
                          (run_id, plan.test_start)).fetchall()
    entries, early = conn.execute(
        "SELECT coalesce(sum(ts>=?), 0), coalesce(sum(ts<?), 0) FROM fills WHERE run_id=? "
        "AND reason='entry'", (plan.test_start, plan.test_start, run_id)).fetchone()
    open_now = conn.execute("SELECT count(*) FROM positions WHERE run_id=? AND qty>0",
                            (run_id,)).fetchone()[0]
    note = f"{open_now} position(s) still open at the end, marked to market" if open_now \
        else ""
    if early:
        note += f"; {early} entries before the test period left out"
    return Arm(key, np.mean(curves, axis=0), int(entries), len(closed),
               sum(net > 0 for _, net, _ in closed), pnl, note,
               exposure=float(np.mean(expo)) if len(grid) else 0.0,
               time_in_market=float(np.mean(np.any(busy, axis=0))) if len(grid) else 0.0,
               trade_returns=[(int(t), net / n) for t, net, n in closed if n > 0])


def entry_fractions(conn: sqlite3.Connection, run_id: int, plan: Plan) -> list[float]:
    """The strategy's entries in the test period, in time order, as notional over its
    quote account's starting balance: the sizes the random arm reuses."""
    out = []
    for sym, qty, price in conn.execute(
            "SELECT symbol, qty, price FROM fills WHERE run_id=? AND reason='entry' AND "
            "ts>=? ORDER BY ts, symbol", (run_id, plan.test_start)).fetchall():
        bal = per_quote(plan.cfg.account.balances, quote_asset(sym))
        out.append(qty * price / bal if bal > 0 else 0.0)
    return out


def buy_hold_arm(bars: dict[str, np.ndarray], plan: Plan, grid: np.ndarray) -> Arm:
    """Equal weight per symbol: buy at the first test bar's open, mark at each close,
    one cost-model round trip (fees + slippage) taken off."""
    rt = CostModel.from_config(plan.cfg.costs).round_trip()
    rel, nets, pnl = [], {}, {}
    for sym, a in bars.items():
        a = a[a[:, 0] >= plan.test_start]
        if not len(a):
            continue  # no bar in the test period: nothing to buy
        rel.append(ffill(grid, a[:, 0], a[:, 4] / a[0, 1], 1.0))
        nets[sym] = float(a[-1, 4] / a[0, 1] - 1.0 - rt)
    for q in sorted({quote_asset(s) for s in nets}):
        mine = [r for s, r in nets.items() if quote_asset(s) == q]
        pnl[q] = per_quote(plan.cfg.account.balances, q) * float(np.mean(mine))
    wins = sum(r > 0 for r in nets.values())
    return Arm("buy_hold", np.mean(rel, axis=0) - rt, len(nets), len(nets), wins, pnl,
               "fully invested (the trading arms commit a fraction per trade)",
               exposure=1.0, time_in_market=1.0)


def at_exposure(bh: Arm, exposure: float, of: str) -> Arm:
    """Buy-and-hold with only `exposure` of the account invested (bought at the start and
    held, the rest in cash): every value is 1 + exposure x (fully invested - 1)."""
    e = float(exposure)
    return Arm("buy_hold_exposure", 1.0 + e * (bh.values - 1.0), bh.entries, bh.trades,
               bh.wins, {q: e * v for q, v in bh.net_pnl.items()},
               f"{100 * e:.2f} % invested: the average exposure of {of}",
               exposure=e, time_in_market=1.0 if e > 0 else 0.0)


def random_arm(bars: dict[str, np.ndarray], plan: Plan, grid: np.ndarray,
               sizes: list[float], seed: int, max_open: int | None = None
               ) -> tuple[Arm, list[tuple[str, int, int, int, float, float | None]]]:
    """len(sizes) seeded random entries at out-of-sample bars with random sides.

    Each is a decision at a test-period bar, entered at the next open and taken through
    the daemon's exits (walkforward_sim.simulate: TP/SL or ATR barriers, trailing stop,
    time stop, costs). The k-th entry in time commits sizes[k] x its account's starting
    balance as notional. A symbol holds one position at a time (a new decision may come at
    the bar its previous position closed in, as in the daemon) and at most `max_open`
    (risk.max_open_positions) are open at once. Candidates are visited in a seeded random
    order until all fit; positions open at the end are marked to market, like the daemon's.
    -> (arm, [(symbol, decision ts, exit ts or -1, side, notional, net return on the
    notional or None while open)]).
    """
    cfg = plan.cfg
    rules = ExitRules.from_config(cfg)
    max_open = cfg.risk.max_open_positions if max_open is None else max_open
    n_entries = len(sizes)
    cands, atr = [], {}
    for sym, a in bars.items():
        if cfg.monitor.atr_dynamic:
            atr[sym] = compute(a[:, 0], *(a[:, k] for k in range(1, 6)))[:, _I_ATR]
        ok = np.flatnonzero(a[:-1, 0] >= plan.test_start)  # a next bar to enter at
        cands += [(sym, int(t)) for t in ok]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cands))
    sides = np.where(rng.random(len(cands)) < 0.5, 1, -1) if cfg.sizing.allow_short else \
        np.ones(len(cands), dtype=np.int64)
    gi = {sym: np.searchsorted(grid, a[:, 0].astype(np.int64)) for sym, a in bars.items()}
    concurrent = np.zeros(len(grid) + 1, dtype=np.int64)
    busy: dict[str, list[tuple[int, int]]] = {sym: [] for sym in bars}
    picked: list[tuple[str, int, int, SimTrade]] = []  # symbol, decision index, side, trade
    for i in order:
        if len(picked) >= n_entries:
            break
        sym, t = cands[i]
        a = bars[sym]
        tp = sl = None
        if cfg.monitor.atr_dynamic and atr[sym][t] > 0:
            tp = min(0.2, max(0.001, cfg.monitor.tp_atr_mult * float(atr[sym][t])))
            sl = min(0.2, max(0.001, cfg.monitor.sl_atr_mult * float(atr[sym][t])))
        trade = simulate(a[:, 1], a[:, 2], a[:, 3], t, int(sides[i]), 1.0, rules, tp, sl)
        end = trade.exit_i if trade.exit_i >= 0 else len(a)
        occ = busy[sym]
        j = bisect_left(occ, (t, end))
        if (j > 0 and occ[j - 1][1] > t) or (j < len(occ) and occ[j][0] < end):
            continue
        g0, g1 = gi[sym][trade.entry_i], gi[sym][end - 1] + 1  # grid bars held at close
        if max_open and g1 > g0 and concurrent[g0:g1].max() >= max_open:
            continue
        occ.insert(j, (t, end))
        concurrent[g0:g1] += 1
        picked.append((sym, t, int(sides[i]), trade))
    picked.sort(key=lambda p: (bars[p[0]][p[1], 0], p[0]))
    return _random_curves(bars, plan, grid, picked, sizes)


def _random_curves(bars: dict[str, np.ndarray], plan: Plan, grid: np.ndarray,
                   picked: list[tuple[str, int, int, SimTrade]], sizes: list[float]
                   ) -> tuple[Arm, list[tuple[str, int, int, int, float, float | None]]]:
    """Size the picked trades, then mark every account to market at each grid bar."""
    cfg = plan.cfg
    quotes = sorted({quote_asset(s) for s in plan.symbols})
    level = {q: np.zeros(len(grid)) for q in quotes}  # realised + unrealised PnL
    expo = {q: np.zeros(len(grid)) for q in quotes}
    held = np.zeros(len(grid), dtype=bool)
    pnl = dict.fromkeys(quotes, 0.0)
    taken, returns, wins, still_open = [], [], 0, 0
    for k, (sym, t, side, unit) in enumerate(picked):
        a, q = bars[sym], quote_asset(sym)
        bal = per_quote(cfg.account.balances, q)
        qty = sizes[k] * bal / unit.entry_price
        tr = SimTrade(unit.entry_i, unit.exit_i, side, qty, unit.entry_price,
                      unit.exit_price, unit.reason, unit.entry_fee * qty,
                      unit.exit_fee * qty)
        end = tr.exit_i if tr.exit_i >= 0 else len(a)
        ts = a[:, 0].astype(np.int64)
        close = a[tr.entry_i:end, 4]
        marks = np.zeros(len(a))
        marks[tr.entry_i:end] = side * qty * (close - tr.entry_price)
        realised = np.zeros(len(a))
        realised[tr.entry_i] -= tr.entry_fee
        notional = np.zeros(len(a))
        notional[tr.entry_i:end] = qty * close
        if tr.exit_i >= 0:
            realised[tr.exit_i] += tr.gross - tr.exit_fee
            pnl[q] += tr.net
            returns.append((int(ts[tr.exit_i]), tr.net_return))
            wins += tr.net > 0
        else:
            still_open += 1
        level[q] += ffill(grid, ts, np.cumsum(realised) + marks, 0.0)
        expo[q] += ffill(grid, ts, notional, 0.0)
        held |= ffill(grid, ts, notional, 0.0) > 0
        taken.append((sym, int(ts[t]), int(ts[tr.exit_i]) if tr.exit_i >= 0 else -1, side,
                      qty * tr.entry_price, tr.net_return if tr.exit_i >= 0 else None))
    curves, exposures = [], []
    for q in quotes:
        bal = per_quote(cfg.account.balances, q)
        eq = bal + level[q]
        curves.append(eq / bal)
        exposures.append(np.mean(expo[q] / np.where(eq > 0, eq, np.inf)) if len(grid)
                         else 0.0)
    notes = []
    if len(picked) < len(sizes):
        notes.append(f"only {len(picked)} of {len(sizes)} entries fit (one position per "
                     "symbol, risk.max_open_positions)")
    if still_open:
        notes.append(f"{still_open} position(s) still open at the end, marked to market")
    return Arm("random", np.mean(curves, axis=0) if curves else np.ones(len(grid)),
               len(picked), len(returns), wins, pnl, "; ".join(notes),
               exposure=float(np.mean(exposures)) if exposures else 0.0,
               time_in_market=float(np.mean(held)) if len(grid) else 0.0,
               trade_returns=sorted(returns)), taken
