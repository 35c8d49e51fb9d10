"""Change detectors for outcome streams (hit rates of live predictions): ADWIN, Page-Hinkley.

Pure numpy/math: the daemon runs them on every settled outcome. They answer "has this
model's hit rate really dropped, or is it a losing streak?" — the performance trigger and
the ensemble's collapse check need a confirmed change, not a noisy moving average.

ADWIN (Bifet & Gavaldà 2007, "Learning from time-changing data with adaptive windowing")
keeps a window of recent values and drops its older part whenever some split into an
older W0 and a newer W1 has means further apart than

    eps_cut = sqrt( ln(4 n / delta) / (2 m) ),   m = 1 / (1/n0 + 1/n1),  n = n0 + n1

(the Hoeffding bound for values in [0, 1], union over the n split points). So the window
is the longest recent stretch consistent with one mean, and `mean` tracks a new level
quickly after a change yet averages over everything when nothing changes.

This is the O(width) reference version: the window lives in a numpy buffer, a check
evaluates all split points at once from a cumulative sum (subsampled to at most
`max_checks` split points on long windows) every `clock` updates, and `max_window` caps
memory and work. Exponential histograms would make it O(log width); at a few thousand
values per model that is not worth the complexity.
"""

from __future__ import annotations

import math

import numpy as np

# (k, the stretches' starts, n0, n1, eps_cut) per (width, min_sub, max_checks, delta):
# see ADWIN._splits
_Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_SPLITS: dict[tuple[int, int, int, float], _Splits | None] = {}
_SPLITS_MAX = 4096  # widths seen; a full window has one, growing windows a few hundred
_MISSING = object()


