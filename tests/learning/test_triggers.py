"""The four retrain triggers and the plan they produce."""

from __future__ import annotations

import numpy as np

from qtraderd.core.config import load, with_changes
from qtraderd.core.messages import LABEL_LONG, LABEL_NONE, Scored
from qtraderd.features.spec import N_FEATURES
from qtraderd.learning.triggers import HOUR_MS, Trigger, TriggerState, plan

T0 = 1_516_000_000_000


def state(**learning) -> TriggerState:
    cfg = with_changes(load(env={}), learning=learning) if learning else load(env={})
    return TriggerState(cfg.learning)


def scored(model: str, hit: bool, i: int, role: str = "serving", label: int = LABEL_LONG
           ) -> Scored:
    p_long, p_short = (0.4, 0.1) if hit == (label == LABEL_LONG) else (0.1, 0.4)
    return Scored(model, "v1", role, "ETHBTC", T0 + i * 300_000, "range", p_long, p_short,
                  label, 0.016, -0.008, T0 + (i + 5) * 300_000)


def kinds(triggers: list[Trigger]) -> set[tuple[str, str | None]]:
    return {(t.kind, t.family) for t in triggers}


def test_time_trigger_counts_clock_hours_since_the_last_deploy():
    st = state(retrain_interval_hours=24)
    st.note_deploy("xgboost", T0)
    trig, _ = st.evaluate(T0 + 23 * HOUR_MS, ["xgboost"])
    assert ("time", "xgboost") not in kinds(trig)
    trig, _ = st.evaluate(T0 + 24 * HOUR_MS, ["xgboost"])
    assert ("time", "xgboost") in kinds(trig)
    trig, _ = st.evaluate(T0, ["lightgbm"])  # never deployed: due at once
    assert ("time", "lightgbm") in kinds(trig)


def test_performance_trigger_needs_a_sustained_drop_and_enough_outcomes():
    st = state(min_winrate=0.5, min_outcomes=50, retrain_interval_hours=10_000)
    st.note_deploy("xgboost", T0)
    rng = np.random.default_rng(0)
    for i in range(40):  # a handful of bad outcomes: not enough to judge
        st.observe_scored(scored("xgboost", False, i))
    trig, _ = st.evaluate(T0, ["xgboost"])
    assert ("performance", "xgboost") not in kinds(trig)
    for i in range(40, 600):  # good for a long while
        st.observe_scored(scored("xgboost", rng.random() < 0.62, i))
    trig, detail = st.evaluate(T0, ["xgboost"])
    assert ("performance", "xgboost") not in kinds(trig)
    for i in range(600, 900):  # then it collapses
        st.observe_scored(scored("xgboost", rng.random() < 0.30, i))
    trig, detail = st.evaluate(T0, ["xgboost"])
    assert ("performance", "xgboost") in kinds(trig)
    assert detail["perf"]["xgboost"]["hit_rate"] < 0.5


def test_performance_ignores_shadows_and_undecided_outcomes():
    st = state(min_outcomes=10, retrain_interval_hours=10_000)
    st.note_deploy("xgboost", T0)
    for i in range(200):
        st.observe_scored(scored("xgboost", False, i, role="shadow"))
        st.observe_scored(scored("xgboost", False, i, label=LABEL_NONE))
    trig, detail = st.evaluate(T0, ["xgboost"])
    assert "xgboost" not in detail["perf"] and ("performance", "xgboost") not in kinds(trig)


def test_drift_trigger_compares_recent_features_with_the_training_window():
    st = state(drift_min_features=3, retrain_interval_hours=10_000)
    rng = np.random.default_rng(1)
    st.reference = rng.normal(size=(5000, N_FEATURES))
    for _ in range(st.recent_rows):
        st.observe_features(tuple(rng.normal(size=N_FEATURES)), T0)
    trig, _ = st.evaluate(T0, [])
    assert not any(t.kind == "drift" for t in trig)
    for _ in range(st.recent_rows):
        row = rng.normal(size=N_FEATURES)
        row[:4] = row[:4] * 3 + 2  # four features shift and widen
        st.observe_features(tuple(row), T0)
    trig, detail = st.evaluate(T0, [])
    assert any(t.kind == "drift" for t in trig)
    assert len(detail["drift"]) >= 4


