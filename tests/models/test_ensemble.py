"""Ensemble weights follow recent out-of-sample outcomes, per regime, with a floor and an
automatic down-weight of models whose directional hit rate collapsed."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from qtraderd.models.ensemble import (
    BETA,
    COLLAPSE_FACTOR,
    EnsembleManager,
    _floored,
    _floored_list,
)

PRIOR = (0.4, 0.3, 0.3)


def _world(rng: np.random.Generator) -> tuple[tuple[float, float, float], int]:
    """True probabilities of one outcome (a direction leans 0.45 / 0.15) and its label."""
    d = 1 if rng.random() < 0.5 else -1
    q = (0.4, 0.3 + 0.15 * d, 0.3 - 0.15 * d)
    return q, int(rng.choice(3, p=q))


def _flip(p: tuple[float, float, float]) -> tuple[float, float, float]:
    return (p[0], p[2], p[1])


def _feed(em: EnsembleManager, rng: np.random.Generator, n: int, regime: str,
          models: dict[str, str]) -> None:
    """n outcomes; each model predicts 'true', 'prior' or 'flipped' (long/short swapped)."""
    for _ in range(n):
        q, y = _world(rng)
        for m, kind in models.items():
            p = {"true": q, "prior": PRIOR, "flipped": _flip(q)}[kind]
            em.observe(m, regime, p, y)


def _check_sum_and_floor(w: dict[str, float], floor: float) -> None:
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-12)
    assert min(w.values()) >= floor - 1e-12


def test_equal_weights_without_data() -> None:
    em = EnsembleManager(["a", "b", "c"])
    for regime in ("trend_up", "range", "unknown"):
        assert em.weights(regime) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    # Too few outcomes still means equal weights.
    _feed(em, np.random.default_rng(0), 29, "range", {"a": "true", "b": "prior", "c": "prior"})
    assert em.weights("range") == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_better_model_gets_more_weight() -> None:
    em = EnsembleManager(["good", "prior"], floor=0.0)
    _feed(em, np.random.default_rng(1), 400, "range", {"good": "true", "prior": "prior"})
    w = em.weights("range")
    _check_sum_and_floor(w, 0.0)
    assert w["good"] > 0.9
    # The weight ratio is exp(-BETA * ewLL gap).
    snap = em.snapshot()["models"]
    gap = snap["prior"]["regimes"]["range"]["ew_log_loss"] - \
        snap["good"]["regimes"]["range"]["ew_log_loss"]
    assert gap > 0.02
    assert w["prior"] / w["good"] == pytest.approx(math.exp(-BETA * gap), rel=0.01)


def test_small_log_loss_gap_matters() -> None:
    """0.02 nats apart: the better model gets e (2.7x) the weight of the other."""
    em = EnsembleManager(["a", "b"], floor=0.0, min_outcomes=1)
    pb = 0.5 * math.exp(-0.02)
    for _ in range(50):
        em.observe("a", "range", (0.5, 0.25, 0.25), 0)
        em.observe("b", "range", (pb, (1 - pb) / 2, (1 - pb) / 2), 0)
    w = em.weights("range")
    assert w["a"] / w["b"] == pytest.approx(math.e, rel=1e-3)


def test_weights_sum_to_one_and_respect_the_floor() -> None:
    em = EnsembleManager(["good", "prior", "flipped", "also_good"], floor=0.05)
    _feed(em, np.random.default_rng(2), 300, "range",
          {"good": "true", "prior": "prior", "flipped": "flipped", "also_good": "true"})
    w = em.weights("range")
    _check_sum_and_floor(w, 0.05)
    assert w["flipped"] == pytest.approx(0.05)  # pinned at the floor
    assert w["prior"] == pytest.approx(0.05)
    assert w["good"] == pytest.approx(w["also_good"]) == pytest.approx(0.45)
    # An infeasible floor (n * floor >= 1) degrades to equal weights.
    em2 = EnsembleManager([f"m{i}" for i in range(4)], floor=0.3)
    _feed(em2, np.random.default_rng(3), 100, "range",
          {"m0": "true", "m1": "prior", "m2": "flipped", "m3": "true"})
    assert em2.weights("range") == pytest.approx({f"m{i}": 0.25 for i in range(4)})


def test_collapse_multiplies_weight_down() -> None:
    """Same log-loss, but b's likelier side is always the wrong one: exactly x0.1."""
    em = EnsembleManager(["a", "b"], floor=0.0)
    rng = np.random.default_rng(4)
    for _ in range(200):
        y = int(rng.choice([1, 2]))
        pa = (0.2, 0.45, 0.35) if y == 1 else (0.2, 0.35, 0.45)
        pb = (0.05, 0.45, 0.5) if y == 1 else (0.05, 0.5, 0.45)  # p[y] = .45 too, side wrong
        em.observe("a", "range", pa, y)
        em.observe("b", "range", pb, y)
    w = em.weights("range")
    assert w["b"] / w["a"] == pytest.approx(COLLAPSE_FACTOR)
    assert em.snapshot("range")["collapsed"] == ["b"]


