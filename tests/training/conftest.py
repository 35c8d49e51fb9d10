"""Fixtures for the learner tests: real candles in a real SQLite store, a random walk, config.

The candles are imported with a plain executemany (the project's importer is developed
separately; these tests must not depend on it).
"""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

from qtraderd.store.db import Transaction, connect

REAL_SYMBOLS = ("ETHBTC", "LTCBTC", "XMRBTC")
Row = tuple[str, str, int, float, float, float, float, float]


def read_candles(ohlcv_dir: Path, symbol: str, interval: str = "5m") -> list[Row]:
    with open(ohlcv_dir / f"{symbol}-{interval}.csv", newline="") as fh:
        return [(symbol, interval, int(r["open_time"]), float(r["open"]), float(r["high"]),
                 float(r["low"]), float(r["close"]), float(r["volume"]))
                for r in csv.DictReader(fh)]


def insert_bars(conn: sqlite3.Connection, rows: Iterable[Row]) -> None:
    with Transaction(conn):
        conn.executemany("INSERT INTO bars (symbol, interval, open_time, open, high, low, "
                         "close, volume) VALUES (?,?,?,?,?,?,?,?)", list(rows))


def random_walk_rows(seed: int, n: int, symbols: Iterable[str], sigma: float = 0.004,
                     sub: int = 6) -> list[Row]:
    """Geometric random-walk candles: `sub` log-normal steps per bar give high/low/close.

    Constant volatility and i.i.d. steps: nothing in a bar's past says anything about its
    future, so an honest pipeline must score AUC ~ 0.5 here.
    """
    rng = np.random.default_rng(seed)
    t0 = 1_600_000_000_000
    out: list[Row] = []
    for sym in symbols:
        steps = rng.normal(0.0, sigma / np.sqrt(sub), size=(n, sub))
        path = 0.05 * np.exp(np.cumsum(steps.ravel())).reshape(n, sub)
        o = np.concatenate([[0.05], path[:-1, -1]])
        h = np.maximum(path.max(axis=1), o)
        low = np.minimum(path.min(axis=1), o)
        c = path[:, -1]
        v = rng.lognormal(3.0, 0.5, n)
        out += [(sym, "5m", t0 + i * 300_000, float(o[i]), float(h[i]), float(low[i]),
                 float(c[i]), float(v[i])) for i in range(n)]
    return out


@pytest.fixture(scope="session")
def random_walk() -> Callable[..., list[Row]]:
    """The random-walk generator, as a fixture (test modules import nothing from here)."""
    return random_walk_rows


@pytest.fixture(scope="session")
def real_rows(ohlcv_dir: Path) -> dict[str, list[Row]]:
    return {s: read_candles(ohlcv_dir, s) for s in REAL_SYMBOLS}


@pytest.fixture(scope="session")
def all_btc_rows(ohlcv_dir: Path) -> dict[str, list[Row]]:
    """Every shared 5m alt/BTC pair (the leakage tripwire wants as much data as there is)."""
    syms = sorted(p.name.split("-")[0] for p in ohlcv_dir.glob("*BTC-5m.csv"))
    return {s: read_candles(ohlcv_dir, s) for s in syms}


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., Path]:
    """make_store(rows_by_symbol or rows, name) -> state dir of a fresh migrated store."""

    def make(rows: dict[str, list[Row]] | list[Row], name: str = "state") -> Path:
        state = tmp_path / name
        conn = connect(state)
        try:
            flat = [r for rs in rows.values() for r in rs] if isinstance(rows, dict) else rows
            insert_bars(conn, flat)
        finally:
            conn.close()
        return state

    return make


@pytest.fixture
def real_store(make_store: Callable[..., Path], real_rows: dict[str, list[Row]]) -> Path:
    return make_store(real_rows)


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    """Few trees keep the suite fast; everything else is the shipped default."""
    path = tmp_path / "learn.toml"
    path.write_text("[train]\nn_estimators = 30\n", encoding="utf-8")
    return path
