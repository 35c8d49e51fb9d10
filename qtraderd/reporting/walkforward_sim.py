"""One position through the daemon's own exits, bar by bar, and the statistics every arm
of `qtraderd walkforward` is measured with.

Why a simulator here: the random-entry arm answers "does the model beat a coin?", which is
only a fair question if the coin's trades leave the market exactly as the model's do. The
daemon's exits are not the triple-barrier label (that has no trailing stop and its time
barrier is the label horizon, not `monitor.time_stop_bars`); they are the paper broker's
resting TP/SL orders plus the monitor's trailing and time stops. `simulate` replays that
sequence for one position, in the daemon's order (DESIGN.md, "One step"):

1. at each bar, an exit queued on the previous bar (time stop) fills at the open first;
   a fresh entry fills at the open (`CostModel.fill_price`), its TP/SL placed from there;
2. resting stop and take-profit trigger inside the bar (stop first when both could,
   unless the bar opened beyond the take-profit), filled at the level or the open if
   it gapped through (venues/paper.py `_check_protective`);
3. still open: bars held + 1, best price from the bar's high (long) or low (short);
4. the monitor then decides on the closed bar: held `time_stop_bars` -> exit at the next
   open; else once the best price is `trailing_activation_pct` in profit the stop moves
   to `trailing_callback_pct` behind it, only ever tightening (from the next bar on).

A test replays the daemon arm's own trades through it and gets the same exits and PnL.

Statistics: `sharpe` (annualised mean / std of per-bar returns of a marked-to-market
curve, the definition report.py uses), `t_interval` (Student-t 95 % interval of a mean,
for per-trade returns) and `wilson` (95 % score interval of a proportion, for hit rates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qtraderd.core.config import Config
from qtraderd.core.costs import CostModel

YEAR_MS = 365 * 86_400_000
Z95 = 1.959963984540054
# two-sided 95 % Student-t quantiles for 1..30 degrees of freedom
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True)
class ExitRules:
    """The exit settings of one config (sizing barriers, monitor stops, costs)."""

    tp: float  # fractions of the entry price
    sl: float
    trailing: bool
    activation: float
    callback: float
    time_stop_bars: int  # 0: none
    costs: CostModel

    @classmethod
    def from_config(cls, cfg: Config) -> ExitRules:
        m = cfg.monitor
        return cls(cfg.sizing.take_profit_pct / 100.0, cfg.sizing.stop_loss_pct / 100.0,
                   m.trailing, m.trailing_activation_pct / 100.0,
                   m.trailing_callback_pct / 100.0, m.time_stop_bars,
                   CostModel.from_config(cfg.costs))


@dataclass(frozen=True)
class SimTrade:
    """One simulated position. `exit_i` is -1 when it is still open at the last bar."""

    entry_i: int  # bar index of the entry fill (the decision bar + 1)
    exit_i: int
    side: int
    qty: float
    entry_price: float
    exit_price: float  # 0.0 while open
    reason: str  # take_profit, stop_loss, trailing_stop, time_stop, or "open"
    entry_fee: float
    exit_fee: float

    @property
    def gross(self) -> float:
        return self.side * self.qty * (self.exit_price - self.entry_price) if self.exit_i >= 0 \
            else 0.0

    @property
    def net(self) -> float:
        return self.gross - self.entry_fee - self.exit_fee

    @property
    def net_return(self) -> float:
        """Net PnL as a fraction of the entry notional."""
        return self.net / (self.qty * self.entry_price)


def simulate(o: np.ndarray, h: np.ndarray, low: np.ndarray, decision_i: int, side: int,
             qty: float, rules: ExitRules, tp: float | None = None,
             sl: float | None = None) -> SimTrade:
    """The position entered on `decision_i`'s signal, through the daemon's exits (module
    docstring). `tp`/`sl` override the rules' barriers (ATR-based sizing); the entry bar
    `decision_i + 1` must exist."""
    c = rules.costs
    tp = rules.tp if tp is None else tp
    sl = rules.sl if sl is None else sl
    e = decision_i + 1
    entry = c.fill_price(float(o[e]), side)
    entry_fee = c.fee(qty * entry)
    stop = entry * (1 - side * sl) if sl > 0 else 0.0
    take = entry * (1 + side * tp) if tp > 0 else 0.0
    best, held, trailing, exit_next = entry, 0, False, False

    def done(i: int, level: float, reason: str) -> SimTrade:
        price = c.fill_price(level, -side)
        return SimTrade(e, i, side, qty, entry, price, reason, entry_fee, c.fee(qty * price))

    for i in range(e, len(o)):
        op, hi, lo = float(o[i]), float(h[i]), float(low[i])
        if exit_next:
            return done(i, op, "time_stop")
        if side > 0:
            stop_hit, take_hit = stop > 0 and lo <= stop, take > 0 and hi >= take
            take_at_open = take_hit and op >= take
            stop_level, take_level = min(op, stop), max(op, take)
        else:
            stop_hit, take_hit = stop > 0 and hi >= stop, take > 0 and lo <= take
            take_at_open = take_hit and op <= take
            stop_level, take_level = max(op, stop), min(op, take)
        if stop_hit and not take_at_open:
            return done(i, stop_level, "trailing_stop" if trailing else "stop_loss")
        if take_hit:
            return done(i, take_level, "take_profit")
        held += 1
        best = max(best, hi) if side > 0 else min(best, lo)
        if rules.time_stop_bars and held >= rules.time_stop_bars:
            exit_next = True
            continue
        if rules.trailing and side * (best / entry - 1.0) >= rules.activation:
            trail = best * (1.0 - side * rules.callback)
            if (trail > stop) if side > 0 else (stop == 0.0 or trail < stop):
                stop, trailing = trail, True
    return SimTrade(e, -1, side, qty, entry, 0.0, "open", entry_fee, 0.0)


# ----------------------------------------------------------------------------- statistics


def sharpe(values: np.ndarray, interval_ms: int) -> float | None:
    """Annualised Sharpe of a marked-to-market equity multiple sampled once per bar
    (1.0 before the first value): mean / std of the per-bar simple returns times
    sqrt(bars per year). The one definition used for every walk-forward arm."""
    v = np.concatenate([[1.0], np.asarray(values, dtype=np.float64)])
    rets = np.diff(v) / v[:-1]
    sd = float(np.std(rets))
    if not len(rets) or sd <= 0:
        return None
    return float(np.mean(rets)) / sd * math.sqrt(YEAR_MS / interval_ms)


def t_quantile(df: int) -> float:
    """Two-sided 95 % Student-t quantile (a table to 30 df, then the Cornish-Fisher
    expansion around the normal, within 0.001 of the exact value)."""
    if df <= len(_T95):
        return _T95[df - 1]
    z = Z95
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def t_interval(x: list[float] | np.ndarray) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high): Student-t 95 % interval of the mean (None where n < 2)."""
    a = np.asarray(x, dtype=np.float64)
    if not len(a):
        return None, None, None
    m = float(a.mean())
    if len(a) < 2:
        return m, None, None
    half = t_quantile(len(a) - 1) * float(a.std(ddof=1)) / math.sqrt(len(a))
    return m, m - half, m + half


def wilson(k: int, n: int) -> tuple[float | None, float | None]:
    """Wilson score 95 % interval of a proportion k / n (None, None when n = 0)."""
    if n <= 0:
        return None, None
    p, z2 = k / n, Z95 * Z95
    mid = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, mid - half), min(1.0, mid + half)