def test_collapsing_model_is_down_weighted_and_recovers() -> None:
    em = EnsembleManager(["a", "b"])
    rng = np.random.default_rng(5)
    _feed(em, rng, 400, "range", {"a": "true", "b": "true"})
    assert em.weights("range")["b"] == pytest.approx(0.5)
    # b's direction breaks: its hit rate collapses (~0.25), ADWIN confirms, weight falls.
    _feed(em, rng, 300, "range", {"a": "true", "b": "flipped"})
    w = em.weights("range")
    assert w["b"] == pytest.approx(0.05)  # at the floor
    assert "b" in em.snapshot("range")["collapsed"]
    recent = em.snapshot()["models"]["b"]["regimes"]["range"]["hit_rate_recent"]
    assert recent < 0.4
    # b is fixed: ADWIN sees the hit rate come back, the ewLL decays back, weight returns.
    _feed(em, rng, 400, "range", {"a": "true", "b": "true"})
    assert "b" not in em.snapshot("range")["collapsed"]  # the flag clears first
    before = em.weights("range")["b"]
    _feed(em, rng, 800, "range", {"a": "true", "b": "true"})
    assert em.weights("range")["b"] > max(0.3, before)  # then the ewLL catches up


def test_per_regime_weights_differ() -> None:
    em = EnsembleManager(["trendy", "ranger"], floor=0.05)
    rng = np.random.default_rng(6)
    for _ in range(200):  # the regimes alternate, as they would across symbols and time
        _feed(em, rng, 1, "trend_up", {"trendy": "true", "ranger": "prior"})
        _feed(em, rng, 1, "range", {"trendy": "prior", "ranger": "true"})
    up, rg = em.weights("trend_up"), em.weights("range")
    assert up["trendy"] > 0.9 and rg["ranger"] > 0.9
    # Overall the two are alike, and a regime neither has seen falls back to that.
    hv = em.weights("high_vol")
    assert 0.3 < hv["trendy"] < 0.7
    assert em.snapshot("high_vol")["source"] == {"trendy": "overall", "ranger": "overall"}
    assert em.snapshot("range")["source"] == {"trendy": "regime", "ranger": "regime"}


def test_fallback_to_overall_uses_the_regime_offset() -> None:
    """A model without enough outcomes in a (harder) regime is compared on its overall
    log-loss shifted by how much harder the regime is for the others, not raw."""
    em = EnsembleManager(["old"], floor=0.0)
    rng = np.random.default_rng(7)
    # "old" has lived through high_vol, where outcomes are noise (a prior-like world,
    # log-loss ~1.09 for anyone) and through range (predictable, ~0.99 for a good model).
    for _ in range(300):
        em.observe("old", "high_vol", PRIOR, int(rng.choice(3, p=PRIOR)))
        _feed(em, rng, 1, "range", {"old": "true"})
    em.add_model("new")  # an equally good model, deployed after the last high_vol bar
    _feed(em, rng, 800, "range", {"old": "true", "new": "true"})
    assert em.snapshot("high_vol")["source"] == {"old": "regime", "new": "overall"}
    w = em.weights("high_vol")
    assert w["new"] == pytest.approx(0.5, abs=0.1)
    # Compared raw, "new"'s range-only log-loss would look much better than "old"'s
    # high_vol log-loss and take most of the weight.
    snap = em.snapshot()["models"]
    gap = snap["old"]["regimes"]["high_vol"]["ew_log_loss"] - snap["new"]["overall"]["ew_log_loss"]
    assert 1 / (1 + math.exp(-BETA * gap)) > 0.9
    assert em.weights("range")["new"] == pytest.approx(0.5, abs=0.1)


