"""When to retrain: the four triggers, evaluated on what the learner has seen.

* time — hours of clock time since a family's last deploy >= retrain_interval_hours (a
  retrain whose challenger the gate did not deploy also restarts that count: otherwise a
  champion that keeps winning would be retrained at every evaluation);
* performance — a serving model's directional hit rate on decisive outcomes (the label
  was "long wins" or "short wins": did the model favour that side?) is below min_winrate
  in the window an ADWIN change detector currently keeps, with at least min_outcomes in
  it. ADWIN cuts the window where the rate changed, so the judgement is on the current
  level, not a raw ratio over a handful of trades;
* drift — features of recent bars vs the champion's training window: PSI and KS per
  feature; at least drift_min_features features past a threshold;
* regime — the global regime, smoothed as the most common one over the last day, differs
  from the one at the last (re)training and has done so for regime_sustain_hours.

Everything here is plain computation on numbers the learner hands in (no I/O, no clock
reads), so it is deterministic and unit-testable.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qtraderd.core.clock import iso
from qtraderd.core.config import Config, LearningConfig
from qtraderd.core.messages import LABEL_LONG, LABEL_SHORT, Scored
from qtraderd.features.spec import FEATURE_NAMES
from qtraderd.learning.changes import ADWIN
from qtraderd.learning.drift import feature_drift

HOUR_MS = 3_600_000
PRIORITY = {"manual": 0, "performance": 1, "drift": 2, "regime": 3, "time": 4,
            "new_file": 5, "initial": 0}


@dataclass(frozen=True)
class Trigger:
    kind: str  # time | performance | drift | regime | manual | new_file | initial
    family: str | None  # None: every family
    detail: str

    @property
    def priority(self) -> int:
        return PRIORITY.get(self.kind, 9)


@dataclass
class _Perf:
    adwin: ADWIN
    n: int = 0


@dataclass
class TriggerState:
    cfg: LearningConfig
    recent_rows: int = 2880  # ~ a day of 5m bars over 10 symbols
    last_deploy: dict[str, int] = field(default_factory=dict)  # family -> clock ms
    last_retrain: dict[str, int] = field(default_factory=dict)  # family -> clock ms
    reference: np.ndarray | None = None  # drift reference rows (training window)
    reference_label: str = ""

    def __post_init__(self) -> None:
        self._perf: dict[str, _Perf] = {}
        self._recent: deque[tuple[float, ...]] = deque(maxlen=self.recent_rows)
        self._regimes: deque[tuple[int, str]] = deque()
        self._regime_ref: str | None = None
        self._regime_since: int | None = None

    # -- observations ------------------------------------------------------------------
    def observe_scored(self, s: Scored) -> None:
        if s.role != "serving" or s.label not in (LABEL_LONG, LABEL_SHORT):
            return
        favoured = LABEL_LONG if s.p_long >= s.p_short else LABEL_SHORT
        perf = self._perf.get(s.model)
        if perf is None:
            perf = self._perf[s.model] = _Perf(ADWIN())
        perf.adwin.update(1.0 if favoured == s.label else 0.0)
        perf.n += 1

    def observe_features(self, row: tuple[float, ...], ts: int) -> None:
        self._recent.append(row)
        if self.reference is None and len(self._recent) == self.recent_rows:
            # no retrain seen yet: the first full window of served bars is the baseline
            self.set_reference(f"the first {self.recent_rows} feature rows served", ts)

    def set_reference(self, label: str, ts: int) -> None:
        """The recent rows become what later bars are compared with for drift."""
        self.reference = np.asarray(self._recent, dtype=np.float64)
        self.reference_label = f"{label} (up to {iso(ts)})"

    def observe_regime(self, ts: int, regime: str) -> None:
        if not regime:
            return
        self._regimes.append((ts, regime))
        while self._regimes and self._regimes[0][0] < ts - 24 * HOUR_MS:
            self._regimes.popleft()
        smoothed = self.smoothed_regime()
        if self._regime_ref is None:
            self._regime_ref = smoothed
        if smoothed != self._regime_ref:
            if self._regime_since is None:
                self._regime_since = ts
        else:
            self._regime_since = None

    def smoothed_regime(self) -> str:
        counts = Counter(r for _, r in self._regimes)
        return max(sorted(counts), key=lambda r: counts[r]) if counts else ""

    def note_deploy(self, family: str, ts: int) -> None:
        """A new model serves this family: its own record starts from scratch."""
        self.last_deploy[family] = ts
        self._perf.pop(family, None)

    def note_job_done(self, family: str, ts: int) -> None:
        """A retrain of this family completed (whatever the gate decided).

        Its hit-rate record starts again too: the next performance judgement needs
        `min_outcomes` fresh outcomes, not the ones that already caused this retrain.
        """
        self.last_retrain[family] = ts
        self._perf.pop(family, None)

    def resting(self, ts: int) -> set[str]:
        gap = self.cfg.min_retrain_gap_hours * HOUR_MS
        return {f for f, t in self.last_retrain.items() if ts - t < gap}

    def note_retrained(self, ts: int) -> None:
        """A retraining round ran: the regime it saw, and the features of the last bars of
        its training window, become the new references."""
        self._regime_ref = self.smoothed_regime() or self._regime_ref
        self._regime_since = None
        if len(self._recent) >= self.recent_rows // 4:
            self.set_reference("the last feature rows before the retrain", ts)

    # -- evaluation --------------------------------------------------------------------
    def evaluate(self, ts: int, families: list[str]) -> tuple[list[Trigger], dict[str, Any]]:
        cfg = self.cfg
        triggers: list[Trigger] = []
        detail: dict[str, Any] = {"perf": {}, "drift": [], "regime": self.smoothed_regime()}
        for fam in families:
            deployed = self.last_deploy.get(fam)
            since = max(deployed or 0, self.last_retrain.get(fam, 0)) or None
            hours = (ts - since) / HOUR_MS if since is not None else None
            if hours is None or hours >= cfg.retrain_interval_hours:
                what = "deploy" if since == deployed else "retrain"
                triggers.append(Trigger("time", fam, "no deploy on record" if hours is None
                                        else f"{hours:.0f} h since the last {what}"))
            perf = self._perf.get(fam)
            if perf is not None:
                rate, width = perf.adwin.mean, perf.adwin.width
                detail["perf"][fam] = {"hit_rate": round(rate, 4), "window": width,
                                       "outcomes": perf.n,
                                       "changes": perf.adwin.n_detections}
                if width >= cfg.min_outcomes and rate < cfg.min_winrate:
                    triggers.append(Trigger(
                        "performance", fam, f"hit rate {rate:.1%} over the last {width} "
                        f"decisive outcomes < {cfg.min_winrate:.0%}"))
        drifted = self._drift(detail)
        if len(drifted) >= cfg.drift_min_features:
            triggers.append(Trigger("drift", None, f"{len(drifted)} features drifted: "
                                    + ", ".join(drifted[:5])))
        if (self._regime_since is not None
                and ts - self._regime_since >= cfg.regime_sustain_hours * HOUR_MS):
            triggers.append(Trigger(
                "regime", None, f"global regime {self._regime_ref} -> "
                f"{self.smoothed_regime()} for {(ts - self._regime_since) / HOUR_MS:.0f} h"))
        return triggers, detail

    def _drift(self, detail: dict[str, Any]) -> list[str]:
        if self.reference is None or len(self._recent) < self.recent_rows // 4:
            return []
        cur = np.asarray(self._recent, dtype=np.float64)
        report = feature_drift(self.reference, cur, list(FEATURE_NAMES), self.cfg.drift_psi,
                               self.cfg.drift_ks_p)
        detail["drift"] = [{k: (round(v, 4) if isinstance(v, float) else v)
                            for k, v in r.items()} for r in report if r["drifted"]]
        return [r["feature"] for r in report if r["drifted"]]

    def status(self) -> dict[str, Any]:
        return {
            "hit_rates": {f: {"rate": round(p.adwin.mean, 4), "window": p.adwin.width,
                              "outcomes": p.n} for f, p in sorted(self._perf.items())},
            "regime": self.smoothed_regime(), "regime_reference": self._regime_ref,
            "drift_reference": self.reference_label,
            "recent_feature_rows": len(self._recent),
        }


def plan(triggers: list[Trigger], families: list[str],
         resting: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Which families to retrain, why, in which order (most urgent first).

    `resting` families were retrained less than `min_retrain_gap_hours` ago: a condition
    that outlives a retrain (a champion that stays weak, drift the new model could not
    fix) must not turn into a retrain at every hourly evaluation. Manual and initial
    requests are never held back.
    """
    reasons: dict[str, list[Trigger]] = {}
    for t in triggers:
        for fam in ([t.family] if t.family else families):
            if fam in families and (fam not in resting or t.kind in ("manual", "initial")):
                reasons.setdefault(fam, []).append(t)
    out = [{"family": fam, "priority": min(t.priority for t in ts),
            "reasons": [f"{t.kind}: {t.detail}" for t in ts]}
           for fam, ts in reasons.items()]
    return sorted(out, key=lambda p: (p["priority"], families.index(p["family"])))


def retrain_banner(cfg: Config) -> str:
    """The start-up line, in the seed's words (`Retraining Orchestrator: ...`)."""
    lc = cfg.learning
    if not lc.enabled:
        return "Retraining Orchestrator: DISABLED"
    hours = lc.retrain_interval_hours
    every = f"{hours / 24:g} days" if hours >= 24 and math.isclose(hours % 24, 0) else \
        f"{hours:g} hours"
    return (f"Retraining Orchestrator: ENABLED (retrains every {every}; mode {lc.mode}, "
            f"auto-deploy {'on' if lc.auto_deploy else 'off'}, families "
            f"{', '.join(lc.families)})")
