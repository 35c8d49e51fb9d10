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

import contextlib
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
from qtraderd.models.ensemble import EnsembleManager, weights_json
from qtraderd.models.inference_thread import InferenceThread
from qtraderd.models.modelset import SERVING, ModelSet, file_stamp, load_spec
from qtraderd.models.onnx_model import LoadedModel
from qtraderd.runtime.dirwatch import watch_in_thread
from qtraderd.runtime.supervisor import StepActor, answer

log = logging.getLogger("qtraderd.predictor")

# ts, regime, the step's model outputs and this symbol's row in them (shared, not copied)
Pending = tuple[int, str, list[ModelOutput], int]
Members = list[tuple[LoadedModel, str]]


class _Ahead:
    """The next step's features, computed while the current step was still going down the
    chain, and its models started on the inference thread (PredictorActor look-ahead)."""

    __slots__ = ("members", "raws", "rows", "seq", "started", "x_rows", "x_win")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.rows: list[tuple[float, ...] | None] = []  # per bar of the step
        self.raws: list[np.ndarray] = []
        self.members: Members = []
        self.x_rows: np.ndarray | None = None
        self.x_win: np.ndarray | None = None
        self.started = False


def _run_members(members: Members, x_rows: np.ndarray | None,
                 x_win: np.ndarray | None) -> list[np.ndarray]:
    """Every member's probabilities for one step (on the inference thread)."""
    return [m.predict(x_win if m.input_kind == "window" else x_rows) for m, _ in members]


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
                 scored_wanted: bool = True,
                 ahead: trio.MemoryReceiveChannel[Step] | None = None) -> None:
        """`scored_wanted`: fill `Step.scored` (for the learner downstream). Without a
        learner nobody reads it and nothing records it, so the daemon turns it off: the
        ensemble still observes every outcome.

        `ahead` (a replay): the feed's steps as it hands them to execution. When step t is
        done here and step t+1 is already out, its features are computed and its models
        started on an inference thread, so ONNX Runtime works on t+1 while t goes through
        sizer, risk, execution and the recorder. Features are updated once per bar either
        way and the models are a pure function of them: the results are the same bits.
        Never before a checkpoint (`Step.seal_follows`): the state then saved is the
        state after step t, not a step further."""
        super().__init__(inbox, outbox)
        self.ahead = ahead
        self._next: _Ahead | None = None
        self._worker: InferenceThread | None = None
        self.looked_ahead = 0
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
                if self._next is not None:  # kept (its features are applied); a restart
                    with contextlib.suppress(Exception):  # runs its models again
                        self._collect(self._next)
                self.close_worker()

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
        if self._next is not None:  # features a step ahead: not a state to resume from
            raise RuntimeError(f"predictor state asked for after looking ahead at step "
                               f"{self._next.seq} (execution must set Step.seal_follows)")
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
        pre, self._next = self._next, None
        if pre is not None and pre.seq != step.seq:  # cannot happen: seal_follows
            raise RuntimeError(f"predictor looked ahead at step {pre.seq} and was handed "
                               f"step {step.seq}")
        windows_needed = self._windows_needed
        samples: list[Sample] = []
        outcomes: list[Outcome] = []
        scored: list[Scored] = []
        rows: list[tuple[float, ...]] = []
        raws: list[np.ndarray] = []
        states: list[_Symbol] = []
        for k, bar in enumerate(step.bars):
            sym = bar.symbol
            st = self._symbols.get(sym)
            if st is None:
                st = self._symbols[sym] = _Symbol(self.barriers)
            if pre is None:
                row = st.features.update(bar.open_time, bar.open, bar.high, bar.low,
                                         bar.close, bar.volume)
                st.window.update(bar.open, bar.high, bar.low, bar.close, bar.volume)
            else:  # updated by the look-ahead
                row = pre.rows[k]
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
            outputs, predictions = self._predict(step.ts, samples, rows, raws, states, pre)
        elif pre is not None and pre.started:
            self._collect(pre)
        if self.ahead is not None and not step.seal_follows:
            self._look_ahead(step.seq + 1)
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

    def _members_at(self, ts: int) -> Members:
        return [(m, role) for m, role in self._members if ts > m.data_end]

    def _predict(self, ts: int, samples: list[Sample], rows: list[tuple[float, ...]],
                 raws: list[np.ndarray], states: list[_Symbol], pre: _Ahead | None = None
                 ) -> tuple[list[ModelOutput], list[Prediction]]:
        members = self._members_at(ts)
        if len(members) < len(self._members):
            self.in_sample_skipped += len(samples)
        ran = self._collect(pre) if pre is not None else None
        if ran is not None and not _same(pre.members, members):  # type: ignore[union-attr]
            ran = None  # models swapped since the look-ahead started: run them again
        if not members:
            return [], []
        x_rows = x_win = None
        symbols = tuple(s.symbol for s in samples)
        outputs: list[ModelOutput] = []
        serving_probs: dict[str, np.ndarray] = {}
        for j, (m, role) in enumerate(members):
            if (m.family, m.version) not in self._announced_oos:
                self._announced_oos.add((m.family, m.version))
                log.info("model %s/%s out of sample from %s: predictions start",
                         m.family, m.version, iso(ts))
            if ran is not None:
                probs = ran[j]
            elif m.input_kind == "window":
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
                    known = last_json[s.regime] = (w, weights_json(w))
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

    # -- look-ahead (a replay) --------------------------------------------------------
    def _look_ahead(self, seq: int) -> None:
        """If step `seq` is already out of the feed: its features now, its models started
        on the inference thread (see __init__)."""
        assert self.ahead is not None
        nxt = None
        while True:
            try:
                got = self.ahead.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if got.seq == seq:
                nxt = got
                break
        if nxt is None or nxt.history or nxt.seal:
            return
        pre = _Ahead(seq)
        windows = self._windows_needed
        feats: list[tuple[float, ...]] = []
        for bar in nxt.bars:
            st = self._symbols.get(bar.symbol)
            if st is None:
                st = self._symbols[bar.symbol] = _Symbol(self.barriers)
            row = st.features.update(bar.open_time, bar.open, bar.high, bar.low, bar.close,
                                     bar.volume)
            st.window.update(bar.open, bar.high, bar.low, bar.close, bar.volume)
            pre.rows.append(row)
            if row is not None:
                feats.append(row)
                if windows:
                    pre.raws.append(st.window.raw())  # type: ignore[arg-type]
        self._next = pre
        self.looked_ahead += 1
        pre.members = self._members_at(nxt.ts)
        if not feats or not pre.members:
            return
        pre.x_rows = np.asarray(feats, dtype=np.float32)
        if windows:
            pre.x_win = normalize_windows(pre.raws)
        if self._worker is None:
            self._worker = InferenceThread("predictor-onnx")
        if self._worker.busy:  # a step that failed midway left its job uncollected
            with contextlib.suppress(Exception):
                self._worker.result()
        self._worker.submit(lambda: _run_members(pre.members, pre.x_rows, pre.x_win))
        pre.started = True

    def _collect(self, pre: _Ahead) -> list[np.ndarray] | None:
        if not pre.started:
            return None
        pre.started = False
        assert self._worker is not None
        return self._worker.result()

    def close_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

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
            "looked_ahead": self.looked_ahead,
            "regimes": dict(self._last_regime),
        }

    def publish(self) -> dict[str, Any]:
        """Adds the served set (`ctl models`) and the predictions still waiting for their
        outcome in memory (`ctl learning`)."""
        return {**self.status(), "served": self.models.describe(),
                "awaiting_outcome": sum(len(st.pending) for st in self._symbols.values())}


def _not_temp(_change: object, path: str) -> bool:
    return not is_temp_name(os.path.basename(path))


def _same(a: Members, b: Members) -> bool:
    return len(a) == len(b) and all(x is y and r == s
                                    for (x, r), (y, s) in zip(a, b, strict=True))
