"""Candle windows: the input of the forecasting networks (N-HiTS, PatchTST).

A window is the last WINDOW bars up to and including bar t, as CHANNELS scale-free
channels per bar (so pairs priced 5e-5 and 0.1 BTC look alike):

    0  log(close_i / close_t)       the path, relative to the last close (last value 0)
    1  log(high_i / close_i)
    2  log(low_i / close_i)
    3  log(open_i / close_i)
    4  log1p(volume_i) - mean over the window of log1p(volume)

Like features.py it exists twice from one definition: `WindowState` per bar for serving
and `make_windows` over a series for training; tests assert they agree, and a window at t
reads nothing after t. The networks add their own normalisation (RevIN in PatchTST).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

WINDOW = 64
CHANNELS = 5
WINDOW_VERSION = 1


class WindowState:
    """Incremental windows for one symbol."""

    __slots__ = ("_rows", "_size")

    def __init__(self, size: int = WINDOW) -> None:
        self._size = size
        # per bar: (log close, log(h/c), log(l/c), log(o/c), log1p(v))
        self._rows: deque[tuple[float, float, float, float, float]] = deque(maxlen=size)

    def update(self, o: float, h: float, low: float, c: float, v: float) -> None:
        lc = math.log(c)
        self._rows.append((lc, math.log(h) - lc, math.log(low) - lc, math.log(o) - lc,
                           math.log1p(v)))

    def window(self) -> np.ndarray | None:
        """The current window, float32 [size, CHANNELS]; None while warming up."""
        if len(self._rows) < self._size:
            return None
        a = np.array(self._rows, dtype=np.float64)
        a[:, 0] -= a[-1, 0]
        a[:, 4] -= a[:, 4].mean()
        return a.astype(np.float32)


def make_windows(o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray,
                 at: np.ndarray, size: int = WINDOW) -> np.ndarray:
    """Windows ending at the bar indices `at` (each >= size - 1): float32 [len(at), size, 5]."""
    lc = np.log(np.asarray(c, dtype=np.float64))
    per_bar = np.stack([
        lc,
        np.log(np.asarray(h, dtype=np.float64)) - lc,
        np.log(np.asarray(low, dtype=np.float64)) - lc,
        np.log(np.asarray(o, dtype=np.float64)) - lc,
        np.log1p(np.asarray(v, dtype=np.float64)),
    ], axis=1)
    at = np.asarray(at, dtype=np.int64)
    if len(at) and at.min() < size - 1:
        raise ValueError(f"a window needs {size} bars; index {int(at.min())} is too early")
    idx = at[:, None] + np.arange(-size + 1, 1)[None, :]
    w = per_bar[idx]  # [n, size, 5]
    w[:, :, 0] -= w[:, -1:, 0]
    w[:, :, 4] -= w[:, :, 4].mean(axis=1, keepdims=True)
    return w.astype(np.float32)
