"""Predictor actor: features, regimes, model probabilities, ensemble and outcomes per bar.

For each closed bar it updates the symbol's incremental features and candle window (the
same definitions the learner trains on), the regime detector and the triple-barrier
labeler (which turns earlier samples into labelled outcomes once their window has
closed). Then it runs every model once on the whole step — tree models on feature rows,
networks on candle windows — and combines the serving models into the ensemble with
weights from their recent out-of-sample record (qtraderd.models.ensemble), per regime. Shadow
models (a canary, or the previous champion after a deploy) predict too; their outputs are
recorded but never reach the ensemble. Every prediction names its exact model version.

When an outcome arrives it is matched with every model's prediction for that bar and
passed on as `Scored` (to the ensemble's bookkeeping here and to the learner downstream).

Honesty: a model abstains on bars its training could have seen (up to `data_end` in its
metadata), so a replay over the training period never trades on in-sample predictions.

Model changes happen only between steps: the learner sends `set_models` (and waits for
the answer, so a replay swaps at the same bar every time); a watcher on the models
directory picks up champion pointers changed by hand. Files that fail any check are
refused ("model rejected: ...") and the models in memory keep serving.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import trio

from qtraderd.core.checkpoint import put, take
from qtraderd.core.clock import iso
from qtraderd.core.messages import (
    Bar,
    Command,
    ModelOutput,
    Outcome,
    Prediction,
    Sample,
    Scored,
    Step,
    replace,
)
from qtraderd.features.labels import Barriers, Labeler
from qtraderd.features.regime import RegimeDetector, global_regime
from qtraderd.features.spec import FeatureState
from qtraderd.features.windows import WindowState, normalize_windows
from qtraderd.models.artifacts import champions_on_disk, is_temp_name
from qtraderd.models.ensemble import EnsembleManager
from qtraderd.models.modelset import SERVING, ModelSet, file_stamp, load_spec
from qtraderd.models.onnx_model import LoadedModel
from qtraderd.runtime.dirwatch import watch_in_thread
from qtraderd.runtime.supervisor import StepActor, answer

log = logging.getLogger("qtraderd.predictor")

# ts, regime, the step's model outputs and this symbol's row in them (shared, not copied)
Pending = tuple[int, str, list[ModelOutput], int]


class _Symbol:
    """Everything the predictor keeps per symbol."""

    __slots__ = ("detector", "features", "labeler", "pending", "window")

    def __init__(self, barriers: Barriers) -> None:
        self.features = FeatureState()
        self.window = WindowState()
        self.labeler = Labeler(barriers)
        self.detector = RegimeDetector()
        self.pending: deque[Pending] = deque()

    def __getstate__(self) -> dict[str, Any]:
        """For checkpoints (every live step): each prediction awaiting its outcome as this
        symbol's row only, (model, version, role, p_long, p_short) per model, instead of
        the step's whole ModelOutput structs (pickling those was most of the state's cost)."""
        return {"features": self.features, "window": self.window, "labeler": self.labeler,
                "detector": self.detector,
                "pending": [(ts, regime, tuple((o.model, o.version, o.role, o.p_long[i],
                                                o.p_short[i]) for o in outputs))
                            for ts, regime, outputs, i in self.pending]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.features, self.window = state["features"], state["window"]
        self.labeler, self.detector = state["labeler"], state["detector"]
        self.pending = deque(
            (ts, regime, [ModelOutput(m, v, ts, (), (pl,), (ps,), role)
                          for m, v, role, pl, ps in rows], 0)
            for ts, regime, rows in state["pending"])


class PredictorActor(StepActor):
    name = "predictor"

    def __init__(self, barriers: Barriers, models: ModelSet | dict[str, LoadedModel],
                 inbox: trio.MemoryReceiveChannel[Step], outbox: trio.MemorySendChannel[Step],
                 models_dir: Path | None = None,
                 commands: trio.MemoryReceiveChannel[Command] | None = None,
                 scored_wanted: bool = True) -> None:
        """`scored_wanted`: fill `Step.scored` (for the learner downstream). Without a
        learner nobody reads it and nothing records it, so the daemon turns it off: the
        ensemble still observes every outcome."""
        super().__init__(inbox, outbox)
        self.scored_wanted = scored_wanted
        self._weights_json: dict[str, tuple[dict[str, float], str]] = {}  # per regime
        self.barriers = barriers
        self.models_dir = models_dir
        self.commands = commands
        self.models = ModelSet()
        self.ensemble = EnsembleManager([])
        self._staged: ModelSet | None = None
        self._refused: dict[tuple[str, str], tuple[float, float]] = {}
        self._requested: dict[str, str] = {}  # serving set last asked for by set_models
        self._symbols: dict[str, _Symbol] = {}
        self._last_regime: dict[str, str] = {}
        self._announced_oos: set[tuple[str, str]] = set()
        # derived from the served set, once per swap (swap() sets them)
        self._members: list[tuple[LoadedModel, str]] = []
        self._windows_needed = False
        self._ens_version = ""
        self.predictions = 0
        self.samples = 0
        self.outcomes = 0
        self.in_sample_skipped = 0
        self.warmed_up = 0  # history bars of the first step (Step.history)
        self.swaps = 0
        self.watch_events = 0
        self._pointer_gone: set[str] = set()  # served families whose pointer was deleted
        self.swap(models if isinstance(models, ModelSet) else ModelSet(dict(models)))

    # -- model changes -------------------------------------------------------------------
    def swap(self, models: ModelSet) -> None:
        """Serve a new model set from the next step on (never inside a step)."""
        old = self.models
        self.models = models
        self._members = models.members()
        self._windows_needed = models.needs_windows()
        self._ens_version = ",".join(f"{f}={m.version}"
                                     for f, m in sorted(models.serving.items()))
        before = {f: m.version for f, m in old.serving.items()}
        for family in self._follow_versions(before):
            m = models.serving[family]
            log.info("serving model %s/%s%s (abstains on its training data up to %s)",
                     family, m.version, f" (was {before[family]})" if family in before else "",
                     iso(m.data_end))
        old_shadow = {(m.family, m.version) for m in old.shadow}
        for m in models.shadow:
            if (m.family, m.version) not in old_shadow:
                log.info("shadow model %s/%s: predictions recorded, never traded",
                         m.family, m.version)
        if not models.serving:
            log.warning("no models loaded: predicting nothing (train with `qtraderd train`)")

    def _follow_versions(self, before: dict[str, str]) -> list[str]:
        """The ensemble's records follow the served versions: a family no longer served is
        dropped, a new version's record starts afresh. Returns the families (re)started."""
        for family in set(before) - set(self.models.serving):
            self.ensemble.remove_model(family)
        started = [f for f, m in self.models.serving.items() if before.get(f) != m.version]
        for family in started:
            self.ensemble.add_model(family)
        return started

    def stage(self, models: ModelSet) -> None:
        self._staged = models

    def reload_from_disk(self) -> ModelSet | None:
        """Champion pointers changed on disk (by hand, or by a deploy): the new set, if any."""
        assert self.models_dir is not None
        current = self._staged or self.models
        wanted, errors = champions_on_disk(self.models_dir)
        for e in errors:
            log.error("model rejected: %s", e)
        self._note_deleted_pointers(current, wanted)
        changed = {}
        for family, version in wanted.items():
            m = current.serving.get(family)
            if m is not None and m.version == version:
                continue
            requested = self._requested.get(family)
            if requested == version:
                continue  # a deploy's set_models loads it, with the shadows it asked for
            if requested is not None:  # the pointer moved on since: a hand edit counts again
                self._requested.pop(family, None)
            if self._refused.get((family, version)) == file_stamp(self.models_dir, family,
                                                                   version):
                continue  # already refused this exact file
            changed[family] = version
        if not changed:
            return None
        serving = {f: m.version for f, m in current.serving.items()} | changed
        shadow = [(m.family, m.version) for m in current.shadow]
        new, errors = load_spec(self.models_dir, serving, shadow, current)
        for family, version in changed.items():
            if family not in new.serving or new.serving[family].version != version:
                self._refused[(family, version)] = file_stamp(self.models_dir, family, version)
        for e in errors:
            log.error("model rejected: %s (still serving what was loaded before)", e)
        return new if new.spec() != current.spec() else None

    def _note_deleted_pointers(self, current: ModelSet, wanted: dict[str, str]) -> None:
        """One line when a served family's champion pointer disappears (the model keeps
        serving; the start-up check rewrites the pointer from the registry)."""
        gone = {f for f in current.serving if f not in wanted
                and not (self.models_dir / f / "champion").exists()}  # type: ignore[operator]
        for family in sorted(gone - self._pointer_gone):
            log.warning("champion pointer deleted: %s (%s keeps serving; the start-up check "
                        "rewrites the pointer from the registry)", family,
                        current.serving[family].version)
        self._pointer_gone = gone

    # -- the actor -------------------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.models_dir is not None:
                nursery.start_soon(self._watch)
            if self.commands is not None:
                nursery.start_soon(self._command_loop)
            try:
                await super().run()
            finally:
                nursery.cancel_scope.cancel()

    async def _command_loop(self) -> None:
        assert self.commands is not None
        async for cmd in self.commands:
            result: dict[str, Any]
            if cmd.name == "set_models" and self.models_dir is not None:
                serving = dict(cmd.args.get("serving", {}))
                shadow = [tuple(x) for x in cmd.args.get("shadow", [])]
                # the learner wrote these pointers too: the watcher must not load them
                # again from the old shadow list and stage that set over this one
                self._requested = serving
                current = self._staged or self.models
                new, errors = await trio.to_thread.run_sync(
                    load_spec, self.models_dir, serving, shadow, current)
                for e in errors:
                    log.error("model rejected: %s", e)
                self.stage(new)
                result = {"spec": new.spec(), "errors": errors}
            else:
                result = {"error": f"predictor has no command {cmd.name!r}"}
            answer(cmd, result)

    async def _watch(self) -> None:
        """Watch the models directory (qtraderd.runtime.dirwatch: a worker thread).

        The slow part — loading and checking a new model — runs in the watcher's thread
        (`reload_from_disk`); only the finished model set is handed to the event loop,
        where it is staged and swapped in before the next step.
        """
        assert self.models_dir is not None
        self.models_dir.mkdir(parents=True, exist_ok=True)

        def stage(models: ModelSet | None) -> None:
            self.watch_events += 1
            if models is not None:
                self._staged = models

        # step 20 ms: a deploy's pointer rename is one atomic event, nothing to wait for;
        # the swap delay is this step plus the load (benchmarks/learning.py measures it)
        await watch_in_thread(self.models_dir, watch_filter=_not_temp,
                              process=lambda _changes: self.reload_from_disk(), deliver=stage,
                              step_ms=20)

    # -- crash-only state ----------------------------------------------------------------
    _STATE = ("_symbols", "ensemble", "_last_regime", "_announced_oos", "predictions",
              "outcomes", "in_sample_skipped")

    def export_state(self) -> dict[str, Any]:
        """Features, candle windows, labelers, regimes, outcomes awaited and the ensemble's
        record — not the models: those come back from the champion pointers."""
        return {**take(self, self._STATE),
                "served": {f: m.version for f, m in self.models.serving.items()}}

    def restore_state(self, state: dict[str, Any]) -> None:
        put(self, state, self._STATE)
        self._follow_versions(state["served"])  # champions changed while we were down

    # -- one step ----------------------------------------------------------------------
    def handle(self, step: Step) -> Step:
        if self._staged is not None:
            staged, self._staged = self._staged, None
            self.swap(staged)
            self.swaps += 1
        if step.history:
            self._warm_up(step.history)
        windows_needed = self._windows_needed
        samples: list[Sample] = []
        outcomes: list[Outcome] = []
        scored: list[Scored] = []
        rows: list[tuple[float, ...]] = []
        raws: list[np.ndarray] = []
        states: list[_Symbol] = []
        for bar in step.bars:
            sym = bar.symbol
            st = self._symbols.get(sym)
            if st is None:
                st = self._symbols[sym] = _Symbol(self.barriers)
            row = st.features.update(bar.open_time, bar.open, bar.high, bar.low, bar.close,
                                     bar.volume)
            st.window.update(bar.open, bar.high, bar.low, bar.close, bar.volume)
            for ts, label, resolved, rl, rs in st.labeler.update(
                    bar.open_time, bar.open, bar.high, bar.low, bar.close,
                    track=row is not None):
                outcomes.append(Outcome(sym, ts, label, resolved, rl, rs))
                self._score(sym, st, ts, label, rl, rs, resolved, scored)
            if row is None:
                continue
            regime = st.detector.update(row)
            self._last_regime[sym] = regime
            samples.append(Sample(sym, bar.open_time, row, regime))
            rows.append(row)
            states.append(st)
            if windows_needed:
                raw = st.window.raw()
                assert raw is not None  # 64-bar windows are ready long before features
                raws.append(raw)
        self.outcomes += len(outcomes)
        self.samples += len(samples)
        outputs: list[ModelOutput] = []
        predictions: list[Prediction] = []
        if rows:
            outputs, predictions = self._predict(step.ts, samples, rows, raws, states)
        return replace(
            step,
            samples=tuple(samples),
            outcomes=tuple(outcomes),
            scored=tuple(scored),
            model_outputs=tuple(outputs),
            predictions=tuple(predictions),
            global_regime=global_regime(s.regime for s in samples),
        )

    def _warm_up(self, history: tuple[Bar, ...]) -> None:
        """Features, candle windows, labelers and regimes through the stored bars before
        a fresh run's first step: no samples, predictions or outcomes come of them (the
        run did not exist then), but the first step is predicted as a replay that had
        passed through those bars would predict it."""
        for bar in history:
            st = self._symbols.get(bar.symbol)
            if st is None:
                st = self._symbols[bar.symbol] = _Symbol(self.barriers)
            row = st.features.update(bar.open_time, bar.open, bar.high, bar.low, bar.close,
                                     bar.volume)
            st.window.update(bar.open, bar.high, bar.low, bar.close, bar.volume)
            st.labeler.update(bar.open_time, bar.open, bar.high, bar.low, bar.close,
                              track=False)
            if row is not None:
                self._last_regime[bar.symbol] = st.detector.update(row)
        self.warmed_up += len(history)

    def _score(self, sym: str, st: _Symbol, ts: int, label: int, rl: float, rs: float,
               resolved: int, out: list[Scored]) -> None:
        pending = st.pending
        while pending and pending[0][0] < ts:
            pending.popleft()
        if not pending or pending[0][0] != ts:
            return
        _, regime, outputs, i = pending.popleft()
        settled = []  # every serving model's prediction of the bar, settled at once
        # (a family no longer served has left the ensemble's record: not settled there)
        served = self.models.serving
        if self.scored_wanted:
            for o in outputs:
                pl, ps = o.p_long[i], o.p_short[i]
                out.append(Scored(o.model, o.version, o.role, sym, ts, regime, pl, ps, label,
                                  rl, rs, resolved))
                if o.role == SERVING and o.model in served:
                    settled.append((o.model, 1.0 - pl - ps, pl, ps))
        else:  # the ensemble's record only (runs per outcome)
            for o in outputs:
                if o.role == SERVING and o.model in served:
                    pl, ps = o.p_long[i], o.p_short[i]
                    settled.append((o.model, 1.0 - pl - ps, pl, ps))
        if settled:
            self.ensemble.observe_outcome(regime, label, settled)

    def _predict(self, ts: int, samples: list[Sample], rows: list[tuple[float, ...]],
                 raws: list[np.ndarray], states: list[_Symbol]
                 ) -> tuple[list[ModelOutput], list[Prediction]]:
        members = [(m, role) for m, role in self._members if ts > m.data_end]
        if len(members) < len(self._members):
            self.in_sample_skipped += len(samples)
        if not members:
            return [], []
        x_rows = x_win = None
        symbols = tuple(s.symbol for s in samples)
        outputs: list[ModelOutput] = []
        serving_probs: dict[str, np.ndarray] = {}
        for m, role in members:
            if (m.family, m.version) not in self._announced_oos:
                self._announced_oos.add((m.family, m.version))
                log.info("model %s/%s out of sample from %s: predictions start",
                         m.family, m.version, iso(ts))
            if m.input_kind == "window":
                if x_win is None:
                    x_win = normalize_windows(raws)
                probs = m.predict(x_win)
            else:
                if x_rows is None:
                    x_rows = np.asarray(rows, dtype=np.float32)
                probs = m.predict(x_rows)
            if role == SERVING:
                serving_probs[m.family] = probs
            outputs.append(ModelOutput(m.family, m.version, ts, symbols,
                                       tuple(probs[:, 1].tolist()), tuple(probs[:, 2].tolist()),
                                       role))
        for i, s in enumerate(samples):
            states[i].pending.append((ts, s.regime, outputs, i))
        if not serving_probs:
            return outputs, []
        version = self._ens_version
        serving = [o for o in outputs if o.role == SERVING]
        predictions: list[Prediction] = []
        by_regime: dict[str, tuple[dict[str, float], str]] = {}
        last_json = self._weights_json
        for i, s in enumerate(samples):
            if s.regime not in by_regime:
                w = self.ensemble.weights(s.regime, serving_probs)
                known = last_json.get(s.regime)
                if known is None or known[0] is not w:  # the ensemble's cache moved on
                    known = last_json[s.regime] = (w, _weights_json(w))
                by_regime[s.regime] = known
            w, w_json = by_regime[s.regime]
            pl = ps = 0.0  # the members' Python floats, in member order (no numpy scalars)
            for o in serving:
                wf = w[o.model]
                pl += wf * o.p_long[i]
                ps += wf * o.p_short[i]
            predictions.append(Prediction(s.symbol, ts, "ensemble", version, pl, ps, w_json))
        self.predictions += len(samples)
        return outputs, predictions

    def status(self) -> dict[str, Any]:
        return {
            "models": {f: m.version for f, m in self.models.serving.items()},
            "shadow": [f"{m.family}/{m.version}" for m in self.models.shadow],
            "symbols": len(self._symbols),
            "predictions": self.predictions,
            "samples": self.samples,
            "outcomes": self.outcomes,
            "in_sample_skipped": self.in_sample_skipped,
            "warmed_up": self.warmed_up,
            "swaps": self.swaps,
            "regimes": dict(self._last_regime),
        }

    def publish(self) -> dict[str, Any]:
        """Adds the served set (`ctl models`) and the predictions still waiting for their
        outcome in memory (`ctl learning`)."""
        return {**self.status(), "served": self.models.describe(),
                "awaiting_outcome": sum(len(st.pending) for st in self._symbols.values())}