def test_unknown_model_is_neutral_in_combine() -> None:
    em = EnsembleManager(["good", "bad"], floor=0.0)
    _feed(em, np.random.default_rng(8), 300, "range", {"good": "true", "bad": "flipped"})
    w = em.weights("range", ["good", "bad", "newcomer"])
    assert w["bad"] < w["newcomer"] < w["good"]
    with pytest.raises(KeyError):
        em.observe("newcomer", "range", PRIOR, 0)


def test_combine_is_the_weighted_average() -> None:
    em = EnsembleManager(["a", "b", "c"], floor=0.0)
    _feed(em, np.random.default_rng(9), 200, "range", {"a": "true", "b": "prior", "c": "true"})
    probs = {"a": (0.2, 0.5, 0.3), "b": (0.6, 0.2, 0.2), "c": (0.1, 0.1, 0.8)}
    out, w = em.combine(probs, "range")
    assert w == pytest.approx(em.weights("range"))
    expected = sum(np.asarray(p) * w[m] for m, p in probs.items())
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert sum(out) == pytest.approx(1.0)
    # A model missing this bar drops out; the others' weights renormalise.
    _, w2 = em.combine({"a": probs["a"], "b": probs["b"]}, "range")
    assert set(w2) == {"a", "b"} and sum(w2.values()) == pytest.approx(1.0)
    assert w2["a"] / w2["b"] == pytest.approx(w["a"] / w["b"])
    with pytest.raises(ValueError):
        em.combine({}, "range")


def test_add_remove_reset_and_snapshot_json() -> None:
    em = EnsembleManager(["a", "b"])
    _feed(em, np.random.default_rng(10), 200, "range", {"a": "flipped", "b": "true"})
    assert em.weights("range")["a"] < 0.1
    em.add_model("a")  # a new version: its past does not count
    assert em.snapshot()["models"]["a"]["overall"]["n"] == 0
    assert em.weights("range")["a"] == pytest.approx(0.5)  # neutral: no stats yet
    em.add_model("c")
    em.remove_model("b")
    assert em.models == ("a", "c")
    assert em.weights("range") == pytest.approx({"a": 0.5, "c": 0.5})
    full = em.snapshot()
    text = json.dumps(full, allow_nan=False)  # JSON-safe: no NaN anywhere
    assert set(full["weights"]) >= {"trend_up", "trend_down", "range", "high_vol"}
    assert full["config"]["half_life"] == 200
    compact = em.snapshot_json("range")
    assert len(compact) < len(text) and " " not in compact
    assert json.loads(compact)["weights"] == {"a": 0.5, "c": 0.5}


def test_ewm_half_life() -> None:
    """After half_life outcomes a level change has moved ewLL about halfway."""
    em = EnsembleManager(["a"], half_life=50, min_outcomes=1)
    for _ in range(1000):
        em.observe("a", "range", (0.5, 0.25, 0.25), 0)  # LL ln 2
    for _ in range(50):
        em.observe("a", "range", (0.25, 0.5, 0.25), 0)  # LL ln 4
    ll = em.snapshot()["models"]["a"]["overall"]["ew_log_loss"]
    assert ll == pytest.approx(1.5 * math.log(2), abs=2e-3)


