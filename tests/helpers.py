"""Small helpers shared by tests: reading the real shared candles, building a store."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from qtraderd.store.db import Transaction


def read_ohlcv(path: Path) -> np.ndarray:
    """Rows of (open_time, open, high, low, close, volume) as float64."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return np.array(rows, dtype=np.float64)


def store_bars(conn, symbol: str, interval: str, arr: np.ndarray) -> None:
    with Transaction(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO bars VALUES (?,?,?,?,?,?,?,?)",
            [(symbol, interval, int(r[0]), *map(float, r[1:6])) for r in arr])
