"""RegimeDetector on synthetic feature rows; global_regime majority and caution tie-break."""

from __future__ import annotations

import pytest

from qtraderd.features.regime import HIGH_VOL_MULT, REGIMES, RegimeDetector, global_regime
from qtraderd.features.spec import FEATURE_NAMES

SLOW = 2.0 / 289


def row(vol: float = 0.002, atr: float = 0.003, gap: float = 0.0) -> tuple[float, ...]:
    r = [0.0] * len(FEATURE_NAMES)
    r[FEATURE_NAMES.index("vol_12")] = vol
    r[FEATURE_NAMES.index("atr_14")] = atr
    r[FEATURE_NAMES.index("ema_gap")] = gap
    return tuple(r)


@pytest.mark.parametrize(("gap", "regime"), [
    (0.0, "range"),
    (0.0024, "range"),  # 0.8 ATR is not yet a trend
    (0.0025, "trend_up"),
    (-0.0025, "trend_down"),
    (0.03, "trend_up"),
    (-0.0023, "range"),
])
def test_trend_vs_range_in_atr_units(gap: float, regime: str) -> None:
    assert RegimeDetector().update(row(gap=gap, atr=0.003)) == regime


def test_trend_threshold_is_scale_free() -> None:
    a, b = RegimeDetector(), RegimeDetector()
    assert a.update(row(vol=0.002, atr=0.003, gap=0.0025)) == "trend_up"
    assert b.update(row(vol=2.0, atr=3.0, gap=2.5)) == "trend_up"


def test_non_positive_atr_is_range() -> None:
    assert RegimeDetector().update(row(atr=0.0, gap=0.5)) == "range"
    assert RegimeDetector().update(row(atr=-1.0, gap=-0.5)) == "range"


def test_first_row_is_never_high_vol() -> None:
    assert RegimeDetector().update(row(vol=5.0, gap=0.0)) == "range"


def test_high_vol_when_vol_runs_above_its_slow_average() -> None:
    d = RegimeDetector()
    d.update(row(vol=0.001))
    assert d.update(row(vol=0.001 * HIGH_VOL_MULT * 1.01, gap=0.01)) == "high_vol"
    d = RegimeDetector()
    d.update(row(vol=0.001))
    assert d.update(row(vol=0.001 * HIGH_VOL_MULT * 0.99, gap=0.01)) == "trend_up"


def test_high_vol_beats_trend() -> None:
    d = RegimeDetector()
    d.update(row(vol=0.001))
    assert d.update(row(vol=0.01, gap=-0.05)) == "high_vol"


def test_reference_is_an_ema_of_past_vol() -> None:
    d = RegimeDetector()
    d.update(row(vol=0.001))
    assert d.update(row(vol=0.002)) == "high_vol"  # ref 0.001
    ref = 0.001 + SLOW * (0.002 - 0.001)
    # the reference moved up a little: just below 1.8 x the new ref is not high_vol
    assert d.update(row(vol=HIGH_VOL_MULT * ref * 0.999)) == "range"
    d2 = RegimeDetector()
    d2.update(row(vol=0.001))
    d2.update(row(vol=0.002))
    assert d2.update(row(vol=HIGH_VOL_MULT * ref * 1.001)) == "high_vol"


def test_sustained_high_vol_becomes_the_new_normal() -> None:
    d = RegimeDetector()
    d.update(row(vol=0.001))
    out = [d.update(row(vol=0.003)) for _ in range(400)]
    assert out[:50] == ["high_vol"] * 50
    assert out[-1] == "range"
    # ref_n = 0.003 - 0.002 (1 - a)^n drops below 0.003 / 1.8 after about 58 bars
    first_calm = out.index("range")
    assert 55 <= first_calm <= 62


def test_detectors_are_independent() -> None:
    a, b = RegimeDetector(), RegimeDetector()
    a.update(row(vol=0.001))
    b.update(row(vol=0.01))
    assert a.update(row(vol=0.005)) == "high_vol"
    assert b.update(row(vol=0.005)) == "range"


def test_every_output_is_a_known_regime() -> None:
    d = RegimeDetector()
    seen = {d.update(row(vol=v, gap=g))
            for v, g in [(0.001, 0.0), (0.01, 0.0), (0.001, 0.01), (0.001, -0.01)]}
    assert seen <= set(REGIMES)
    assert seen == set(REGIMES)


@pytest.mark.parametrize(("regimes", "expected"), [
    ([], ""),
    (["range"], "range"),
    (["range", "range", "high_vol"], "range"),  # majority beats caution
    (["trend_up", "trend_up", "trend_down", "range"], "trend_up"),
    (["range", "high_vol"], "high_vol"),
    (["trend_up", "trend_down"], "trend_down"),
    (["range", "trend_up"], "trend_up"),
    (["trend_down", "high_vol", "trend_down", "high_vol"], "high_vol"),
    (["range", "trend_up", "trend_down", "high_vol"], "high_vol"),
])
def test_global_regime(regimes: list[str], expected: str) -> None:
    assert global_regime(regimes) == expected
    assert global_regime(r for r in regimes) == expected  # any iterable
