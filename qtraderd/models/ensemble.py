"""Ensemble weights from each model's recent out-of-sample performance, per regime.

Pure Python/numpy: the predictor calls `combine` every bar, and `observe` whenever a
prediction's triple-barrier outcome settles (so every number here is out-of-sample).

Per (model, regime) and per model overall we keep
* an exponentially weighted log-loss (`half_life` outcomes): calibrated probabilities are
  what the sizer's edge rule consumes, so log-loss is the score that matters;
* an exponentially weighted directional hit rate and an ADWIN on the hit stream, on
  decisive outcomes only (label long or short): the hit is whether the model's likelier
  side (long vs short, long on ties as the sizer does) is the one that won.

Weights for a regime: w ∝ exp(-BETA * (ewLL - best ewLL)), BETA = 50 so a 0.02 nat gap
already costs a factor e^-1 (log-loss gaps between decent models are that small). A model
whose ADWIN hit rate sits below `collapse_hit_rate` (window >= min_outcomes) is multiplied
by COLLAPSE_FACTOR: it is down-weighted automatically and recovers once ADWIN sees the hit
rate come back. Finally every weight is at least `floor` (so a model can earn its way back)
and the weights sum to 1.

Fallbacks, because regimes are sparse and models get added:
* fewer than `min_outcomes` in the regime: the model's overall ewLL, shifted by the
  regime's typical offset (mean regime-minus-overall ewLL of the models that have both),
  so a model is not favoured merely because the regime is harder than average;
* no usable stats at all: the mean score of the others (a neutral, middle weight);
  nobody has stats: equal weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qtraderd.core.messages import LABEL_LONG, LABEL_SHORT
from qtraderd.features.regime import REGIMES
from qtraderd.learning.changes import ADWIN

BETA = 50.0  # per nat of ewLL gap
COLLAPSE_FACTOR = 0.1
_EPS = 1e-15
ALL = "*"  # key of the per-model overall stats
_NO_STATS: dict[str, Any] = {}


class _Ewm:
    """Bias-corrected exponentially weighted mean: exact mean until the decay bites."""

    __slots__ = ("den", "num")

    def __init__(self) -> None:
        self.num = 0.0
        self.den = 0.0

    def add(self, x: float, decay: float) -> None:
        self.num = decay * self.num + x
        self.den = decay * self.den + 1.0

    @property
    def value(self) -> float:
        return self.num / self.den if self.den > 0 else math.nan


@dataclass
class _Stats:
    n: int = 0  # outcomes seen
    n_decisive: int = 0
    ll: _Ewm = field(default_factory=_Ewm)
    hit: _Ewm = field(default_factory=_Ewm)
    adwin: ADWIN = field(default_factory=ADWIN)

    def collapsed(self, min_outcomes: int, threshold: float) -> bool:
        return self.adwin.width >= min_outcomes and self.adwin.mean < threshold

    def summary(self) -> dict[str, Any]:
        return {"n": self.n, "n_decisive": self.n_decisive, "ew_log_loss": _r(self.ll.value),
                "ew_hit_rate": _r(self.hit.value), "hit_rate_recent": _r(self.adwin.mean),
                "hit_window": self.adwin.width, "hit_changes": self.adwin.n_detections}


def _r(x: float, digits: int = 4) -> float | None:
    """Rounded for compact JSON; NaN/inf become None (JSON has no NaN)."""
    return round(x, digits) if math.isfinite(x) else None


class EnsembleManager:
    """Per-regime ensemble weights that follow the models' recent outcomes."""

    def __init__(self, models: Iterable[str], regimes: Sequence[str] = REGIMES,
                 half_life: float = 200, floor: float = 0.05,
                 collapse_hit_rate: float = 0.4, min_outcomes: int = 30) -> None:
        if half_life <= 0:
            raise ValueError(f"half_life must be > 0, got {half_life}")
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor must be in [0, 1), got {floor}")
        self.regimes = tuple(regimes)
        self.half_life = float(half_life)
        self.decay = 0.5 ** (1.0 / self.half_life)
        self.floor = floor
        self.collapse_hit_rate = collapse_hit_rate
        self.min_outcomes = int(min_outcomes)
        self._stats: dict[str, dict[str, _Stats]] = {}
        # _explain results by (regime, models) until the next outcome or model change:
        # outcomes arrive in bursts between bars, weights are read for every bar.
        self._explained: dict[tuple[str, tuple[str, ...]], dict[str, dict[str, Any]]] = {}
        self._init_weight_cache()
        for m in models:
            self.add_model(m)

    def _init_weight_cache(self) -> None:
        # weights() results per regime and model list, kept across outcomes that cannot
        # change them: an outcome changes its own regime's stats and every model's overall
        # stats, so it drops that regime's entries and those of regimes where a model
        # fell back to (or lacked) a regime record (`_overall_users`): the rest depend on
        # their own regime's stats alone.
        self._weights: dict[str, dict[tuple[str, ...], dict[str, float]]] = {}
        self._overall_users: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        """Checkpoints carry the stats, not the caches (same state as before they existed)."""
        state = self.__dict__.copy()
        for name in ("_weights", "_overall_users"):
            state.pop(name, None)
        state["_explained"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_weight_cache()

    def _forget(self) -> None:
        self._explained.clear()
        self._weights.clear()
        self._overall_users.clear()

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._stats)

    def add_model(self, name: str) -> None:
        """Add a model, or reset it: a new version's past is not the old version's."""
        self._stats[name] = {ALL: _Stats()}
        self._forget()

    def remove_model(self, name: str) -> None:
        self._stats.pop(name, None)
        self._forget()

    def observe(self, model: str, regime: str, probs: Sequence[float], label: int) -> None:
        """Record the settled outcome `label` (0 none / 1 long / 2 short) of a prediction."""
        a, b, c = probs
        self.observe_outcome(regime, label, ((model, float(a), float(b), float(c)),))

    def observe_outcome(self, regime: str, label: int,
                        predictions: Sequence[tuple[str, float, float, float]]) -> None:
        """One settled outcome for several models' predictions of the same bar, each
        (model, p_none, p_long, p_short): the predictor settles every serving model at
        once, so the caches are dropped once, not per model. The same arithmetic in the
        same order as observing them one by one, so the same bits."""
        stats = self._stats
        for p in predictions:
            if p[0] not in stats:
                raise KeyError(f"unknown model {p[0]!r}; add_model() it first")
        if self._explained:
            self._explained.clear()
        cached = self._weights
        if cached:
            cached.pop(regime, None)
            if self._overall_users:
                for g in self._overall_users:
                    cached.pop(g, None)
                self._overall_users.clear()
        decay = self.decay
        decisive = label in (LABEL_LONG, LABEL_SHORT)
        hit = 0.0
        for model, p0, p1, p2 in predictions:
            if p0 < _EPS:  # max(p, _EPS) without the calls (NaN stays NaN, as with max)
                p0 = _EPS
            if p1 < _EPS:
                p1 = _EPS
            if p2 < _EPS:
                p2 = _EPS
            total = sum((p0, p1, p2))
            ll = -math.log((p0, p1, p2)[label] / total)
            if decisive:
                side = LABEL_SHORT if p2 > p1 else LABEL_LONG
                hit = 1.0 if side == label else 0.0
            per = stats[model]
            for key in (ALL, regime):
                st = per.get(key)
                if st is None:
                    st = per[key] = _Stats()
                st.n += 1
                ew = st.ll  # _Ewm.add, inlined: this runs per model for every outcome
                ew.num = decay * ew.num + ll
                ew.den = decay * ew.den + 1.0
                if decisive:
                    st.n_decisive += 1
                    ew = st.hit
                    ew.num = decay * ew.num + hit
                    ew.den = decay * ew.den + 1.0
                    st.adwin.update(hit)

    def _source(self, model: str, regime: str) -> tuple[str, _Stats | None]:
        per = self._stats.get(model, {})
        st = per.get(regime)
        if st is not None and st.n >= self.min_outcomes:
            return "regime", st
        st = per.get(ALL)
        if st is not None and st.n >= self.min_outcomes:
            return "overall", st
        return "none", None

    def _explain(self, models: Sequence[str], regime: str) -> dict[str, dict[str, Any]]:
        """Weight of each of `models` in `regime`, with where the number came from
        (cached until the stats change; callers must not modify the result)."""
        key = (regime, tuple(models))
        cached = self._explained.get(key)
        if cached is None:
            cached = self._explained[key] = self._compute(key[1], regime)
        return cached

    def _compute(self, models: Sequence[str], regime: str) -> dict[str, dict[str, Any]]:
        min_outcomes = self.min_outcomes
        stats = self._stats
        sources: list[tuple[str, _Stats | None]] = []
        offsets = []
        for m in models:
            src, st = self._source(m, regime)
            sources.append((src, st))
            # Regime offset: how much harder this regime is than average, for the fallback.
            if src == "regime":
                overall = stats[m][ALL]
                if overall.n >= min_outcomes:
                    offsets.append(st.ll.value - overall.ll.value)  # type: ignore[union-attr]
        offset = sum(offsets) / len(offsets) if offsets else 0.0
        info: dict[str, dict[str, Any]] = {}
        known = []
        for m, (src, st) in zip(models, sources, strict=True):
            score = None
            collapsed = False
            if st is not None:
                score = st.ll.value + (offset if src == "overall" else 0.0)
                known.append(score)
                collapsed = st.collapsed(min_outcomes, self.collapse_hit_rate)
            info[m] = {"source": src, "stats": st, "score": score, "collapsed": collapsed}
        neutral = sum(known) / len(known) if known else 0.0
        best = min(known) if known else 0.0
        raw = {}
        for m, v in info.items():
            s = v["score"]
            w = math.exp(-BETA * ((neutral if s is None else s) - best))
            raw[m] = w * (COLLAPSE_FACTOR if v["collapsed"] else 1.0)
        for m, w in _floored(raw, self.floor).items():
            info[m]["weight"] = w
        return info

    def weights(self, regime: str, models: Iterable[str] | None = None) -> dict[str, float]:
        """Weights (summing to 1, each >= floor when feasible) for `regime`, in the order
        of `models`. Cached until an outcome can change them: callers must not modify
        the result."""
        names = tuple(self._stats if models is None else models)
        if not names:
            return {}
        per = self._weights.get(regime)
        if per is None:
            per = self._weights[regime] = {}
        else:
            w = per.get(names)
            if w is not None:
                return w
        if len(set(names)) < len(names):  # a repeated name: the general path
            w = {m: v["weight"] for m, v in self._compute(names, regime).items()}
            uses_overall = True
        else:
            w, uses_overall = self._weigh(names, regime)
        per[names] = w
        if uses_overall:
            self._overall_users.add(regime)
        return w

    def _weigh(self, names: tuple[str, ...], regime: str) -> tuple[dict[str, float], bool]:
        """`_compute`'s weights, with the same arithmetic in the same order (so the
        same bits) but none of its explanation: this runs for every regime of every
        bar whose weights an outcome changed. Also says whether any model's overall
        record was used (see `_init_weight_cache`)."""
        min_outcomes = self.min_outcomes
        stats = self._stats
        chosen: list[_Stats | None] = []
        overall_used: list[bool] = []
        offsets = []
        uses_overall = False
        for m in names:
            per = stats.get(m, _NO_STATS)
            st = per.get(regime)
            if st is not None and st.n >= min_outcomes:
                overall = per[ALL]
                if overall.n >= min_outcomes:
                    offsets.append(st.ll.value - overall.ll.value)
                chosen.append(st)
                overall_used.append(False)
                continue
            uses_overall = True
            st = per.get(ALL)
            if st is None or st.n < min_outcomes:
                st = None
            chosen.append(st)
            overall_used.append(True)
        offset = sum(offsets) / len(offsets) if offsets else 0.0
        scores: list[float | None] = []
        collapsed: list[bool] = []
        known = []
        threshold = self.collapse_hit_rate
        for st, via_overall in zip(chosen, overall_used, strict=True):
            if st is None:
                scores.append(None)
                collapsed.append(False)
                continue
            score = st.ll.value + (offset if via_overall else 0.0)
            scores.append(score)
            known.append(score)
            adwin = st.adwin
            collapsed.append(adwin.width >= min_outcomes and adwin.mean < threshold)
        neutral = sum(known) / len(known) if known else 0.0
        best = min(known) if known else 0.0
        raw = [math.exp(-BETA * ((neutral if s is None else s) - best))
               * (COLLAPSE_FACTOR if c else 1.0) for s, c in zip(scores, collapsed, strict=True)]
        return dict(zip(names, _floored_list(raw, self.floor), strict=True)), uses_overall

    def combine(self, probs_by_model: Mapping[str, Sequence[float]], regime: str
                ) -> tuple[tuple[float, float, float], dict[str, float]]:
        """Weighted average of the models' class probabilities (renormalised to 1).

        Weights are computed over the models present in `probs_by_model` (a model that
        failed to load this bar simply drops out); unknown models count as having no
        stats.
        """
        if not probs_by_model:
            raise ValueError("combine() needs at least one model's probabilities")
        w = self.weights(regime, probs_by_model)
        acc = [0.0, 0.0, 0.0]
        for m, p in probs_by_model.items():
            for j in range(3):
                acc[j] += w[m] * float(p[j])
        total = sum(acc)
        if total <= 0:
            return (1.0 / 3, 1.0 / 3, 1.0 / 3), w
        return (acc[0] / total, acc[1] / total, acc[2] / total), w

    def snapshot(self, regime: str | None = None) -> dict[str, Any]:
        """JSON-able state. With `regime`: the compact record stored with a prediction
        (weights, sources, collapse flags); without: everything, for `ctl`."""
        if regime is not None:
            info = self._explain(list(self._stats), regime)
            return {"regime": regime,
                    "weights": {m: _r(v["weight"]) for m, v in info.items()},
                    "source": {m: v["source"] for m, v in info.items()},
                    "collapsed": sorted(m for m, v in info.items() if v["collapsed"])}
        regimes = list(dict.fromkeys([*self.regimes, *(k for per in self._stats.values()
                                                        for k in per if k != ALL)]))
        return {
            "config": {"half_life": self.half_life, "floor": self.floor, "beta": BETA,
                       "collapse_hit_rate": self.collapse_hit_rate,
                       "collapse_factor": COLLAPSE_FACTOR, "min_outcomes": self.min_outcomes},
            "models": {m: {"overall": per[ALL].summary(),
                           "regimes": {k: st.summary() for k, st in per.items() if k != ALL}}
                       for m, per in self._stats.items()},
            "weights": {g: {m: _r(w) for m, w in self.weights(g).items()} for g in regimes},
        }

    def snapshot_json(self, regime: str) -> str:
        """`snapshot(regime)` as compact JSON, ready for a predictions row."""
        return json.dumps(self.snapshot(regime), separators=(",", ":"), sort_keys=True)


