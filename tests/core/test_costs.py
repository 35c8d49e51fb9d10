"""The one cost model: fill prices, fees, round trip, break-even win rate and edge."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qtraderd.core.config import CostsConfig, load
from qtraderd.core.costs import CostModel

TP, SL = 0.016, 0.008  # the default 1.6 % / 0.8 % barriers, as fractions


@pytest.fixture
def cm() -> CostModel:
    return CostModel.from_config(load(env={}).costs)


def test_from_config_converts_percent_and_bps_to_fractions(cm: CostModel) -> None:
    assert cm.taker_fee == pytest.approx(0.0005)
    assert cm.maker_fee == pytest.approx(0.0002)
    assert cm.slippage == pytest.approx(0.0002)
    custom = CostModel.from_config(CostsConfig(taker_fee_pct=0.1, maker_fee_pct=-0.01,
                                               slippage_bps=15.0))
    assert custom.taker_fee == pytest.approx(0.001)
    assert custom.maker_fee == pytest.approx(-0.0001)
    assert custom.slippage == pytest.approx(0.0015)


def test_fill_price_buy_pays_up_sell_gives_down(cm: CostModel) -> None:
    assert cm.fill_price(100.0, 1) == pytest.approx(100.02)
    assert cm.fill_price(100.0, -1) == pytest.approx(99.98)
    assert cm.fill_price(0.05, 1) == pytest.approx(0.05 * 1.0002)


def test_fill_price_without_slippage_is_the_reference() -> None:
    cm = CostModel(0.0005, 0.0002, 0.0)
    assert cm.fill_price(123.45, 1) == 123.45
    assert cm.fill_price(123.45, -1) == 123.45


def test_fee_taker_maker_and_sign(cm: CostModel) -> None:
    assert cm.fee(10_000.0) == pytest.approx(5.0)
    assert cm.fee(10_000.0, "taker") == pytest.approx(5.0)
    assert cm.fee(10_000.0, "maker") == pytest.approx(2.0)
    assert cm.fee(-10_000.0) == pytest.approx(5.0)  # on absolute notional
    assert cm.fee(0.0) == 0.0


def test_round_trip(cm: CostModel) -> None:
    assert cm.round_trip() == pytest.approx(2 * (0.0005 + 0.0002))  # 0.14 %
    assert CostModel(0.0005, 0.0002, 0.0).round_trip() == pytest.approx(0.001)
    assert CostModel(0.0, 0.0, 0.0).round_trip() == 0.0


def test_breakeven_win_rate_defaults(cm: CostModel) -> None:
    # (0.008 + 0.0014) / 0.024
    assert cm.breakeven_win_rate(TP, SL) == pytest.approx(0.391667, abs=1e-6)


def test_breakeven_win_rate_zero_slippage() -> None:
    cm = CostModel.from_config(replace(load(env={}).costs, slippage_bps=0.0))
    assert cm.breakeven_win_rate(TP, SL) == pytest.approx(0.375)


def test_breakeven_win_rate_without_costs_is_the_barrier_ratio() -> None:
    assert CostModel(0.0, 0.0, 0.0).breakeven_win_rate(TP, SL) == pytest.approx(1 / 3)


def test_expected_edge_values(cm: CostModel) -> None:
    assert cm.expected_edge(0.5, TP, SL) == pytest.approx(0.5 * TP - 0.5 * SL - 0.0014)
    assert cm.expected_edge(0.5, TP, SL) == pytest.approx(0.0026)
    assert cm.expected_edge(1.0, TP, SL) == pytest.approx(TP - 0.0014)
    assert cm.expected_edge(0.0, TP, SL) == pytest.approx(-SL - 0.0014)
    assert cm.expected_edge(0.3, TP, SL) < 0


def test_expected_edge_is_zero_at_breakeven(cm: CostModel) -> None:
    p = cm.breakeven_win_rate(TP, SL)
    assert cm.expected_edge(p, TP, SL) == pytest.approx(0.0, abs=1e-12)
    assert cm.expected_edge(p + 0.01, TP, SL) > 0
    assert cm.expected_edge(p - 0.01, TP, SL) < 0


def test_expected_edge_is_increasing_in_p(cm: CostModel) -> None:
    edges = [cm.expected_edge(p / 10, TP, SL) for p in range(11)]
    assert edges == sorted(edges)
    # slope is tp + sl per unit of probability
    assert edges[6] - edges[5] == pytest.approx(0.1 * (TP + SL))
