"""Training datasets from the store: features and triple-barrier labels, split in time.

Why it looks the way it does:

* **One global time cutoff.** All symbols share the same calendar split, so a model is
  never validated on a day it (via another pair, which on alt/BTC pairs moves together)
  already trained on.
* **Nothing after the span is read.** The span is the first `train.train_fraction` of the
  stored [first, last] open_time (or everything up to `train_until_ms`). Bars after the
  span end are not even loaded, so labels and features cannot see them, and adding data
  later never changes a dataset built with the same `train_until_ms`.
* **Purge.** The validation window is the last `train.valid_fraction` of the span. A
  training sample whose label window (t .. the bar that settled it) reaches into that
  window is dropped (`labels.purged_train_mask`), so no training label shares a bar with
  any validation label. The embargo (`labels.embargo_bars` after the validation window) is
  applied the same way; with the validation window at the tail of the span there is no
  training data after it, so today it removes nothing, but it stays correct if the layout
  ever changes (walk-forward folds).
* **A full label horizon between training and validation.** Training samples also stop
  `horizon` bars before the validation window, whatever their own label did, so "the
  last training sample plus one label horizon" — the rule the deploy gate checks
  (`learning.gate.window_conflict`) — never reaches the window the gate scores on.
* **Only closed bars.** With `train_until_ms` (a job's `now`) a bar is visible once it
  has closed: open_time + interval <= now. The bar opening at `now` is still forming.
* **Validation labels end inside the span.** `triple_barrier` leaves a sample unlabelled
  when its horizon runs past the last loaded bar, and the last loaded bar is the span end.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qtraderd.core.config import INTERVAL_MS, Config
from qtraderd.features.labels import Barriers, purged_train_mask, triple_barrier
from qtraderd.features.spec import WARMUP_BARS, compute


class DatasetError(ValueError):
    """No usable data for the request; the message says what is missing and where."""


@dataclass(frozen=True, eq=False)
class Series:
    """One symbol's bars as columns, ordered by open_time (ms)."""

    open_time: np.ndarray  # int64
    o: np.ndarray  # float64
    h: np.ndarray
    low: np.ndarray
    c: np.ndarray
    v: np.ndarray

    def __len__(self) -> int:
        return len(self.open_time)


@dataclass(frozen=True, eq=False)
class Split:
    """The rows of one side of the split (train or validation), in (ts, symbol) order."""

    X: np.ndarray  # float32 (n, N_FEATURES)
    y: np.ndarray  # int64 class: 0 none, 1 long wins, 2 short wins
    ts: np.ndarray  # int64 bar open_time (ms) the sample was decided at (its close)
    sym: np.ndarray  # int32 index into Dataset.symbols
    label_end: np.ndarray  # int64 open_time of the last bar the label read
    ret_long: np.ndarray  # float64 return of the long trade to its barrier (before costs)
    ret_short: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class Dataset:
    """All labelled rows of the span, a train/valid flag, and the lineage of the split."""

    rows: Split
    is_valid: np.ndarray  # bool per row
    symbols: tuple[str, ...]
    interval: str
    barriers: Barriers
    span_start: int  # first stored bar used (ms)
    span_end: int  # cutoff: no bar after this was loaded
    valid_cutoff: int  # first open_time of the validation window
    train_start: int  # first / last training sample
    train_end: int
    valid_start: int  # first / last validation sample
    valid_end: int
    data_end: int  # the last bar any label (train or valid) read
    data_sha256: str  # of the bar arrays actually loaded
    # those bar arrays, kept for the networks' windows (a second read of the store would
    # have to prove it got the same bars)
    series: dict[str, Series] = field(default_factory=dict, repr=False)

    @property
    def train(self) -> Split:
        return _take(self.rows, ~self.is_valid)

    @property
    def valid(self) -> Split:
        return _take(self.rows, self.is_valid)

    @property
    def n_train(self) -> int:
        return int((~self.is_valid).sum())

    @property
    def n_valid(self) -> int:
        return int(self.is_valid.sum())

    def summary(self) -> dict[str, Any]:
        """JSON-able description (what the CLI prints and the metadata records)."""
        return {
            "symbols": list(self.symbols),
            "interval": self.interval,
            "barriers": {"tp": self.barriers.tp, "sl": self.barriers.sl,
                         "horizon": self.barriers.horizon},
            "span_start": self.span_start,
            "span_end": self.span_end,
            "valid_cutoff": self.valid_cutoff,
            "train_start": self.train_start,
            "train_end": self.train_end,
            "valid_start": self.valid_start,
            "valid_end": self.valid_end,
            "data_end": self.data_end,
            "n_train": self.n_train,
            "n_valid": self.n_valid,
            "data_sha256": self.data_sha256,
        }


