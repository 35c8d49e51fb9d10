"""Feature definitions, computed two ways from one specification.

* Serving: `FeatureState.update(bar)` per symbol, O(window) pure Python, one bar at a time.
* Training: `compute(ohlcv)` over a whole series with numpy.

Both must give the same numbers (tests/features/test_features.py checks this on the real shared
candles), and a feature at bar t only ever reads bars <= t. Windows count bars, not
minutes: a gap in the data is a gap, never an invented candle.

Every feature is scale-free (returns, ratios, z-scores) so one model can serve pairs whose
prices differ by five orders of magnitude (ADA/BTC vs ETH/BTC).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

FEATURES_VERSION = 1

FEATURE_NAMES: tuple[str, ...] = (
    "ret_1",
    "ret_3",
    "ret_12",
    "ret_48",
    "vol_12",
    "vol_48",
    "vol_ratio",
    "atr_14",
    "ema_gap",
    "close_ema_48",
    "rsi_14",
    "range_pos_48",
    "volume_z_48",
    "hl_range",
    "body",
    "hour_sin",
    "hour_cos",
)
N_FEATURES = len(FEATURE_NAMES)

# Bars of history before the first feature row. 48 returns need 49 closes, but the
# recursive EMA/ATR/RSI state still remembers its seed for a while (the 48-bar EMA keeps
# 14 % of it after 49 bars, 0.03 % after 200): without the longer warm-up the first rows
# would depend on where the series happens to start, a skew between training and serving.
WARMUP_BARS = 200
# Bars per symbol a fresh run warms up on before its first step (Step.history): the
# features' warm-up, and as much again for the regime detector's slow volatility
# average (~1 day of 5m bars) to settle.
HISTORY_BARS = 2 * WARMUP_BARS

_EMA_FAST = 2.0 / (12 + 1)
_EMA_SLOW = 2.0 / (48 + 1)
_WILDER = 1.0 / 14
_DAY_MS = 86_400_000


def _hour_angle(open_time_ms: int) -> float:
    return 2.0 * math.pi * (open_time_ms % _DAY_MS) / _DAY_MS


class FeatureState:
    """Incremental features for one symbol: feed closed bars in order, get rows back."""

    __slots__ = (
        "_atr",
        "_avg_gain",
        "_avg_loss",
        "_closes",
        "_ema_fast",
        "_ema_slow",
        "_highs",
        "_logvol",
        "_logvol_sq",
        "_lows",
        "_n",
        "_prev_close",
        "_rets",
        "_rets_sq",
    )

    def __init__(self) -> None:
        self._n = 0
        self._closes: deque[float] = deque(maxlen=49)
        self._rets: deque[float] = deque(maxlen=48)
        self._rets_sq: deque[float] = deque(maxlen=48)
        self._highs: deque[float] = deque(maxlen=48)
        self._lows: deque[float] = deque(maxlen=48)
        self._logvol: deque[float] = deque(maxlen=48)
        self._logvol_sq: deque[float] = deque(maxlen=48)
        self._prev_close = math.nan
        self._ema_fast = math.nan
        self._ema_slow = math.nan
        self._atr = math.nan
        self._avg_gain = 0.0
        self._avg_loss = 0.0

    @property
    def count(self) -> int:
        """Bars seen so far."""
        return self._n

    def update(
        self, open_time: int, o: float, h: float, low: float, c: float, v: float
    ) -> tuple[float, ...] | None:
        """Add one closed bar; return its feature row, or None while warming up."""
        prev = self._prev_close
        self._n += 1
        self._closes.append(c)
        self._highs.append(h)
        self._lows.append(low)
        lv1 = math.log1p(v)
        self._logvol.append(lv1)
        self._logvol_sq.append(lv1 * lv1)
        if self._n == 1:
            self._ema_fast = c
            self._ema_slow = c
            self._atr = h - low
        else:
            r = math.log(c / prev)
            self._rets.append(r)
            self._rets_sq.append(r * r)
            self._ema_fast += _EMA_FAST * (c - self._ema_fast)
            self._ema_slow += _EMA_SLOW * (c - self._ema_slow)
            tr = max(h - low, abs(h - prev), abs(low - prev))
            self._atr += _WILDER * (tr - self._atr)
            change = c - prev
            self._avg_gain += _WILDER * ((change if change > 0 else 0.0) - self._avg_gain)
            self._avg_loss += _WILDER * ((-change if change < 0 else 0.0) - self._avg_loss)
        self._prev_close = c
        if self._n < WARMUP_BARS:
            return None

        closes = self._closes
        rets = self._rets
        sq = self._rets_sq
        vol_12 = _std_from_sums(_tail_sum(rets, 12), _tail_sum(sq, 12), 12)
        vol_48 = _std_from_sums(sum(rets), sum(sq), 48)
        lo = min(self._lows)
        hi = max(self._highs)
        lv = self._logvol
        lv_sum = sum(lv)
        lv_mean = lv_sum / 48.0
        lv_std = _std_from_sums(lv_sum, sum(self._logvol_sq), 48)
        denom = self._avg_gain + self._avg_loss
        angle = _hour_angle(open_time)
        return (
            rets[-1],
            math.log(c / closes[-4]),
            math.log(c / closes[-13]),
            math.log(c / closes[0]),
            vol_12,
            vol_48,
            vol_12 / vol_48 if vol_48 > 0.0 else 1.0,
            self._atr / c,
            self._ema_fast / self._ema_slow - 1.0,
            c / self._ema_slow - 1.0,
            (self._avg_gain / denom - 0.5) if denom > 0.0 else 0.0,
            ((c - lo) / (hi - lo) - 0.5) if hi > lo else 0.0,
            ((lv[-1] - lv_mean) / lv_std) if lv_std > 0.0 else 0.0,
            (h - low) / c,
            (c - o) / o,
            math.sin(angle),
            math.cos(angle),
        )


def _tail_sum(d: deque[float], n: int) -> float:
    total = 0.0
    for i in range(len(d) - n, len(d)):
        total += d[i]
    return total


def _std_from_sums(s: float, ss: float, n: int) -> float:
    mean = s / n
    var = ss / n - mean * mean
    return math.sqrt(var) if var > 0.0 else 0.0


# --------------------------------------------------------------------------- vectorised


def _ema(x: np.ndarray, alpha: float, seed: float) -> np.ndarray:
    """out[0] = seed, out[i] = out[i-1] + alpha * (x[i] - out[i-1]); same recursion as serving."""
    out = np.empty(len(x))
    acc = seed
    xs = x.tolist()
    for i in range(len(xs)):
        if i:
            acc += alpha * (xs[i] - acc)
        out[i] = acc
    return out


def _rolling(x: np.ndarray, n: int) -> np.ndarray:
    """Rows of the last n values ending at each index (NaN-padded at the start)."""
    padded = np.concatenate([np.full(n - 1, np.nan), x])
    return np.lib.stride_tricks.sliding_window_view(padded, n)


def _rolling_std(x: np.ndarray, n: int) -> np.ndarray:
    w = _rolling(x, n)
    mean = w.sum(axis=1) / n
    var = (w * w).sum(axis=1) / n - mean * mean
    return np.sqrt(np.where(var > 0.0, var, 0.0))


def compute(
    open_time: Sequence[int] | np.ndarray,
    o: np.ndarray,
    h: np.ndarray,
    low: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
) -> np.ndarray:
    """Feature matrix (len(c), N_FEATURES) for one symbol's series; warm-up rows are NaN."""
    o, h, low, c, v = (np.asarray(a, dtype=np.float64) for a in (o, h, low, c, v))
    t = np.asarray(open_time, dtype=np.int64)
    n = len(c)
    out = np.full((n, N_FEATURES), np.nan)
    if n < WARMUP_BARS:
        return out
    prev = np.concatenate([[np.nan], c[:-1]])
    ret = np.log(c / prev)  # ret[0] is NaN
    r = ret.copy()
    r[0] = 0.0  # never read inside a valid window; keeps sums finite
    ema_fast = _ema(c, _EMA_FAST, c[0])
    ema_slow = _ema(c, _EMA_SLOW, c[0])
    tr = np.maximum.reduce([h - low, np.abs(h - prev), np.abs(low - prev)])
    tr[0] = h[0] - low[0]
    atr = _ema(tr, _WILDER, tr[0])
    change = np.concatenate([[0.0], np.diff(c)])
    avg_gain = _ema(np.where(change > 0, change, 0.0), _WILDER, 0.0)
    avg_loss = _ema(np.where(change < 0, -change, 0.0), _WILDER, 0.0)
    avg_gain[0] = avg_loss[0] = 0.0
    vol_12 = _rolling_std(r, 12)
    vol_48 = _rolling_std(r, 48)
    hi = _rolling(h, 48).max(axis=1)
    lo = _rolling(low, 48).min(axis=1)
    lv = np.log1p(v)
    lv_w = _rolling(lv, 48)
    lv_mean = lv_w.sum(axis=1) / 48.0
    lv_std = _rolling_std(lv, 48)
    denom = avg_gain + avg_loss
    angle = 2.0 * np.pi * (t % _DAY_MS) / _DAY_MS

    def lagged_log_return(k: int) -> np.ndarray:
        res = np.full(n, np.nan)
        res[k:] = np.log(c[k:] / c[:-k])
        return res

    with np.errstate(divide="ignore", invalid="ignore"):
        cols = [
            ret,
            lagged_log_return(3),
            lagged_log_return(12),
            lagged_log_return(48),
            vol_12,
            vol_48,
            np.where(vol_48 > 0.0, vol_12 / vol_48, 1.0),
            atr / c,
            ema_fast / ema_slow - 1.0,
            c / ema_slow - 1.0,
            np.where(denom > 0.0, avg_gain / denom - 0.5, 0.0),
            np.where(hi > lo, (c - lo) / (hi - lo) - 0.5, 0.0),
            np.where(lv_std > 0.0, (lv - lv_mean) / lv_std, 0.0),
            (h - low) / c,
            (c - o) / o,
            np.sin(angle),
            np.cos(angle),
        ]
    out[:] = np.column_stack(cols)
    out[: WARMUP_BARS - 1] = np.nan
    return out
