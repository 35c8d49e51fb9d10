"""Features: serving (incremental) and training (vectorised) agree, and never look ahead."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qtraderd.features import spec as F
from tests.helpers import read_ohlcv

FILES_5M = ["ADABTC", "DASHBTC", "ETCBTC", "ETHBTC", "LTCBTC", "NXTBTC", "TRXBTC", "XLMBTC",
            "XMRBTC", "ZECBTC"]


def incremental(a: np.ndarray) -> np.ndarray:
    st = F.FeatureState()
    out = np.full((len(a), F.N_FEATURES), np.nan)
    for i, r in enumerate(a.tolist()):
        row = st.update(int(r[0]), r[1], r[2], r[3], r[4], r[5])
        if row is not None:
            out[i] = row
    return out


def vectorised(a: np.ndarray) -> np.ndarray:
    return F.compute(a[:, 0].astype(np.int64), a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5])


@pytest.mark.parametrize("name", [f"{s}-5m.csv" for s in FILES_5M] + ["UNITTESTBTC-1m.csv"])
def test_serving_equals_training_on_real_data(ohlcv_dir, name):
    a = read_ohlcv(ohlcv_dir / name)
    inc, vec = incremental(a), vectorised(a)
    assert np.array_equal(np.isnan(inc), np.isnan(vec))
    valid = ~np.isnan(vec)
    assert valid.sum() > 0.9 * vec.size
    np.testing.assert_allclose(inc[valid], vec[valid], rtol=1e-9, atol=1e-12)


def test_warmup_rows_are_missing_then_complete(ohlcv_dir):
    a = read_ohlcv(ohlcv_dir / "ETHBTC-5m.csv")
    vec = vectorised(a)
    assert np.isnan(vec[: F.WARMUP_BARS - 1]).all()
    assert np.isfinite(vec[F.WARMUP_BARS - 1:]).all()


@pytest.mark.parametrize("cut", [210, 500, 2345, 5000])
def test_cutting_off_the_future_does_not_change_the_past(ohlcv_dir, cut):
    a = read_ohlcv(ohlcv_dir / "LTCBTC-5m.csv")
    full = vectorised(a)
    part = vectorised(a[: cut + 1])
    np.testing.assert_array_equal(part, full[: cut + 1])
    # and a wildly different future leaves bar `cut` alone
    b = a.copy()
    b[cut + 1:, 1:5] *= 3.0
    b[cut + 1:, 5] *= 100.0
    np.testing.assert_array_equal(vectorised(b)[: cut + 1], full[: cut + 1])


def test_features_are_scale_free(ohlcv_dir):
    """Same candles at another price scale give the same features (one model, all pairs)."""
    a = read_ohlcv(ohlcv_dir / "ADABTC-5m.csv")[:500]
    b = a.copy()
    b[:, 1:5] *= 12345.0
    np.testing.assert_allclose(vectorised(a)[60:], vectorised(b)[60:], rtol=1e-7, atol=1e-9)


def test_a_feature_at_t_reacts_to_bar_t():
    """Guard against an off-by-one that would make features lag (or lead) the bar."""
    st = F.FeatureState()
    t0 = 1_515_560_100_000
    n = F.WARMUP_BARS + 10
    for i in range(n):
        row = st.update(t0 + i * 300_000, 1.0, 1.001, 0.999, 1.0, 10.0)
    row = st.update(t0 + n * 300_000, 1.0, 1.05, 0.999, 1.05, 10.0)
    assert row is not None
    assert row[F.FEATURE_NAMES.index("ret_1")] == pytest.approx(math.log(1.05))
    assert row[F.FEATURE_NAMES.index("body")] == pytest.approx(0.05)