def _take(s: Split, mask: np.ndarray) -> Split:
    return Split(s.X[mask], s.y[mask], s.ts[mask], s.sym[mask], s.label_end[mask],
                 s.ret_long[mask], s.ret_short[mask])


# ------------------------------------------------------------------------------ store reads


def list_symbols(conn: sqlite3.Connection, interval: str) -> list[str]:
    """Every symbol with bars at `interval`, sorted."""
    rows = conn.execute("SELECT DISTINCT symbol FROM bars WHERE interval=? ORDER BY symbol",
                        (interval,)).fetchall()
    return [r[0] for r in rows]


def time_range(conn: sqlite3.Connection, symbols: Sequence[str], interval: str
               ) -> tuple[int, int] | None:
    """(first, last) open_time over `symbols`, or None when there are no bars."""
    marks = ",".join("?" * len(symbols))
    row = conn.execute(
        f"SELECT min(open_time), max(open_time) FROM bars WHERE interval=? AND symbol IN ({marks})",
        (interval, *symbols)).fetchone()
    if row is None or row[0] is None:
        return None
    return int(row[0]), int(row[1])


def load_series(conn: sqlite3.Connection, symbols: Iterable[str], interval: str,
                until_ms: int | None = None) -> dict[str, Series]:
    """Bars per symbol ordered by open_time, optionally only those with open_time <= until_ms.

    Symbols without bars are left out of the result (the caller decides if that is an error).
    """
    out: dict[str, Series] = {}
    for sym in symbols:
        sql = ("SELECT open_time, open, high, low, close, volume FROM bars "
               "WHERE symbol=? AND interval=?")
        args: tuple[Any, ...] = (sym, interval)
        if until_ms is not None:
            sql += " AND open_time <= ?"
            args += (int(until_ms),)
        rows = conn.execute(sql + " ORDER BY open_time", args).fetchall()
        if not rows:
            continue
        arr = np.asarray(rows, dtype=np.float64)
        out[sym] = Series(
            open_time=np.asarray([r[0] for r in rows], dtype=np.int64),
            o=arr[:, 1].copy(), h=arr[:, 2].copy(), low=arr[:, 3].copy(),
            c=arr[:, 4].copy(), v=arr[:, 5].copy(),
        )
    return out