class ADWIN:
    """Adaptive window over a stream of values in [0, 1]."""

    __slots__ = ("_buf", "_end", "_mean", "_ones", "_since_check", "_start", "clock",
                 "delta", "max_checks", "max_window", "min_sub", "n_detections", "n_seen")

    # clock 32 (as in river's ADWIN): a change is confirmed at most 31 values late, and the
    # daemon, which updates one detector per model per settled outcome, spends 8x less
    # time here than checking every 4th value (it was ~15 % of a replay).
    def __init__(self, delta: float = 0.002, max_window: int = 2000, *, clock: int = 32,
                 min_sub: int = 5, max_checks: int = 256) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if max_window < 2 * min_sub:
            raise ValueError(f"max_window must be >= {2 * min_sub}, got {max_window}")
        self.delta = delta
        self.max_window = int(max_window)
        self.clock = max(1, int(clock))
        self.min_sub = max(1, int(min_sub))
        self.max_checks = max(1, int(max_checks))
        self._buf = np.empty(2 * self.max_window, dtype=np.float64)
        self._start = 0
        self._end = 0
        self._since_check = 0
        self._mean: float | None = None  # cached until the next update
        # Hit streams hold only 0.0 and 1.0: then the window's sum is the count of ones,
        # kept as an int, and the mean is exactly what numpy's mean gives (an exact sum
        # divided by the width) without a pass over the window per update. Any other
        # value switches to numpy for good (None).
        self._ones: int | None = 0
        self.n_detections = 0
        self.n_seen = 0

    def __getstate__(self) -> dict[str, object]:
        """The window itself, not its 2 x max_window buffer: checkpoints (every live step)
        pickle one detector per model and regime, and the buffer is mostly empty."""
        state: dict[str, object] = {k: getattr(self, k) for k in self.__slots__
                                    if k not in ("_buf", "_start", "_end")}
        state["window"] = self._buf[self._start:self._end].copy()
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        window = state.pop("window")
        for k, v in state.items():
            setattr(self, k, v)
        self._buf = np.empty(2 * self.max_window, dtype=np.float64)
        self._start, self._end = 0, len(window)  # type: ignore[arg-type]
        self._buf[:self._end] = window

    @property
    def width(self) -> int:
        return self._end - self._start

    @property
    def mean(self) -> float:
        """Mean of the current window; NaN while empty."""
        if self._mean is None:
            if self._end == self._start:
                self._mean = math.nan
            elif self._ones is not None:
                self._mean = self._ones / (self._end - self._start)
            else:
                self._mean = float(self._buf[self._start:self._end].mean())
        return self._mean

    def window(self) -> np.ndarray:
        """A copy of the current window, oldest first."""
        return self._buf[self._start:self._end].copy()

    def update(self, x: float) -> bool:
        """Add one value; True when a change was detected (and the window shrank)."""
        x = float(x)
        buf = self._buf
        ones = self._ones
        start, end = self._start, self._end  # locals: this runs per model per outcome
        if end - start >= self.max_window:
            if ones is not None and buf[start] == 1.0:
                ones -= 1
            start += 1  # the cap, not a change
        if end == len(buf):  # compact: move the window to the front
            w = end - start
            buf[:w] = buf[start:end]
            start, end = 0, w
        buf[end] = x
        self._start, self._end = start, end + 1
        if ones is not None:
            self._ones = (ones + 1 if x == 1.0 else ones) if x in (0.0, 1.0) else None
        self._mean = None
        self.n_seen += 1
        since = self._since_check + 1
        if since < self.clock:
            self._since_check = since
            return False
        self._since_check = 0
        detected = False
        while (cut := self._find_cut()) > 0:
            self._start += cut
            detected = True
        if detected:
            self.n_detections += 1
            if self._ones is not None:
                self._ones = int(np.count_nonzero(self._buf[self._start:self._end]))
        return detected

    def _find_cut(self) -> int:
        """Number of oldest values to drop (0: no split shows a change).

        Among the offending splits it drops the most (the newest offending split point):
        the older part differs significantly, so none of it describes the present.
        """
        w = self._buf[self._start:self._end]
        n = len(w)
        splits = self._splits(n)
        if splits is None:
            return 0
        k, starts, n0, n1, eps = splits
        if self._ones is not None:
            # Only 0s and 1s: every partial sum is an exact integer, so summing the
            # stretches between split points and then those (2-3x faster than a cumsum
            # over the whole window) gives exactly the cumsum's values.
            cs = np.add.accumulate(np.add.reduceat(w, starts))
            s0 = cs[:-1]
        else:
            cs = np.cumsum(w)
            s0 = cs[k - 1]
        total = cs[-1]
        gap = np.abs(s0 / n0 - (total - s0) / n1)
        bad = np.flatnonzero(gap > eps)
        return int(k[bad[-1]]) if len(bad) else 0

    def _splits(self, n: int) -> _Splits | None:
        """The split points checked on a window of `n` values and their bounds, which
        depend on n alone: made once per width (a full window, the usual case, always
        has the same) instead of seven numpy passes per check. Same arithmetic as
        computing them in place, so the cuts are bit for bit the same."""
        key = (n, self.min_sub, self.max_checks, self.delta)
        got = _SPLITS.get(key, _MISSING)
        if got is not _MISSING:
            return got  # type: ignore[return-value]
        lo, hi = self.min_sub, n - self.min_sub
        if hi < lo:
            splits = None
        else:
            step = max(1, (hi - lo + 1) // self.max_checks)
            k = np.arange(lo, hi + 1, step)  # size of the older sub-window W0
            n0 = k.astype(np.float64)
            n1 = n - n0
            m = 1.0 / (1.0 / n0 + 1.0 / n1)
            eps = np.sqrt(math.log(4.0 * n / self.delta) / (2.0 * m))
            starts = np.concatenate(([0], k))  # stretches [0, k0), [k0, k1), ..., [k_last, n)
            splits = (k, starts, n0, n1, eps)
        if len(_SPLITS) >= _SPLITS_MAX:
            _SPLITS.clear()
        _SPLITS[key] = splits
        return splits

    def state(self) -> dict[str, float | int | None]:
        mean = self.mean
        return {"mean": None if math.isnan(mean) else mean, "width": self.width,
                "detections": self.n_detections, "seen": self.n_seen}


class PageHinkley:
    """Page-Hinkley test for a shift of the mean in one direction ("down" or "up").

    For "down" it accumulates g_t = sum(mean_t - x_t - delta) (mean_t: running mean) and
    alarms when g_t rises more than `threshold` above its running minimum. `delta` is the
    tolerated drift per sample: it makes g fall while nothing changes, so noise does not
    pile up. After an alarm it starts afresh. The defaults suit hit streams in [0, 1]
    (sd ~0.5): a 0.6 -> 0.3 drop alarms after roughly 100 samples, while a stationary
    stream alarms very rarely.
    """

    __slots__ = ("_cum", "_min", "_n", "_running", "delta", "direction", "min_samples",
                 "n_detections", "threshold")

    def __init__(self, delta: float = 0.05, threshold: float = 20.0, min_samples: int = 30,
                 direction: str = "down") -> None:
        if direction not in ("down", "up"):
            raise ValueError(f"direction must be 'down' or 'up', got {direction!r}")
        self.delta = delta
        self.threshold = threshold
        self.min_samples = min_samples
        self.direction = direction
        self.n_detections = 0
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._running = 0.0
        self._cum = 0.0
        self._min = 0.0

    @property
    def mean(self) -> float:
        return self._running if self._n else math.nan

    @property
    def statistic(self) -> float:
        """g_t minus its minimum: the alarm fires when this exceeds `threshold`."""
        return self._cum - self._min

    def update(self, x: float) -> bool:
        self._n += 1
        self._running += (x - self._running) / self._n
        dev = self._running - x if self.direction == "down" else x - self._running
        self._cum += dev - self.delta
        self._min = min(self._min, self._cum)
        if self._n >= self.min_samples and self._cum - self._min > self.threshold:
            self.n_detections += 1
            self.reset()
            return True
        return False
