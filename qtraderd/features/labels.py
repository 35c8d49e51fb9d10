"""Triple-barrier labels and purged, embargoed splits.

A sample at bar t is decided at t's close and, like every order, would fill at the open of
bar t+1. From that entry price E the long trade has a take-profit at E*(1+tp) and a stop at
E*(1-sl); the short trade the mirror image. Scanning bars t+1 .. t+horizon (bar t+1's own
range included, since the fill is at its open):

* LABEL_LONG  - the long take-profit is touched before the long stop;
* LABEL_SHORT - the short take-profit is touched before the short stop;
* LABEL_NONE  - neither (a stop first, or the time barrier).

When a bar touches both a trade's barriers we assume the stop came first (we cannot see
the path inside a bar). With tp > sl the two winning events are mutually exclusive, so the
label is a proper three-way class. A label reads only bars after t; samples whose horizon
runs past the end of the data stay unlabelled, never guessed.

`Labeler` does the same incrementally for serving (outcomes of live predictions);
`triple_barrier` does it over a whole series for training. Tests assert they agree.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qtraderd.core.messages import LABEL_LONG, LABEL_NONE, LABEL_SHORT


@dataclass(frozen=True, slots=True)
class Barriers:
    tp: float  # fraction, e.g. 0.016
    sl: float  # fraction, e.g. 0.008
    horizon: int  # bars

    def __post_init__(self) -> None:
        if not (self.tp > self.sl > 0):
            raise ValueError(f"barriers need tp > sl > 0, got tp={self.tp} sl={self.sl}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 bar, got {self.horizon}")


def label_window(
    entry: float,
    highs: Sequence[float],
    lows: Sequence[float],
    closes: Sequence[float],
    start: int,
    b: Barriers,
) -> tuple[int, int, float, float]:
    """Label one sample from its window highs[start : start+horizon] (bars t+1 .. t+horizon).

    The entry is bar t+1's open. Returns (label, index of the bar that settled both sides,
    ret_long, ret_short); the
    returns are to each side's exit barrier (or the last close at the time barrier).
    Plain Python on purpose: it stops at the first touches, which is faster per sample
    than numpy on a 48-bar window, and serving calls it once per bar per symbol.
    """
    tp, sl = b.tp, b.sl
    long_tp, long_sl = entry * (1 + tp), entry * (1 - sl)
    short_tp, short_sl = entry * (1 - tp), entry * (1 + sl)
    last = start + b.horizon - 1
    # Each side scanned to its own first touch (stop checked first within a bar): the
    # same touches as walking both sides together, in fewer steps per bar.
    long_at = short_at = -1
    long_won = short_won = False
    for i in range(start, last + 1):
        if lows[i] <= long_sl:
            long_at = i
            break
        if highs[i] >= long_tp:
            long_at, long_won = i, True
            break
    for i in range(start, last + 1):
        if highs[i] >= short_sl:
            short_at = i
            break
        if lows[i] <= short_tp:
            short_at, short_won = i, True
            break
    # both settled: at the later touch; otherwise the time barrier
    settled = max(long_at, short_at) if long_at >= 0 and short_at >= 0 else last
    if long_at < 0:
        ret_long = closes[last] / entry - 1.0
    else:
        ret_long = tp if long_won else -sl
    if short_at < 0:
        ret_short = 1.0 - closes[last] / entry
    else:
        ret_short = tp if short_won else -sl
    if long_won:
        label = LABEL_LONG
    elif short_won:
        label = LABEL_SHORT
    else:
        label = LABEL_NONE
    return label, settled, ret_long, ret_short


def triple_barrier(
    o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, b: Barriers
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels for a whole series.

    Returns (label, resolved_index, ret_long, ret_short); label is -1 and resolved_index -1
    where the horizon runs past the end of the data.
    """
    n = len(c)
    label = np.full(n, -1, dtype=np.int64)
    resolved = np.full(n, -1, dtype=np.int64)
    ret_long = np.full(n, np.nan)
    ret_short = np.full(n, np.nan)
    ol, hl, ll, cl = (np.asarray(a, dtype=np.float64).tolist() for a in (o, h, low, c))
    for t in range(n - b.horizon):
        lab, settled, rl, rs = label_window(ol[t + 1], hl, ll, cl, t + 1, b)
        label[t], resolved[t], ret_long[t], ret_short[t] = lab, settled, rl, rs
    return label, resolved, ret_long, ret_short


class Labeler:
    """Incremental labels for one symbol: feed bars in order, get finished outcomes back.

    A sample is resolved exactly when its full window has closed, so results equal
    `triple_barrier` on the same series (the conservative same-bar rule included),
    whatever bar the stream started at.
    """

    __slots__ = ("_b", "_c", "_h", "_l", "_o", "_pending", "_ts")

    def __init__(self, barriers: Barriers) -> None:
        self._b = barriers
        self._ts: list[int] = []
        self._o: list[float] = []
        self._h: list[float] = []
        self._l: list[float] = []
        self._c: list[float] = []
        self._pending: deque[int] = deque()  # indices (into the lists) of tracked samples

    def update(
        self, ts: int, o: float, h: float, low: float, c: float, *, track: bool = True
    ) -> list[tuple[int, int, int, float, float]]:
        """Add bar `ts`; return [(sample_ts, label, resolved_ts, ret_long, ret_short)].

        With track=True the bar itself becomes a sample waiting for its outcome.
        """
        horizon = self._b.horizon
        if len(self._ts) > 4 * (horizon + 1):  # keep the last horizon+1 bars
            cut = len(self._ts) - (horizon + 1)
            for buf in (self._ts, self._o, self._h, self._l, self._c):
                del buf[:cut]
            self._pending = deque(i - cut for i in self._pending if i >= cut)
        self._ts.append(ts)
        self._o.append(o)
        self._h.append(h)
        self._l.append(low)
        self._c.append(c)
        done: list[tuple[int, int, int, float, float]] = []
        newest = len(self._ts) - 1
        pending = self._pending
        while pending and newest - pending[0] >= horizon:
            t = pending.popleft()
            lab, settled, rl, rs = label_window(
                self._o[t + 1], self._h, self._l, self._c, t + 1, self._b
            )
            done.append((self._ts[t], lab, self._ts[settled], rl, rs))
        if track:
            pending.append(newest)
        return done


def purged_train_mask(
    sample_idx: np.ndarray,
    label_end_idx: np.ndarray,
    test_start: int,
    test_end: int,
    embargo: int,
) -> np.ndarray:
    """Which samples may train a model evaluated on bars [test_start, test_end].

    Purge: drop samples whose label window [t, label_end] overlaps the test window.
    Embargo: also drop samples that start within `embargo` bars after the test window,
    because their features still overlap the test period's information.
    Unlabelled samples (label_end < 0) are dropped too.
    """
    t = np.asarray(sample_idx)
    end = np.asarray(label_end_idx)
    labelled = end >= 0
    overlaps = (t <= test_end) & (end >= test_start)
    in_embargo = (t > test_end) & (t <= test_end + embargo)
    return labelled & ~overlaps & ~in_embargo
