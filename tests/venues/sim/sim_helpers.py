"""Helpers for the exchange simulator's tests: the real XRPUSDT candles and shape
comparison against the real Binance payloads."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import BINANCE, OHLCV

XRP = OHLCV / "XRPUSDT-5m.csv"
IV = 300_000


def rows(path: Path = XRP) -> list[list[str]]:
    """The CSV's data rows as text: [open_time, open, high, low, close, volume]."""
    with open(path, newline="") as fh:
        return list(csv.reader(fh))[1:]


TIMES = [int(r[0]) for r in rows()]


def shared(name: str) -> Any:
    return json.loads((BINANCE / name).read_text())


def same_shape(ours: Any, theirs: Any, where: str = "$") -> None:
    """Same keys and value types all the way down. Lists of equal length compare item by
    item (a kline row, a symbol's filters); otherwise each of ours is like their first."""
    assert type(ours) is type(theirs), f"{where}: {type(ours).__name__} != " \
                                       f"{type(theirs).__name__}"
    if isinstance(theirs, dict):
        assert set(ours) == set(theirs), f"{where}: keys {sorted(set(ours) ^ set(theirs))}"
        for k in theirs:
            same_shape(ours[k], theirs[k], f"{where}.{k}")
    elif isinstance(theirs, list) and theirs:
        if len(ours) != len(theirs):
            for i, x in enumerate(ours):
                same_shape(x, theirs[0], f"{where}[{i}]")
        else:
            for i, (x, y) in enumerate(zip(ours, theirs, strict=True)):
                same_shape(x, y, f"{where}[{i}]")


def speed_for(candle_s: float) -> float:
    """The speed at which one 5m candle lasts candle_s wall seconds."""
    return IV / 1000 / candle_s


def renamed_copy(tmp_path: Path, symbol: str) -> Path:
    """The XRPUSDT candles under another symbol (a second market with known values)."""
    dst = tmp_path / f"{symbol}-5m.csv"
    shutil.copy(XRP, dst)
    return dst