def data_hash(series: dict[str, Series], interval: str) -> str:
    """sha256 of exactly the bars a dataset used, so a model's lineage can be re-checked."""
    h = hashlib.sha256()
    for sym in sorted(series):
        s = series[sym]
        h.update(f"{sym}\0{interval}\0{len(s)}\0".encode())
        h.update(np.ascontiguousarray(s.open_time, dtype="<i8").tobytes())
        for col in (s.o, s.h, s.low, s.c, s.v):
            h.update(np.ascontiguousarray(col, dtype="<f8").tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ building


def barriers_from(cfg: Config) -> Barriers:
    """The label barriers are the sizer's own TP/SL, so labels describe the trades it takes."""
    return Barriers(tp=cfg.sizing.take_profit_pct / 100.0, sl=cfg.sizing.stop_loss_pct / 100.0,
                    horizon=cfg.labels.horizon_bars)


def build(conn: sqlite3.Connection, cfg: Config, symbols: Sequence[str] | None = None,
          interval: str | None = None, train_until_ms: int | None = None,
          since_ms: int | None = None, valid_from_ms: int | None = None) -> Dataset:
    """Build the purged train/validation dataset described in the module docstring.

    The learner's retraining jobs use a sliding window: samples from `since_ms` (earlier
    bars still warm the features up) and validation from `valid_from_ms` (the most recent
    part of the span, which the gate scores champion and challenger on).
    """
    interval = interval or cfg.feed.interval
    wanted = list(symbols) if symbols else list(cfg.feed.symbols)
    if not wanted:
        wanted = list_symbols(conn, interval)
        if not wanted:
            raise DatasetError(f"no {interval} bars in the store")
    syms = tuple(sorted(set(wanted)))
    present = set(list_symbols(conn, interval))
    missing = [s for s in syms if s not in present]
    if missing:
        raise DatasetError(f"no {interval} bars in the store for {', '.join(missing)}")
    rng = time_range(conn, syms, interval)
    if rng is None:  # pragma: no cover - guarded by the checks above
        raise DatasetError(f"no {interval} bars in the store")
    first, last = rng
    if train_until_ms is None:
        span_end = first + int((last - first) * cfg.train.train_fraction)
    else:  # `now`: the last bar visible is the last one closed by then
        if interval not in INTERVAL_MS:
            raise DatasetError(f"unknown interval {interval!r} (known: "
                               f"{', '.join(INTERVAL_MS)})")
        span_end = int(train_until_ms) - INTERVAL_MS[interval]
    if span_end <= first:
        raise DatasetError(f"training span ends ({span_end}) at or before the first stored "
                           f"bar ({first}); nothing to train on")
    if valid_from_ms is not None:
        valid_cutoff = int(valid_from_ms)
    else:
        start = max(first, since_ms) if since_ms is not None else first
        valid_cutoff = span_end - int((span_end - start) * cfg.train.valid_fraction)
    barriers = barriers_from(cfg)
    series = load_series(conn, syms, interval, until_ms=span_end)
    parts = [_symbol_rows(i, series[s], barriers, valid_cutoff, cfg.labels.embargo_bars)
             for i, s in enumerate(syms) if s in series]
    if not parts:
        raise DatasetError(f"no {interval} bars up to {span_end} for {', '.join(syms)}")
    rows = Split(*(np.concatenate([p[0][k] for p in parts]) for k in range(7)))
    is_valid = np.concatenate([p[1] for p in parts])
    order = np.lexsort((rows.sym, rows.ts))
    if since_ms is not None:
        order = order[rows.ts[order] >= since_ms]
    rows = _take(rows, order)
    is_valid = is_valid[order]
    n_valid = int(is_valid.sum())
    n_train = len(is_valid) - n_valid
    if n_train == 0 or n_valid == 0:
        raise DatasetError(
            f"{n_train} training / {n_valid} validation samples for {', '.join(syms)} "
            f"({interval}): the span is too short for the {WARMUP_BARS}-bar feature warm-up plus "
            f"the {barriers.horizon}-bar label horizon and the validation window")
    tr, va = ~is_valid, is_valid
    return Dataset(
        rows=rows, is_valid=is_valid, symbols=syms, interval=interval, barriers=barriers,
        span_start=first, span_end=span_end, valid_cutoff=valid_cutoff,
        train_start=int(rows.ts[tr].min()), train_end=int(rows.ts[tr].max()),
        valid_start=int(rows.ts[va].min()), valid_end=int(rows.ts[va].max()),
        data_end=int(rows.label_end.max()),
        data_sha256=data_hash(series, interval), series=series,
    )


def _symbol_rows(sym_index: int, s: Series, b: Barriers, valid_cutoff: int, embargo: int
                 ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Feature/label rows of one symbol and their validation flag (purged, embargoed)."""
    n = len(s)
    feats = compute(s.open_time, s.o, s.h, s.low, s.c, s.v)
    label, resolved, ret_long, ret_short = triple_barrier(s.o, s.h, s.low, s.c, b)
    ok = np.isfinite(feats).all(axis=1) & (label >= 0)
    idx = np.arange(n)
    test_start = int(np.searchsorted(s.open_time, valid_cutoff, side="left"))
    valid = ok & (idx >= test_start)
    keep = purged_train_mask(idx, np.where(ok, resolved, -1), test_start, n - 1, embargo)
    train = ok & (idx < test_start - b.horizon) & keep
    use = train | valid
    end_idx = resolved[use]
    if (end_idx < 0).any() or (end_idx >= n).any():  # pragma: no cover - labels.py contract
        raise AssertionError("a kept sample has no resolved bar inside the loaded data")
    cols = (
        feats[use].astype(np.float32),
        label[use].astype(np.int64),
        s.open_time[use].astype(np.int64),
        np.full(int(use.sum()), sym_index, dtype=np.int32),
        s.open_time[end_idx].astype(np.int64),
        ret_long[use].astype(np.float64),
        ret_short[use].astype(np.float64),
    )
    return cols, valid[use]
