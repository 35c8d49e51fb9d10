"""Feature drift: PSI and the numpy two-sample KS test (checked against scipy here only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from qtraderd.learning import drift


def test_psi_identical_and_same_distribution_near_zero() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(5000)
    assert drift.psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    assert drift.psi(ref, rng.standard_normal(5000)) < 0.01


def test_psi_flags_shift_and_scale() -> None:
    rng = np.random.default_rng(2)
    ref = rng.standard_normal(5000)
    small = drift.psi(ref, rng.normal(0.1, 1.0, 5000))
    shifted = drift.psi(ref, rng.normal(1.0, 1.0, 5000))
    scaled = drift.psi(ref, rng.normal(0.0, 2.5, 5000))
    assert small < 0.1 < 0.25 < shifted
    assert scaled > 0.25
    assert drift.psi(ref, rng.normal(2.0, 1.0, 5000)) > shifted  # grows with the shift


def test_psi_by_hand() -> None:
    # Reference 0..99: edges at the deciles; current all in the lowest decile.
    ref = np.arange(100.0)
    cur = np.full(50, -1.0)
    r, c = 0.1, np.array([1.0] + [drift.PSI_EPS] * 9)
    expected = float(np.sum((c - r) * np.log(c / r)))
    assert drift.psi(ref, cur) == pytest.approx(expected)


def test_psi_discrete_constant_and_nan() -> None:
    ref = np.array([0.0] * 90 + [1.0] * 10)
    cur = np.array([0.0] * 50 + [1.0] * 50)
    # Two real bins (duplicate quantile edges collapse): .1 -> .5 and .9 -> .5.
    expected = (0.5 - 0.9) * math.log(0.5 / 0.9) + (0.5 - 0.1) * math.log(0.5 / 0.1)
    assert drift.psi(ref, cur) == pytest.approx(expected)
    assert drift.psi(np.ones(100), np.ones(10)) == pytest.approx(0.0)
    assert drift.psi(np.array([1.0, np.nan, 2.0]), np.array([1.0, 2.0])) == pytest.approx(0.0)
    assert math.isnan(drift.psi(np.array([np.nan]), np.ones(3)))


@pytest.mark.parametrize(("n", "m", "shift", "scale"), [
    (1000, 1000, 0.0, 1.0), (2000, 500, 0.1, 1.0), (300, 700, 0.0, 1.3),
    (5000, 800, 0.05, 1.0), (200, 150, 0.3, 1.0), (4000, 4000, 0.03, 1.0),
])
def test_ks_matches_scipy(n: int, m: int, shift: float, scale: float) -> None:
    rng = np.random.default_rng(n + m)
    a = rng.standard_normal(n)
    b = rng.normal(shift, scale, m)
    d, p = drift.ks_2samp(a, b)
    ref = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-6)
    # Stephens' correction vs scipy's exact one-sample law at n_eff: close, not identical.
    assert p == pytest.approx(ref.pvalue, rel=0.03, abs=1e-3)


def test_ks_with_ties_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(0, 10, 800).astype(float)
    b = rng.integers(0, 11, 600).astype(float)
    d, p = drift.ks_2samp(a, b)
    ref = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-6)
    assert p == pytest.approx(ref.pvalue, rel=0.03, abs=1e-3)


def test_kolmogorov_tail_matches_scipy() -> None:
    for lam in (0.05, 0.3, 0.6, 0.9, 0.99, 1.0, 1.2, 1.36, 2.0, 3.0, 5.0):
        assert drift.kolmogorov_sf(lam) == pytest.approx(stats.kstwobign.sf(lam),
                                                         rel=1e-9, abs=1e-15)
    assert drift.kolmogorov_sf(0.0) == 1.0


def test_ks_same_distribution_large_p_and_shift_small_p() -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(3000)
    d, p = drift.ks_2samp(ref, ref)
    assert d == 0.0 and p == 1.0
    _, p_same = drift.ks_2samp(ref, rng.standard_normal(1000))
    _, p_shift = drift.ks_2samp(ref, rng.normal(0.5, 1.0, 1000))
    assert p_same > 0.05
    assert p_shift < 1e-10
    assert all(math.isnan(v) for v in drift.ks_2samp(np.array([]), ref))


def test_ks_p_is_uniformish_under_the_null() -> None:
    """The asymptotic p-value is calibrated: ~5 % below .05 on same-distribution pairs."""
    rng = np.random.default_rng(4)
    ps = np.array([drift.ks_2samp(rng.standard_normal(400), rng.standard_normal(300))[1]
                   for _ in range(400)])
    assert 0.02 <= (ps < 0.05).mean() <= 0.09
    assert 0.4 < ps.mean() < 0.6


def test_feature_drift_report() -> None:
    rng = np.random.default_rng(5)
    n, m = 4000, 600
    ref = np.column_stack([rng.standard_normal(n), rng.standard_normal(n),
                           rng.exponential(1.0, n), rng.standard_normal(n)])
    cur = np.column_stack([rng.standard_normal(m),            # same
                           rng.normal(1.0, 1.0, m),           # shifted
                           rng.exponential(3.0, m),           # scaled
                           rng.normal(0.15, 1.0, m)])         # small: KS may see it, PSI not
    cur[:10, 0] = np.nan
    names = ["same", "shifted", "scaled", "small"]
    rep = drift.feature_drift(ref, cur, names, psi_threshold=0.25, ks_p=0.001)
    assert [r["feature"] for r in rep] == names
    assert [r["drifted"] for r in rep] == [False, True, True, False]
    assert rep[0]["psi"] < 0.05 and rep[0]["p"] > 0.01
    assert rep[1]["psi"] > 0.25 and rep[1]["p"] < 1e-10
    assert rep[3]["psi"] < 0.25  # a real but immaterial shift is not drift
    assert drift.n_drifted(rep) == 2
    assert set(rep[0]) == {"feature", "psi", "ks", "p", "drifted"}


def test_feature_drift_needs_both_tests_and_handles_empty_columns() -> None:
    rng = np.random.default_rng(6)
    ref = rng.standard_normal((2000, 2))
    cur = np.column_stack([rng.normal(1.0, 1.0, 40), np.full(40, np.nan)])
    rep = drift.feature_drift(ref, cur, ["few", "empty"], psi_threshold=0.25, ks_p=1e-12)
    assert rep[0]["psi"] > 0.25 and not rep[0]["drifted"]  # KS not convinced at 1e-12
    assert rep[1] == {"feature": "empty", "psi": None, "ks": None, "p": None,
                      "drifted": False}
    with pytest.raises(ValueError, match="names"):
        drift.feature_drift(ref, cur, ["one"])
    with pytest.raises(ValueError, match="same columns"):
        drift.feature_drift(ref, cur[:, :1], ["a", "b"])
