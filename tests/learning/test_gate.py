"""Deploy-gate statistics: hand-checked trading arithmetic, and the gate's error rates.

The error-rate tests run the gate on a synthetic market that has what makes real data hard:
overlapping triple-barrier labels (consecutive samples share most of their future, so
outcomes are autocorrelated), a slowly moving predictive signal, several symbols
interleaved in time, and costs. They check that
* two models of equal skill are declared different at about the nominal 5 % rate;
* a model with no skill is never deployed, whether the champion trades well or loses
  money (where doing nothing looks like an improvement and only the skill veto stops it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qtraderd.core.config import Config, LearningConfig, load, with_changes
from qtraderd.learning import gate

BAR = 300_000
TP, SL = 0.016, 0.008
COST = 2 * (0.0005 + 0.0002)  # default round trip: taker fee + slippage, both ways
W = 0.5  # notional fraction per trade in the synthetic tests (large, so % moves are visible)


@pytest.fixture
def cfg() -> Config:
    return load(None, env={})


# ----------------------------------------------------------------------------- arithmetic


def _rows(rows: list[tuple[int, int, int, float, float]]) -> tuple[np.ndarray, ...]:
    """rows of (sym, ts_bar, label_end_bar, ret_long, ret_short) -> column arrays."""
    a = np.asarray(rows, dtype=np.float64)
    return (a[:, 3], a[:, 4], a[:, 0].astype(np.int32), (a[:, 1] * BAR).astype(np.int64),
            (a[:, 2] * BAR).astype(np.int64))


TABLE = _rows([
    (0, 0, 3, 0.016, -0.008),   # long .50 -> trade, TP
    (0, 1, 4, -0.008, -0.008),  # long .60 -> qualifies, but symbol 0 is busy until bar 3
    (0, 3, 9, -0.008, -0.008),  # short .45 -> trade (flat again at bar 3), stopped
    (1, 0, 2, 0.016, -0.008),   # long .35: confident enough, but edge < 0 after costs
    (1, 1, 5, -0.008, 0.016),   # long .45, short .50 -> short, TP
    (1, 2, 6, 0.001, -0.001),   # nothing (p_none = 1)
])
PROBS = np.array([[.5, .5, 0], [.4, .6, 0], [.55, 0, .45],
                  [.65, .35, 0], [.05, .45, .5], [1, 0, 0]])


def test_trade_returns_by_hand(cfg: Config) -> None:
    r = gate.trade_returns(PROBS, *TABLE, cfg)
    expected = [0.016 - COST, 0, -0.008 - COST, 0, 0.016 - COST, 0]
    np.testing.assert_allclose(r, expected, atol=1e-15)
    sides = gate.trade_sides(PROBS, *TABLE, cfg)
    assert sides.tolist() == [1, 0, -1, 0, -1, 0]


def test_trade_returns_order_independent(cfg: Config) -> None:
    """Blocking follows time, not the row order the caller happens to use."""
    perm = np.array([5, 2, 4, 0, 3, 1])
    cols = [c[perm] for c in TABLE]
    r = gate.trade_returns(PROBS[perm], *cols, cfg)
    np.testing.assert_allclose(r, gate.trade_returns(PROBS, *TABLE, cfg)[perm])


def test_trade_returns_without_shorts(cfg: Config) -> None:
    c = with_changes(cfg, sizing={"allow_short": False})
    r = gate.trade_returns(PROBS, *TABLE, c)
    # Row 2 (short .45) is no trade now, so symbol 0 stays flat; row 4 goes long .45
    # (edge .45*.016 - .55*.008 - cost = .0014 > 0) and loses its stop.
    np.testing.assert_allclose(r, [0.016 - COST, 0, 0, 0, -0.008 - COST, 0], atol=1e-15)


def test_trade_returns_thresholds_and_costs(cfg: Config) -> None:
    # Round trip .002 and a minimum edge of .002: row 0 (edge .5*.016 - .5*.008 - .002 =
    # .002, not > .002) and row 4 (the same) drop out; row 1 (edge .0044) trades now that
    # symbol 0 is free, and blocks row 2 until bar 4. The net return pays the new cost.
    c = with_changes(cfg, sizing={"min_edge_pct": 0.2},
                     costs={"taker_fee_pct": 0.1, "slippage_bps": 0.0})
    r = gate.trade_returns(PROBS, *TABLE, c)
    np.testing.assert_allclose(r, [0, -0.010, 0, 0, 0, 0], atol=1e-15)
    c = with_changes(cfg, sizing={"min_confidence": 0.55})
    r = gate.trade_returns(PROBS, *TABLE, c)
    # Only row 1 (long .60) is confident enough; symbol 0 is now free at bar 1.
    np.testing.assert_allclose(r, [0, -0.008 - COST, 0, 0, 0, 0], atol=1e-15)


def test_unsettled_rows_never_trade(cfg: Config) -> None:
    rl, rs, sym, ts, end = (c.copy() for c in TABLE)
    rl[0] = np.nan
    end[0] = -1
    r = gate.trade_returns(PROBS, rl, rs, sym, ts, end, cfg)
    # Row 0 cannot settle, so row 1 (long .60) trades instead and blocks until bar 4.
    np.testing.assert_allclose(r, [0, -0.008 - COST, 0, 0, 0.016 - COST, 0], atol=1e-15)
    with pytest.raises(ValueError, match="same length"):
        gate.trade_returns(PROBS, rl[:3], rs, sym, ts, end, cfg)


def test_scored_returns_matches_trade_returns(cfg: Config) -> None:
    """Live outcomes (messages.Scored rows, symbols as names, any order) score alike."""
    from qtraderd.core.messages import Scored

    rl, rs, sym, ts, end = TABLE
    rows = [Scored("m", "v1", "serving", f"S{int(sym[i])}", int(ts[i]), "range",
                   float(PROBS[i, 1]), float(PROBS[i, 2]), 0, float(rl[i]), float(rs[i]),
                   int(end[i]))
            for i in range(len(rl))]
    expected = gate.trade_returns(PROBS, *TABLE, cfg)
    np.testing.assert_allclose(gate.scored_returns(rows, cfg), expected, atol=1e-12)
    np.testing.assert_allclose(gate.scored_returns(rows[::-1], cfg), expected[::-1],
                               atol=1e-12)
    assert len(gate.scored_returns([], cfg)) == 0


def test_equity_and_improvement_arithmetic() -> None:
    r = np.array([0.01, 0.0, -0.02, 0.03])
    assert gate.equity_value(r, 0.5) == pytest.approx(1.005 * 0.99 * 1.015)
    assert gate.equity_value(np.zeros(5), 0.5) == 1.0
    assert gate.equity_value(np.array([-3.0]), 1.0) == pytest.approx(1e-12)  # ruin, finite
    champion = np.array([0.0, -0.01, 0.0, 0.01])
    cmp = gate.compare(champion, r, 0.5, seed=1)
    v_c, v_ch = gate.equity_value(r, 0.5), gate.equity_value(champion, 0.5)
    assert cmp.improvement_pct == pytest.approx(100 * (v_c / v_ch - 1))
    assert (cmp.value_challenger, cmp.value_champion) == (pytest.approx(v_c), pytest.approx(v_ch))
    with pytest.raises(ValueError, match="same samples"):
        gate.compare(champion, r[:3], 0.5)


# ----------------------------------------------------------------------------- bootstrap


def _ar(rng: np.random.Generator, n: int, k: int, phi: float) -> np.ndarray:
    """k AR(1) columns of unit variance (exponential-kernel convolution: fast)."""
    lags = int(np.ceil(np.log(1e-4) / np.log(phi)))
    kern = phi ** np.arange(lags) * math.sqrt(1 - phi**2)
    e = rng.standard_normal((n + lags, k))
    return np.stack([np.convolve(e[:, j], kern, mode="valid")[1:] for j in range(k)], 1)


def test_bootstrap_detects_a_clearly_better_challenger() -> None:
    rng = np.random.default_rng(3)
    d = 0.3 + _ar(rng, 2000, 1, 0.9)[:, 0]  # positive mean, autocorrelated
    assert gate.paired_block_bootstrap(d, seed=1) < 0.01
    assert gate.paired_block_bootstrap(-d, seed=1) > 0.99
    stat, p = gate.diebold_mariano(d, lag=48)
    assert stat > 3 and p < 0.01
    # A constant gain has no variance: the smallest p the bootstrap can give.
    assert gate.paired_block_bootstrap(np.full(100, 0.01), n_boot=999) == pytest.approx(1e-3)
    assert gate.paired_block_bootstrap(np.zeros(100)) == 1.0
    assert gate.paired_block_bootstrap(np.array([])) == 1.0


def test_block_bootstrap_accounts_for_autocorrelation() -> None:
    """Strongly autocorrelated noise looks 'significant' to an i.i.d. test, not to blocks."""
    naive = blocks = 0
    for seed in range(100):
        d = _ar(np.random.default_rng(seed), 2000, 1, 0.9)[:, 0]
        naive += gate.paired_block_bootstrap(d, n_boot=500, block=1, seed=seed) < 0.05
        blocks += gate.paired_block_bootstrap(d, n_boot=500, block=100, seed=seed) < 0.05
    assert naive >= 25  # block=1 is the i.i.d. bootstrap: badly anti-conservative here
    assert blocks <= 12


# ----------------------------------------------------------------------------- synthetic market


def market(rng: np.random.Generator, n_bars: int, n_sym: int = 3, b: float = 0.3,
           horizon: int = 24) -> dict[str, np.ndarray]:
    """Samples in (bar, symbol) order with overlapping triple-barrier-like outcomes.

    A persistent signal x (AR(1), phi .97) shifts the future move F (the sum of the next
    `horizon` shocks, shared by neighbouring samples); long wins when b*x + F > c, short
    when < -c (each ~30 %). Column 0 of X is x seen through noise; columns 1-2 are
    persistent noise features.
    """
    x = _ar(rng, n_bars, n_sym, 0.97)
    noise = _ar(rng, n_bars, 2 * n_sym, 0.97)
    e = np.vstack([np.zeros((1, n_sym)), np.cumsum(rng.standard_normal((n_bars + horizon,
                                                                        n_sym)), 0)])
    fut = (e[horizon + 1: horizon + 1 + n_bars] - e[1:1 + n_bars]) / math.sqrt(horizon)
    c = 0.5244 * math.sqrt(1 + b * b)
    score = b * x + fut
    n = n_bars * n_sym
    y = np.where(score > c, 1, np.where(score < -c, 2, 0)).ravel()
    timeout = rng.random(n) < 0.3  # a "none" outcome is a stop, or a time-barrier exit
    mid = rng.uniform(-SL, SL, n)
    rl = np.where((y == 0) & timeout, mid, np.where(y == 1, TP, -SL))
    rs = np.where((y == 0) & timeout, -mid, np.where(y == 2, TP, -SL))
    t = np.repeat(np.arange(n_bars), n_sym)
    xr = x.ravel()
    erfc = np.vectorize(math.erfc)
    pl, ps = 0.5 * erfc((c - b * xr) / math.sqrt(2)), 0.5 * erfc((c + b * xr) / math.sqrt(2))
    return {"X": np.column_stack([xr + 0.5 * rng.standard_normal(n), noise.reshape(n, 2)]),
            "y": y, "ret_long": rl, "ret_short": rs, "sym": np.tile(np.arange(n_sym), n_bars),
            "ts": t * BAR, "label_end": (t + horizon) * BAR,
            "p_true": np.column_stack([1 - pl - ps, pl, ps])}


def _cols(m: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    return m["ret_long"], m["ret_short"], m["sym"], m["ts"], m["label_end"]


def hist_model(X: np.ndarray, y: np.ndarray, cols: list[int], bins: int
               ) -> tuple[list[np.ndarray], np.ndarray]:
    """A histogram classifier on quantile cells — what a shallow tree ensemble amounts to."""
    edges = [np.quantile(X[:, j], np.linspace(0, 1, bins + 1)[1:-1]) for j in cols]
    cells = _cells(X, cols, edges, bins)
    counts = np.zeros((bins ** len(cols), 3))
    np.add.at(counts, (cells, y), 1)
    prior = np.bincount(y, minlength=3) / len(y)
    return edges, (counts + 3 * prior) / (counts.sum(1, keepdims=True) + 3)


def _cells(X: np.ndarray, cols: list[int], edges: list[np.ndarray], bins: int) -> np.ndarray:
    c = np.zeros(len(X), dtype=np.int64)
    for j, e in zip(cols, edges, strict=True):
        c = c * bins + np.searchsorted(e, X[:, j])
    return c


def predict(model: tuple[list[np.ndarray], np.ndarray], X: np.ndarray, cols: list[int],
            bins: int) -> np.ndarray:
    edges, table = model
    return table[_cells(X, cols, edges, bins)]


def _noisy(rng: np.random.Generator, p: np.ndarray, sd: float = 0.4) -> np.ndarray:
    """`p` through persistent noise: the same skill for every draw."""
    q = p * np.exp(sd * _ar(rng, len(p), 3, 0.9))
    return q / q.sum(1, keepdims=True)


def test_false_positive_rate_of_equal_skill_pairs(cfg: Config) -> None:
    """Equal-skill models: p < .05 about 5 % of the time, p roughly uniform."""
    ps = []
    for seed in range(300):
        rng = np.random.default_rng(10_000 + seed)
        ev = market(rng, 1000)
        r_a = gate.trade_returns(_noisy(rng, ev["p_true"]), *_cols(ev), cfg)
        r_b = gate.trade_returns(_noisy(rng, ev["p_true"]), *_cols(ev), cfg)
        ps.append(gate.compare(r_a, r_b, W, seed, n_boot=1000, block=72).p_value)
    p = np.asarray(ps)
    fpr = float((p < 0.05).mean())
    print(f"gate false-positive rate at p<0.05 over {len(p)} equal-skill pairs: {fpr:.3f}")
    assert fpr <= 0.075  # 0.05 + ~2 standard errors of a 300-trial rate
    assert 0.42 < p.mean() < 0.58
    assert 0.05 < (p < 0.2).mean() < 0.3


def test_skill_of_a_model_without_information(cfg: Config) -> None:
    """Small persistent noise around the prior: no information, a tiny log-loss penalty,
    so the skill test sits right at its null and must pass at most ~5 % of the time."""
    ps, passes = [], 0
    for seed in range(300):
        rng = np.random.default_rng(20_000 + seed)
        ev = market(rng, 600)
        prior = np.array([0.4, 0.3, 0.3])
        probs = _noisy(rng, np.tile(prior, (len(ev["y"]), 1)), sd=0.05)
        s, p = gate.skill(probs, ev["y"], prior, n_boot=500, block=72, seed=seed)
        passes += s > 0 and p < 0.05
        ps.append(p)
    assert passes <= 0.065 * 300
    assert np.mean(ps) > 0.5  # the penalty shows: p leans towards "no skill"


def test_skill_of_the_true_model_and_of_random_probabilities() -> None:
    rng = np.random.default_rng(5)
    ev = market(rng, 3000, b=0.6)
    prior = np.bincount(ev["y"], minlength=3) / len(ev["y"])
    s, p = gate.skill(ev["p_true"], ev["y"], prior, block=72, seed=1)
    assert s > 0.02 and p < 0.01
    s, p = gate.skill(rng.dirichlet([1, 1, 1], len(ev["y"])), ev["y"], prior, seed=1)
    assert s < -0.1 and p > 0.99
    # The prior itself: zero skill, never significant.
    s, p = gate.skill(np.tile(prior, (len(ev["y"]), 1)), ev["y"], prior, seed=1)
    assert s == pytest.approx(0.0, abs=1e-12) and p == 1.0


def test_no_skill_challenger_is_never_deployed(cfg: Config) -> None:
    """200 seeded trials: shuffled-label and random challengers vs a champion with a little
    skill, and vs a losing champion (always long) that doing nothing would beat."""
    lc = cfg.learning
    actions: dict[str, int] = {}
    veto_needed = champion_losing = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        train, ev = market(rng, 1500), market(rng, 1000)
        prior = np.bincount(train["y"], minlength=3) / len(train["y"])
        skilled = predict(hist_model(train["X"], train["y"], [0], 10), ev["X"], [0], 10)
        r_skilled = gate.trade_returns(skilled, *_cols(ev), cfg)
        r_losing = gate.trade_returns(np.tile([0.2, 0.5, 0.3], (len(ev["y"]), 1)),
                                      *_cols(ev), cfg)
        champion_losing += gate.equity_value(r_losing, W) < 1.0
        shuffled = hist_model(train["X"], rng.permutation(train["y"]), [0, 1], 8)
        challengers = {"shuffled": predict(shuffled, ev["X"], [0, 1], 8),
                       "random": rng.dirichlet([1, 1, 1], len(ev["y"]))}
        for name, probs in challengers.items():
            sc = gate.score(probs, ev["y"], *_cols(ev), prior, cfg, W, n_boot=500, block=72,
                            seed=seed)
            for champ, r_ch in (("skilled", r_skilled), ("losing", r_losing)):
                cmp = gate.compare(r_ch, sc.returns, W, seed, n_boot=500, block=72)
                d = gate.decide(cmp, sc, lc)
                key = f"{name}/{champ}/{d.action}"
                actions[key] = actions.get(key, 0) + 1
                if cmp.improvement_pct > lc.min_improvement_pct and cmp.p_value < 0.05:
                    veto_needed += 1
                    assert d.action == "reject", d.reason
    assert not any(k.endswith("/deploy") for k in actions), actions
    assert champion_losing > 150  # the losing champion really loses
    assert veto_needed >= 20  # the comparison alone would have deployed these


# ----------------------------------------------------------------------------- decide


def _scores(skill: float = 0.02, p: float = 0.01) -> gate.GateScores:
    return gate.GateScores(value=1.05, n_trades=40, win_rate=0.5, mean_net_return=0.002,
                           log_loss=1.0, prior_log_loss=1.02, skill=skill, skill_p=p)


def _cmp(imp: float, p: float) -> gate.Comparison:
    return gate.Comparison(improvement_pct=imp, p_value=p, dm_stat=0.0)


@pytest.mark.parametrize(("cmp", "scores", "action", "text"), [
    (_cmp(50.0, 0.001), _scores(-0.01, 0.9), "reject", "no skill"),
    (_cmp(50.0, 0.001), _scores(0.01, 0.2), "reject", "p=0.200"),  # skill not significant
    (None, _scores(0.0, 0.01), "reject", "no skill"),
    (None, _scores(), "deploy", "no champion"),
    (_cmp(6.1, 0.012), _scores(), "deploy", "+6.1 % (p=0.012) over champion"),
    (_cmp(6.1, 0.2), _scores(), "canary", "not significant"),
    (_cmp(5.0, 0.001), _scores(), "canary", "below the 5 % deploy bar"),
    (_cmp(2.0, 0.3), _scores(), "canary", "+2.0 %"),
    (_cmp(1.9, 0.001), _scores(), "keep", "below the 2 % canary bar"),
    (_cmp(-4.0, 0.9), _scores(), "keep", "-4.0 %"),
])
def test_decide_branches(cmp: gate.Comparison | None, scores: gate.GateScores, action: str,
                         text: str) -> None:
    d = gate.decide(cmp, scores, LearningConfig())
    assert d.action == action
    assert text in d.reason


def test_decide_uses_the_configured_thresholds() -> None:
    lc = LearningConfig(min_improvement_pct=10.0, canary_threshold_pct=1.0, significance=0.01)
    ok = _scores(0.02, 0.005)
    assert gate.decide(_cmp(6.1, 0.001), ok, lc).action == "canary"
    assert gate.decide(_cmp(12.0, 0.02), ok, lc).action == "canary"
    assert gate.decide(_cmp(12.0, 0.005), ok, lc).action == "deploy"
    assert gate.decide(_cmp(12.0, 0.005), _scores(0.02, 0.02), lc).action == "reject"
    assert gate.decide(_cmp(0.5, 0.4), ok, lc).action == "keep"


def test_score_fields_and_json(cfg: Config) -> None:
    y = np.array([1, 0, 0, 0, 2, 0])
    s = gate.score(PROBS, y, *TABLE, np.array([0.5, 0.25, 0.25]), cfg, 0.5, seed=1)
    assert s.n_trades == 3
    assert s.win_rate == pytest.approx(2 / 3)  # rows 0 and 4 hit their take-profit
    assert s.mean_net_return == pytest.approx((0.016 - 0.008 + 0.016) / 3 - COST)
    assert s.value == pytest.approx(gate.equity_value(s.returns, 0.5))
    assert s.prior_log_loss == pytest.approx(-(4 * math.log(.5) + 2 * math.log(.25)) / 6)
    assert s.skill == pytest.approx(1 - s.log_loss / s.prior_log_loss)
    d = s.to_dict()
    assert "returns" not in d and d["n_trades"] == 3
    none = gate.score(np.tile([1.0, 0, 0], (6, 1)), y, *TABLE, np.ones(3) / 3, cfg, 0.5)
    assert none.n_trades == 0 and none.win_rate is None and none.value == 1.0
