"""What the gate refuses before scoring, and what it never deploys after: a challenger
that saw the evaluation window, an implausible AUC or skill (the leakage alarm); and the
sample size and interval every verdict carries."""

from __future__ import annotations

import numpy as np
import pytest

from qtraderd.core.config import LearningConfig, load
from qtraderd.learning import gate

DAY = 86_400_000
H = 48 * 300_000  # the default label horizon in ms


def scores(skill: float = 0.02, auc_long: float | None = 0.56,
           auc_short: float | None = 0.55) -> gate.GateScores:
    return gate.GateScores(value=1.05, n_trades=40, win_rate=0.5, mean_net_return=0.002,
                           log_loss=1.0, prior_log_loss=1.02, skill=skill, skill_p=0.01,
                           n=1584, skill_lo=skill - 0.03, skill_hi=skill + 0.03,
                           auc_long=auc_long, auc_short=auc_short)


def test_auc_by_ranks_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) + 0.3 * y, 1)  # rounded: many ties
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum()
                + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert gate.auc(y, s) == pytest.approx(pairwise, abs=1e-12)
    assert gate.auc(np.ones(5, bool), s[:5]) is None  # one class only
    assert gate.auc(np.array([0, 1], bool), np.array([0.1, 0.9])) == 1.0


def test_the_window_check_counts_training_plus_one_horizon() -> None:
    start = 100 * DAY
    assert gate.window_conflict(start - H - 1, None, H, start, own=True) is None
    reason = gate.window_conflict(start - H, None, H, start, own=True)
    assert reason is not None and reason.startswith("trained on the evaluation window")
    # a model the job did not train also claims its validation window (data_end)
    assert gate.window_conflict(start - 3 * DAY, start + DAY, H, start, own=True) is None
    assert "validation data" in (gate.window_conflict(start - 3 * DAY, start + DAY, H, start,
                                                      own=False) or "")
    assert gate.window_conflict(None, None, H, start, own=False) is not None


@pytest.mark.parametrize(("s", "alarm"), [
    (scores(), False),
    (scores(auc_long=0.69, auc_short=0.52), False),  # one honest side on a trending window
    (scores(auc_long=0.90, auc_short=0.85), True),  # what a model trained on it scores
    (scores(skill=0.23), True),  # skill no honest model reaches on these bars
    (scores(auc_long=None, auc_short=None), False),
])
def test_leakage_alarm(s: gate.GateScores, alarm: bool) -> None:
    lc = LearningConfig()
    d = gate.decide(None, s, lc)
    assert (d.action == "alarm") is alarm
    if alarm:
        assert d.reason.startswith(f"leakage alarm: auc={s.auc:.3f} skill={s.skill:+.3f}")
        assert "never deployed" in d.reason


def test_the_alarm_comes_before_everything_and_follows_the_config() -> None:
    leak = scores(skill=0.5, auc_long=0.95, auc_short=0.95)
    big = gate.Comparison(improvement_pct=80.0, p_value=0.001, dm_stat=5.0)
    assert gate.decide(big, leak, LearningConfig()).action == "alarm"
    loose = LearningConfig(leakage_auc=0.99, leakage_skill=0.9)
    assert gate.decide(big, leak, loose).action == "deploy"
    cfg = load(env={})
    assert cfg.learning.leakage_auc == 0.65 and cfg.learning.leakage_skill == 0.15


def test_every_verdict_names_its_sample_size_and_interval() -> None:
    for cmp in (None, gate.Comparison(improvement_pct=7.0, p_value=0.01, dm_stat=2.0),
                gate.Comparison(improvement_pct=-3.0, p_value=0.9, dm_stat=-1.0)):
        for s in (scores(), scores(skill=-0.01)):
            reason = gate.decide(cmp, s, LearningConfig()).reason
            assert "n=1,584" in reason and "95 % CI [" in reason, reason


def test_skill_interval_covers_the_estimate_and_narrows_with_data() -> None:
    rng = np.random.default_rng(4)

    def run(n: int) -> tuple[float, float, float, float]:
        y = rng.integers(0, 3, n)
        p = np.full((n, 3), 0.2)
        p[np.arange(n), y] += 0.15 * (rng.random(n) < 0.6)  # a little information
        p /= p.sum(axis=1, keepdims=True)
        return gate.skill_interval(p, y, np.ones(3) / 3, block=10, seed=1)

    small, large = run(500), run(20_000)
    for value, _, lo, hi in (small, large):
        assert lo <= value <= hi
    assert large[3] - large[2] < small[3] - small[2]
    s = gate.score(np.full((4, 3), 1 / 3), np.array([0, 1, 2, 0]), np.zeros(4), np.zeros(4),
                   np.zeros(4, np.int32), np.arange(4) * 300_000, np.arange(4) * 300_000 + 1,
                   np.ones(3) / 3, load(env={}), 0.1)
    assert s.n == 4 and s.skill_lo is not None and s.auc_long is not None