_JSON_KEYS: dict[str, str] = {}
_JSON_TEXTS: dict[tuple[str | float, ...], str] = {}  # by names and rounded weights


def _weights_json(w: dict[str, float]) -> str:
    """json.dumps({f: round(v, 4)}, separators=(",", ":")) for finite weights, without
    the encoder's set-up per call (once per regime per step): floats are written with
    repr, as json does, and the quoted keys are made once. Rounded to 4 digits the
    same weights recur bar after bar, so each text is made once (a bounded table)."""
    rounded = tuple(round(v, 4) for v in w.values())
    key = (*w, *rounded)
    text = _JSON_TEXTS.get(key)
    if text is not None:
        return text
    parts = []
    for f, v in w.items():
        quoted = _JSON_KEYS.get(f)
        if quoted is None:
            quoted = _JSON_KEYS[f] = json.dumps(f) + ":"
        parts.append(quoted + repr(round(v, 4)))
    text = "{" + ",".join(parts) + "}"
    if 0.0 in rounded:  # 0.0 == -0.0 as keys, but their texts differ: not kept
        return text
    if len(_JSON_TEXTS) >= 65_536:
        _JSON_TEXTS.clear()
    _JSON_TEXTS[key] = text
    return text


def _not_temp(_change: object, path: str) -> bool:
    return not is_temp_name(os.path.basename(path))
