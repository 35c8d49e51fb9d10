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

import numpy as np

WINDOW = 64
CHANNELS = 5
WINDOW_VERSION = 1


class WindowState:
    """Incremental windows for one symbol.

    Rows are written twice into a buffer of 2*size rows (at i and i+size), so the last
    `size` bars are always the contiguous slice buf[i+1 : i+1+size]: no copy, no roll.
    Rows wait in a list until a window is read (or the list holds 4*size): only tree
    models are served most of the time, and then only the last `size` of them are ever
    written, instead of two numpy row writes per bar. The buffer ends up the same.
    """

    __slots__ = ("_buf", "_i", "_n", "_rows", "_size")

    def __init__(self, size: int = WINDOW) -> None:
        self._size = size
        self._buf = np.zeros((2 * size, CHANNELS))
        self._i = size - 1
        self._n = 0
        self._rows: list[tuple[float, float, float, float, float]] = []

    def update(self, o: float, h: float, low: float, c: float, v: float) -> None:
        lc = math.log(c)
        rows = self._rows
        rows.append((lc, math.log(h) - lc, math.log(low) - lc, math.log(o) - lc,
                     math.log1p(v)))
        if len(rows) >= 4 * self._size:
            self._flush()

    def _flush(self) -> None:
        """Write the waiting rows where `update` used to write each one at once; rows a
        later one would overwrite (all but the last `size`) are skipped."""
        rows = self._rows
        if not rows:
            return
        size, buf = self._size, self._buf
        skip = max(0, len(rows) - size)
        i = self._i + skip
        for row in rows[skip:] if skip else rows:
            i = (i + 1) % size
            buf[i] = row
            buf[i + size] = row
        self._i = i % size
        self._n += len(rows)
        rows.clear()

    def raw(self) -> np.ndarray | None:
        """The last `size` bars, un-normalised (a view); None while warming up."""
        if self._rows:
            self._flush()
        if self._n < self._size:
            return None
        i = self._i
        return self._buf[i + 1: i + 1 + self._size]

    def window(self) -> np.ndarray | None:
        """The current window, float32 [size, CHANNELS]; None while warming up."""
        raw = self.raw()
        return None if raw is None else normalize(raw[None])[0]

    def __getstate__(self) -> tuple[None, dict[str, object]]:
        """Checkpoints hold the written buffer, as before rows could wait."""
        self._flush()
        return None, {"_buf": self._buf, "_i": self._i, "_n": self._n, "_size": self._size}

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        for name, value in state[1].items():
            setattr(self, name, value)
        self._rows = []


def normalize(raw: np.ndarray, copy: bool = True) -> np.ndarray:
    """Raw per-bar rows [n, size, CHANNELS] (float64) -> model input (float32).

    copy=False normalises a float64 array the caller owns in place (training builds
    hundreds of megabytes of windows; no second copy)."""
    w = np.array(raw, dtype=np.float64) if copy else raw
    w[:, :, 0] -= w[:, -1:, 0]
    vol = w[:, :, 4]
    # the mean as ndarray.mean computes it (the same sum, then true_divide by the count),
    # without its Python wrapper: this runs for every window the daemon serves
    mean = np.add.reduce(vol, axis=1, keepdims=True)
    np.true_divide(mean, vol.shape[1], out=mean)
    vol -= mean
    return w.astype(np.float32)


def normalize_windows(raws: list[np.ndarray]) -> np.ndarray:
    """The model input [n, size, CHANNELS] (float32) for the raw windows of a step's
    symbols (`WindowState.raw()` views, left untouched): `normalize(np.stack(raws))`.

    One window (live trading on one symbol, the batch-1 inference figure) takes a path of
    one subtraction that writes float32 directly, half the time of the batch path's six
    numpy calls: the offsets (the last close's log, the window's mean log-volume) are
    computed by the same operations, so the input is the same to the bit."""
    if len(raws) != 1:
        return normalize(np.stack(raws), copy=False)
    raw = raws[0]
    size = raw.shape[0]
    offsets = np.zeros(CHANNELS)
    offsets[0] = raw[size - 1, 0]
    offsets[4] = np.add.reduce(raw[:, 4]) / size
    out = np.empty((1, size, CHANNELS), dtype=np.float32)
    np.subtract(raw, offsets, out=out[0], casting="unsafe")
    return out


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
    return normalize(per_bar[idx], copy=False)