def test_cached_weights_are_exactly_the_explained_weights_after_every_outcome() -> None:
    """weights() keeps results across outcomes that cannot change them (other regimes,
    when no model falls back to its overall record); after any sequence of outcomes,
    model resets and a checkpoint round trip they must equal, to the bit and in model
    order, a fresh computation (`_compute`, which `snapshot` uses)."""
    rng = np.random.default_rng(21)
    em = EnsembleManager(["a", "b", "c"], min_outcomes=5, half_life=20)
    regimes = ["trend_up", "trend_down", "range", "high_vol"]
    served = 0
    for i in range(3000):
        if i == 1500:
            em.add_model("b")  # a new version: its record starts afresh
        if i == 2000:
            em = pickle.loads(pickle.dumps(em))  # a checkpoint restores without caches
        m = ["a", "b", "c"][int(rng.integers(3))]
        r = regimes[int(rng.integers(1 if i < 300 else 4))]  # some regimes start late
        pl = float(rng.uniform(0, 0.7))
        ps = float(rng.uniform(0, 1 - pl))
        em.observe(m, r, (1 - pl - ps, pl, ps), int(rng.integers(3)))
        for g in regimes:
            for names in (("a", "b", "c"), ("c", "a"), ("a", "new")):
                w = em.weights(g, names)
                fresh = {k: v["weight"] for k, v in em._compute(names, g).items()}
                assert list(w.items()) == list(fresh.items())
                served += em.weights(g, names) is w  # cached until an outcome changes it
    assert served > 1000


def test_floored_list_is_floored() -> None:
    rng = np.random.default_rng(5)
    for _ in range(2000):
        n = int(rng.integers(1, 6))
        raw = [float(x) for x in rng.exponential(size=n) ** 4]
        if rng.random() < 0.2:
            raw[0] = 0.0
        floor = float(rng.choice([0.0, 0.05, 0.15, 0.3]))
        names = "abcde"[:n]
        by_name = _floored(dict(zip(names, raw, strict=True)), floor)
        assert _floored_list(raw, floor) == [by_name[k] for k in names]


def test_settling_several_models_at_once_is_bit_identical_to_one_by_one():
    """The predictor settles every serving model's prediction of a bar in one call; the
    stats, weights and ADWIN windows must be exactly those of observing them in turn."""
    rng = np.random.default_rng(7)
    one, many = EnsembleManager(["a", "b", "c"]), EnsembleManager(["a", "b", "c"])
    regimes = ["trend_up", "range", "volatile"]
    for _ in range(3000):
        regime = regimes[int(rng.integers(3))]
        label = int(rng.choice([0, 0, 1, 2]))
        rows = []
        for m in ("a", "b", "c"):
            pl, ps = float(rng.uniform(0, 0.5)), float(rng.uniform(0, 0.5))
            rows.append((m, 1.0 - pl - ps, pl, ps))
            one.observe(m, regime, (1.0 - pl - ps, pl, ps), label)
        many.observe_outcome(regime, label, rows)
        assert one.weights(regime) == many.weights(regime)
    for regime in regimes:
        assert json.dumps(one.snapshot(regime)) == json.dumps(many.snapshot(regime))
    assert json.dumps(one.snapshot()) == json.dumps(many.snapshot())
    assert _state(one) == _state(many)


def _state(e: EnsembleManager) -> list:
    """Every number the stats hold (floats compared exactly)."""
    return [(m, k, st.n, st.n_decisive, st.ll.num, st.ll.den, st.hit.num, st.hit.den,
             st.adwin.window().tolist(), st.adwin.n_detections, st.adwin.n_seen)
            for m, per in e._stats.items() for k, st in sorted(per.items())]


def test_settling_with_an_unknown_model_changes_nothing():
    e = EnsembleManager(["a"])
    e.observe("a", "range", (0.5, 0.3, 0.2), 1)
    before = _state(e)
    with pytest.raises(KeyError, match="zzz"):
        e.observe_outcome("range", 1, [("a", 0.5, 0.3, 0.2), ("zzz", 0.5, 0.3, 0.2)])
    assert _state(e) == before
