"""Shared fixtures: where the real shared candles live, and small store helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]

# OpenMP threads (torch, LightGBM, XGBoost: 2 each) spin at every barrier by default. With
# two test workers on two cores, or any other load, a spinning thread burns the core its
# partner needs: a PatchTST fit took 34 s of CPU instead of 5 s. Waiting threads sleep
# instead; set before anything loads libgomp, inherited by every daemon and job started.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Hypothesis profiles (tests/fuzz): "ci" for the default suite — a few hundred cases per
# target, derandomized so a CI failure reproduces; "fuzz" for `make fuzz` — at least
# 10,000 cases per target, random each time. Selected by $HYPOTHESIS_PROFILE. No example
# database: the tree stays clean, and a failure prints its reproduction blob instead.
_FUZZ_COMMON = {"deadline": None, "database": None, "print_blob": True,
                "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.function_scoped_fixture,
                                          HealthCheck.filter_too_much]}
settings.register_profile("ci", max_examples=200, derandomize=True, **_FUZZ_COMMON)
settings.register_profile("fuzz", max_examples=10_000, **_FUZZ_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _find_shared() -> Path:
    """The read-only shared data: $QT_TEST_SHARED, next to the checkout, or the workplace's
    copy (CI may test a clone made elsewhere, e.g. under /tmp)."""
    candidates = [os.environ.get("QT_TEST_SHARED"), REPO.parent / "shared", "/work/shared"]
    for c in candidates:
        if c and (Path(c) / "data" / "ohlcv").is_dir():
            return Path(c).resolve()
    return (REPO.parent / "shared").resolve()


SHARED = _find_shared()
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


# Symbols unit tests make up (no candles of theirs are stored anywhere); defined here
# explicitly, as a program that invents symbols must (core/instruments.py). BTCUSDT and
# ETHUSDT come with real filters from the shared exchangeInfo payload.
MADE_UP = (("LTCUSDT", "LTC", "USDT"), ("ADAUSDT", "ADA", "USDT"))


def define_test_instruments() -> None:
    import json

    from qtraderd.core import instruments

    payload = json.loads((BINANCE / "http" / "exchange_info.json").read_text())
    instruments.define(*instruments.from_exchange_info(payload).values())
    instruments.define(*(instruments.Instrument(s, b, q) for s, b, q in MADE_UP))


@pytest.fixture(autouse=True, scope="session")
def _test_instruments() -> None:
    define_test_instruments()


@pytest.fixture(autouse=True)
def _clean_qt_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's QT_* overrides."""
    for var in list(os.environ):
        if var.startswith("QT_") and var != "QT_TEST_SHARED":
            monkeypatch.delenv(var, raising=False)


DEMO_SYMBOLS = ("ETHBTC", "LTCBTC", "XMRBTC")


def make_store(state_dir: Path, symbols=DEMO_SYMBOLS, interval: str = "5m",
               limit: int | None = None) -> Path:
    """A store holding real shared candles for `symbols` (optionally only the first rows)."""
    from qtraderd.store.db import connect
    from tests.helpers import read_ohlcv, store_bars

    conn = connect(state_dir)
    for s in symbols:
        arr = read_ohlcv(OHLCV / f"{s}-{interval}.csv")
        store_bars(conn, s, interval, arr[:limit] if limit else arr)
    conn.close()
    return state_dir


FAST_TRAIN = "[train]\nn_estimators = 25\nmax_depth = 3\n"


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A store with three real pairs and small XGBoost + LightGBM models trained on it.

    Built once per session (`build_once`: with xdist, one worker trains and every worker
    gets its own copy). Tests copy `models` if they modify it.
    """
    from tests.parallel import build_once

    def build(root: Path) -> None:
        from qtraderd.training.cli import train_main

        make_store(root / "state")
        cfg = root / "train.toml"
        cfg.write_text(FAST_TRAIN)
        code = train_main(["--state-dir", str(root / "state"), "--models-dir",
                           str(root / "models"), "--config", str(cfg)])
        assert code == 0

    root = build_once(tmp_path_factory, "trained", build)
    return {"state": root / "state", "models": root / "models", "config": root / "train.toml",
            "root": root}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In xdist workers: longest work first (tests/parallel.py)."""
    from tests.parallel import schedule

    schedule(config, items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadgroup`: modules with shared fixtures on one worker, longest first."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from tests.parallel import make_scheduler

    return make_scheduler(config, log)


from tests.ray_head import ray_head  # noqa: E402,F401  (a module's real local Ray head)
