"""Out-of-sample metrics: hand-checked trading arithmetic, and the AUC calibration checks.

The calibration checks are the leakage tripwires: real 5m alt/BTC candles must stay well
below AUC 0.65 out-of-sample, a random walk must sit at 0.5, and a deliberately leaked
feature must push AUC far up (so the tripwire can actually fire).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qtraderd.core.config import Config, load, with_changes
from qtraderd.store.db import connect
from qtraderd.training import dataset, metrics, trees

BAR = 300_000


def _split(rows: list[tuple[int, int, int, int, float, float]]) -> dataset.Split:
    """rows of (sym, ts_bar, label_end_bar, y, ret_long, ret_short)."""
    a = np.asarray(rows, dtype=np.float64)
    n = len(rows)
    return dataset.Split(
        X=np.zeros((n, 17), np.float32), y=a[:, 3].astype(np.int64),
        ts=(a[:, 1] * BAR).astype(np.int64), sym=a[:, 0].astype(np.int32),
        label_end=(a[:, 2] * BAR).astype(np.int64), ret_long=a[:, 4], ret_short=a[:, 5])


@pytest.fixture
def cfg() -> Config:
    return load(None, env={})


def test_trades_costs_and_one_position_per_symbol(cfg: Config) -> None:
    v = _split([
        (0, 0, 3, 1, 0.016, -0.008),   # long .50 -> trade, TP
        (0, 1, 4, 0, -0.008, -0.008),  # long .60 -> signal, but symbol 0 is busy until bar 3
        (0, 3, 9, 0, -0.008, -0.008),  # short .45 -> trade (flat again at bar 3), stopped
        (1, 0, 2, 1, 0.016, -0.008),   # long .35: confident enough, but edge < 0 after costs
        (1, 1, 5, 2, -0.008, 0.016),   # long .45 and short .50 -> short (larger edge), TP
        (1, 2, 6, 0, 0.001, -0.001),   # nothing
    ])
    proba = np.array([[.5, .5, 0], [.4, .6, 0], [.55, 0, .45],
                      [.65, .35, 0], [.05, .45, .5], [1, 0, 0]])
    m = metrics.evaluate(proba, v, cfg)
    cost = 2 * (0.0005 + 0.0002)
    assert m["round_trip_cost"] == pytest.approx(cost)
    assert m["breakeven_win_rate"] == pytest.approx((0.008 + cost) / 0.024)
    assert (m["n_signals"], m["n_trades"], m["n_long"], m["n_short"]) == (4, 3, 1, 2)
    assert m["win_rate"] == pytest.approx(2 / 3)
    assert m["mean_net_return"] == pytest.approx((0.016 - 0.008 + 0.016) / 3 - cost)
    assert m["total_net_return"] == pytest.approx(0.024 - 3 * cost)
    # Always long, one position per symbol: rows 0, 3 (sym 0: ts 3 >= end 3) and 3, 5.
    assert m["always_long_n_trades"] == 4
    assert m["always_long_win_rate"] == pytest.approx(2 / 4)
    assert m["always_long_mean_net_return"] == pytest.approx(
        (0.016 - 0.008 + 0.016 + 0.001) / 4 - cost)
    assert m["random_n_trades"] == 3 and m["random_win_rate"] is not None
    assert m["base_rate_long"] == pytest.approx(2 / 6)
    # Without shorts, row 4 becomes a losing long and row 2 no trade.
    m2 = metrics.evaluate(proba, v, with_changes(cfg, sizing={"allow_short": False}))
    assert (m2["n_trades"], m2["n_short"], m2["win_rate"]) == (2, 0, 0.5)
    # A stricter edge (0.2 %) removes the .45 entries: edge(.45) = 0.14 %, edge(.5) = 0.26 %.
    m3 = metrics.evaluate(proba, v, with_changes(cfg, sizing={"min_edge_pct": 0.2}))
    assert (m3["n_signals"], m3["n_trades"], m3["n_long"], m3["n_short"]) == (3, 2, 1, 1)


def test_auc_log_loss_and_missing_classes(cfg: Config) -> None:
    rng = np.random.default_rng(0)
    v = _split([(0, i, i + 1, int(rng.integers(0, 3)), 0.0, 0.0) for i in range(300)])
    y = v.y
    onehot = np.eye(3)[y]
    perfect = metrics.evaluate(0.9 * onehot + 0.1 / 3, v, cfg)
    assert perfect["auc_long"] == 1.0 and perfect["auc_short"] == 1.0
    assert perfect["auc_direction"] == 1.0
    # Knowing only *whether* a barrier is hit (not which): one-vs-rest AUCs look good,
    # the direction AUC does not.
    vol_only = np.where((y > 0)[:, None], [0.2, 0.4, 0.4], [0.8, 0.1, 0.1])
    m_vol = metrics.evaluate(vol_only, v, cfg)
    assert m_vol["auc_long"] > 0.7 and m_vol["auc_short"] > 0.7
    assert m_vol["auc_direction"] == 0.5
    flat = metrics.evaluate(np.full((300, 3), 1 / 3), v, cfg, train_prior=np.full(3, 1 / 3))
    assert flat["auc_long"] == 0.5 and flat["log_loss"] == pytest.approx(np.log(3))
    assert flat["log_loss_prior"] == pytest.approx(np.log(3)) and flat["n_trades"] == 0
    assert flat["win_rate"] is None and flat["random_n_trades"] == 0
    no_long = _split([(0, i, i + 1, 0 if i % 2 else 2, 0.0, 0.0) for i in range(20)])
    m = metrics.evaluate(np.full((20, 3), 1 / 3), no_long, cfg)
    assert m["auc_long"] is None and m["auc_short"] == 0.5
    with pytest.raises(ValueError, match="do not match"):
        metrics.evaluate(np.full((3, 3), 1 / 3), no_long, cfg)


def _fit_and_score(state: Path, cfg: Config, family: str,
                   leak: bool = False) -> dict[str, object]:
    conn = connect(state)
    ds = dataset.build(conn, cfg)
    conn.close()
    if leak:  # positive control: overwrite one feature with the label itself
        import dataclasses

        X = ds.rows.X.copy()
        X[:, 0] = ds.rows.y
        ds = dataclasses.replace(ds, rows=dataclasses.replace(ds.rows, X=X))
    model = trees.train(family, ds, cfg)
    return metrics.evaluate(model.predict_proba(ds.valid.X), ds.valid, cfg)


@pytest.mark.parametrize("family", trees.FAMILIES)
def test_real_candles_auc_below_leakage_threshold(
    family: str, make_store: Callable[..., Path], all_btc_rows: dict[str, list]
) -> None:
    assert len(all_btc_rows) >= 9
    state = make_store(all_btc_rows)
    cfg = with_changes(load(None, env={}), train={"n_estimators": 30})
    m = _fit_and_score(state, cfg, family)
    assert m["n_valid"] > 4_000
    # Honest 5m models land around 0.5-0.6; anything at 0.65+ means the pipeline leaks.
    assert m["auc_long"] < 0.65 and m["auc_short"] < 0.65, m
    # The tripwire can fire: the same pipeline with the label leaked into a feature.
    leaked = _fit_and_score(state, cfg, family, leak=True)
    assert leaked["auc_long"] > 0.9 and leaked["auc_short"] > 0.9, leaked


@pytest.mark.parametrize("family", trees.FAMILIES)
def test_random_walk_auc_is_chance(family: str, make_store: Callable[..., Path],
                                   random_walk: Callable[..., list]) -> None:
    # Large, fast-resolving validation set: 6 symbols x 15,000 bars, sigma 0.4 %/bar so
    # barriers settle within a few bars (overlapping labels would shrink the effective
    # sample and make AUC noisy); half of a 90 % span is validation (~40k samples).
    state = make_store(random_walk(7, 15_000, [f"RW{i}BTC" for i in range(6)]))
    cfg = with_changes(load(None, env={}), train={"n_estimators": 30, "train_fraction": 0.9,
                                                  "valid_fraction": 0.5})
    m = _fit_and_score(state, cfg, family)
    assert m["n_valid"] > 30_000
    assert abs(m["auc_long"] - 0.5) < 0.05, m["auc_long"]
    assert abs(m["auc_short"] - 0.5) < 0.05, m["auc_short"]
    assert abs(m["auc_direction"] - 0.5) < 0.05, m["auc_direction"]


def test_the_validation_line_carries_its_sample_size_and_interval() -> None:
    from qtraderd.training.metrics import headline, wilson

    lo, hi = wilson(0.4, 50)
    assert 0.27 < lo < 0.4 < hi < 0.54  # the textbook Wilson interval of 20/50
    m = {"n_valid": 1584, "auc_long": 0.55, "auc_short": 0.56, "auc_direction": 0.52,
         "log_loss": 0.95, "log_loss_prior": 0.97, "n_trades": 50, "win_rate": 0.4,
         "breakeven_win_rate": 0.39, "mean_net_return": 0.001,
         "always_long_win_rate": 0.2, "random_win_rate": 0.3}
    line = headline("lightgbm", m)
    assert line.startswith("lightgbm validation (n=1,584): auc_long 0.550")
    assert f"50 trades, win rate 40.0 % [95 % CI {100 * lo:.1f} %-{100 * hi:.1f} %]" in line