def test_drift_reference_is_the_first_window_then_each_retrain():
    st = state(drift_min_features=3, retrain_interval_hours=10_000)
    rng = np.random.default_rng(2)
    assert st.reference is None
    for _ in range(st.recent_rows):
        st.observe_features(tuple(rng.normal(size=N_FEATURES)), T0)
    assert st.reference is not None and len(st.reference) == st.recent_rows
    assert st.reference_label.startswith("the first")
    for _ in range(st.recent_rows):
        row = rng.normal(size=N_FEATURES)
        row[:4] = row[:4] * 3 + 2
        st.observe_features(tuple(row), T0 + HOUR_MS)
    trig, _ = st.evaluate(T0 + HOUR_MS, [])
    assert any(t.kind == "drift" for t in trig)
    st.note_retrained(T0 + HOUR_MS)  # the retrain saw the shifted bars: no drift against them
    assert st.reference_label.startswith("the last feature rows before the retrain")
    trig, _ = st.evaluate(T0 + HOUR_MS, [])
    assert not any(t.kind == "drift" for t in trig)


def test_regime_trigger_needs_the_change_to_last():
    st = state(regime_sustain_hours=72, retrain_interval_hours=10_000)
    ts = T0
    for _ in range(48 * 12):  # two days of range
        ts += 300_000
        st.observe_regime(ts, "range")
    for _ in range(30 * 12):  # a day and a bit of trend: smoothed regime flips, not yet 72 h
        ts += 300_000
        st.observe_regime(ts, "trend_up")
    trig, _ = st.evaluate(ts, [])
    assert not any(t.kind == "regime" for t in trig)
    for _ in range(72 * 12):
        ts += 300_000
        st.observe_regime(ts, "trend_up")
    trig, _ = st.evaluate(ts, [])
    assert any(t.kind == "regime" for t in trig)
    st.note_retrained(ts)  # the new regime becomes the reference
    trig, _ = st.evaluate(ts, [])
    assert not any(t.kind == "regime" for t in trig)


def test_plan_orders_by_urgency_and_merges_reasons():
    fams = ["xgboost", "lightgbm", "nhits"]
    p = plan([Trigger("time", "xgboost", "25 h"), Trigger("drift", None, "5 features"),
              Trigger("performance", "nhits", "hit rate 40 %")], fams)
    assert [x["family"] for x in p] == ["nhits", "xgboost", "lightgbm"]
    assert p[0]["priority"] == 1 and len(p[1]["reasons"]) == 2
    assert plan([Trigger("time", "unknown", "")], fams) == []


def test_a_retrain_the_gate_kept_restarts_the_time_count():
    st = state(retrain_interval_hours=24)
    st.note_deploy("xgboost", T0)
    st.note_job_done("xgboost", T0 + 25 * HOUR_MS)  # retrained, champion kept
    trig, _ = st.evaluate(T0 + 26 * HOUR_MS, ["xgboost"])
    assert ("time", "xgboost") not in kinds(trig)
    trig, _ = st.evaluate(T0 + 49 * HOUR_MS, ["xgboost"])
    assert any(t.kind == "time" and "since the last retrain" in t.detail for t in trig)


def test_recently_retrained_families_rest_unless_asked_by_hand():
    st = state(min_retrain_gap_hours=6, min_outcomes=10)
    st.note_job_done("xgboost", T0)
    resting = st.resting(T0 + 5 * HOUR_MS)
    assert resting == {"xgboost"} and st.resting(T0 + 6 * HOUR_MS) == set()
    fams = ["xgboost", "lightgbm"]
    p = plan([Trigger("drift", None, "x")], fams, resting)
    assert [x["family"] for x in p] == ["lightgbm"]
    p = plan([Trigger("manual", "xgboost", "ctl retrain")], fams, resting)
    assert [x["family"] for x in p] == ["xgboost"]