def _floored_list(raw: list[float], floor: float) -> list[float]:
    """`_floored` on a list (same arithmetic, same order of operations, so the same
    bits); the result is in the order of `raw`."""
    n = len(raw)
    total = sum(raw)
    if floor * n >= 1.0 or not total > 0 or not math.isfinite(total):
        return [1.0 / n] * n
    # The first pass of the loop below with nothing pinned, spelled out (it is the usual
    # outcome, once per regime per step): mass is 1.0 - floor * 0 = 1.0 and the free total
    # is sum(raw), so each weight is (1.0 * r) / total = r / total, bit for bit.
    out = [r / total for r in raw]
    if min(out) >= floor:
        return out
    pinned = [False] * n
    n_pinned = 0
    while True:
        mass = 1.0 - floor * n_pinned
        free_total = sum(r for r, p in zip(raw, pinned, strict=True) if not p)
        if free_total > 0:
            out = [floor if p else mass * r / free_total
                   for r, p in zip(raw, pinned, strict=True)]
        else:  # every free weight underflowed: share equally
            share = mass / (n - n_pinned)
            out = [floor if p else share for p in pinned]
        below = [i for i in range(n) if not pinned[i] and out[i] < floor]
        if not below:
            return out
        for i in below:
            pinned[i] = True
        n_pinned += len(below)


def _floored(raw: Mapping[str, float], floor: float) -> dict[str, float]:
    """Normalise to 1 with every weight >= floor (water-filling: pin the ones below the
    floor, share the rest in proportion, repeat). Equal weights when the floor is
    infeasible (floor * n >= 1) or nothing is positive."""
    n = len(raw)
    total = sum(raw.values())
    if n == 0:
        return {}
    if floor * n >= 1.0 or not total > 0 or not math.isfinite(total):
        return {m: 1.0 / n for m in raw}
    pinned: set[str] = set()
    while True:
        free = [m for m in raw if m not in pinned]
        mass = 1.0 - floor * len(pinned)
        free_total = sum(raw[m] for m in free)
        out = {m: floor for m in pinned}
        if free_total > 0:
            out.update({m: mass * raw[m] / free_total for m in free})
        else:  # every free weight underflowed: share equally
            out.update({m: mass / len(free) for m in free})
        below = [m for m in free if out[m] < floor]
        if not below:
            return out
        pinned.update(below)
