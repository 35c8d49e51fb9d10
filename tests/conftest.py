"""Shared fixtures: where the real shared candles live, and small store helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QT_TEST_SHARED", REPO.parent / "shared")).resolve()
OHLCV = SHARED / "data" / "ohlcv"
BINANCE = SHARED / "data" / "binance" / "usdm-futures"


@pytest.fixture(scope="session")
def ohlcv_dir() -> Path:
    if not OHLCV.is_dir():
        pytest.fail(f"shared candles not found at {OHLCV} (set QT_TEST_SHARED)")
    return OHLCV


@pytest.fixture(scope="session")
def binance_dir() -> Path:
    return BINANCE


@pytest.fixture(autouse=True)
def _clean_qt_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's QT_* overrides."""
    for var in list(os.environ):
        if var.startswith("QT_") and var != "QT_TEST_SHARED":
            monkeypatch.delenv(var, raising=False)
