"""Predictor actor: features, regimes, model probabilities and outcomes for every bar.

For each closed bar it updates the symbol's incremental features (the same definitions
the learner trains on), the regime detector and the triple-barrier labeler (which turns
earlier samples into labelled outcomes once their window has closed). Then it runs each
served ONNX model once on the whole step (one row per symbol) and averages the models
into the ensemble. Every prediction row names the exact model version.

Honesty: a model abstains on bars its training could have seen (up to `data_end` in its
metadata), so a replay over the training period never trades on in-sample predictions.

Models are swapped only between steps. A watcher on the models directory (watchfiles)
re-reads the champions when files change; a file that fails any check (half-written,
corrupt, wrong shape, parity) is refused with a "model rejected" line and the model
already in memory keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import trio
import watchfiles

from qtraderd.clock import iso
from qtraderd.features import FeatureState
from qtraderd.labels import Barriers, Labeler
from qtraderd.messages import ModelOutput, Outcome, Prediction, Sample, Step, replace
from qtraderd.models.artifacts import (
    ArtifactError,
    families,
    is_temp_name,
    list_versions,
    meta_path,
    onnx_path,
    read_champion,
)
from qtraderd.models.onnx_model import LoadedModel, load_model
from qtraderd.regime import RegimeDetector, global_regime
from qtraderd.supervisor import StepActor

log = logging.getLogger("qtraderd.predictor")


class PredictorActor(StepActor):
    name = "predictor"

    def __init__(self, barriers: Barriers, models: dict[str, LoadedModel],
                 inbox: trio.MemoryReceiveChannel[Step],
                 outbox: trio.MemorySendChannel[Step], models_dir: Path | None = None) -> None:
        super().__init__(inbox, outbox)
        self.barriers = barriers
        self.models_dir = models_dir
        self._staged: dict[str, LoadedModel] | None = None
        self._refused: dict[tuple[str, str], tuple[float, float]] = {}
        self.swaps = 0
        self._ens_key: tuple[str, ...] = ()
        self._ens_version = ""
        self.watch_events = 0
        self.models: dict[str, LoadedModel] = {}
        # per symbol: incremental features, outcome labeler, regime detector
        self._symbols: dict[str, tuple[FeatureState, Labeler, RegimeDetector]] = {}
        self._last_regime: dict[str, str] = {}
        self.predictions = 0
        self.outcomes = 0
        self.in_sample_skipped = 0
        self._announced_oos: set[str] = set()
        self.swap(models)

    def swap(self, models: dict[str, LoadedModel]) -> None:
        """Serve a new model set from the next step on (never inside a step)."""
        old = getattr(self, "models", {})
        self.models = dict(sorted(models.items()))
        if not self.models:
            log.warning("no models loaded: predicting nothing (train with `qtraderd train`)")
        for m in self.models.values():
            if m.family in old and old[m.family].version == m.version:
                continue
            log.info("serving model %s/%s (abstains on its training data up to %s)",
                     m.family, m.version, iso(m.data_end))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.models_dir is not None:
                nursery.start_soon(self._watch)
            try:
                await super().run()
            finally:
                nursery.cancel_scope.cancel()

    async def _watch(self) -> None:
        """Watch the models directory from a worker thread (watchfiles' Rust watcher).

        The synchronous `watchfiles.watch` runs in a Trio worker thread and does the slow
        part (loading and checking a new model) there too; only the finished model set is
        handed to the event loop. (`watchfiles.awatch` goes through anyio's thread bridge,
        which cost ~10 % of replay throughput here.)
        """
        assert self.models_dir is not None
        models_dir = self.models_dir
        models_dir.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()
        token = trio.lowlevel.current_trio_token()

        def stage(models: dict[str, LoadedModel] | None) -> None:
            self.watch_events += 1
            if models is not None:
                self._staged = models

        def worker() -> None:
            for _changes in watchfiles.watch(
                    models_dir, watch_filter=_not_temp, debounce=50, step=50,
                    stop_event=stop, raise_interrupt=False, rust_timeout=0):
                staged = self.reload()
                try:
                    trio.from_thread.run_sync(stage, staged, trio_token=token)
                except trio.RunFinishedError:
                    return

        try:
            await trio.to_thread.run_sync(worker, abandon_on_cancel=True)
        finally:
            stop.set()

    def reload(self) -> dict[str, LoadedModel] | None:
        """Load changed champions from disk; None if nothing new was accepted."""
        assert self.models_dir is not None
        current = self._staged or self.models
        new = dict(current)
        changed = False
        for family in families(self.models_dir):
            try:
                version = read_champion(self.models_dir, family)
            except ArtifactError as exc:
                log.error("model rejected: %s champion pointer: %s", family, exc)
                continue
            if version is None:
                versions = list_versions(self.models_dir, family)
                version = versions[-1] if versions else None
            if version is None or (family in current and current[family].version == version):
                continue
            stamp = _mtimes(self.models_dir, family, version)
            if self._refused.get((family, version)) == stamp:
                continue  # already refused this exact file
            try:
                new[family] = load_model(self.models_dir, family, version)
            except ArtifactError as exc:
                self._refused[(family, version)] = stamp
                old = current.get(family)
                log.error("model rejected: %s (still serving %s)", exc,
                          f"{family}/{old.version}" if old else "nothing for this family")
                continue
            changed = True
        return new if changed else None

    def handle(self, step: Step) -> Step:
        if self._staged is not None:
            staged, self._staged = self._staged, None
            self.swap(staged)
            self.swaps += 1
        samples: list[Sample] = []
        outcomes: list[Outcome] = []
        rows: list[tuple[float, ...]] = []
        for bar in step.bars:
            sym = bar.symbol
            state = self._symbols.get(sym)
            if state is None:
                state = self._symbols[sym] = (FeatureState(), Labeler(self.barriers),
                                              RegimeDetector())
            fs, labeler, detector = state
            row = fs.update(bar.open_time, bar.open, bar.high, bar.low, bar.close, bar.volume)
            for ts, label, resolved, rl, rs in labeler.update(
                    bar.open_time, bar.open, bar.high, bar.low, bar.close,
                    track=row is not None):
                outcomes.append(Outcome(sym, ts, label, resolved, rl, rs))
            if row is None:
                continue
            regime = detector.update(row)
            self._last_regime[sym] = regime
            samples.append(Sample(sym, bar.open_time, row, regime))
            rows.append(row)
        self.outcomes += len(outcomes)
        outputs, predictions = self._predict(step.ts, samples, rows) if rows else ([], [])
        return replace(
            step,
            samples=tuple(samples),
            outcomes=tuple(outcomes),
            model_outputs=tuple(outputs),
            predictions=tuple(predictions),
            global_regime=global_regime(s.regime for s in samples),
        )

    def _predict(self, ts: int, samples: list[Sample], rows: list[tuple[float, ...]]
                 ) -> tuple[list[ModelOutput], list[Prediction]]:
        active = [m for m in self.models.values() if ts > m.data_end]
        if len(active) < len(self.models):
            self.in_sample_skipped += len(samples)
        if not active:
            return [], []
        for m in active:
            if m.family not in self._announced_oos:
                self._announced_oos.add(m.family)
                log.info("model %s/%s out of sample from %s: predictions start",
                         m.family, m.version, iso(ts))
        x = np.asarray(rows, dtype=np.float32)
        symbols = tuple(s.symbol for s in samples)
        outputs: list[ModelOutput] = []
        total = None
        for m in active:
            probs = m.predict(x)
            total = probs if total is None else total + probs
            outputs.append(ModelOutput(m.family, m.version, ts, symbols,
                                       tuple(probs[:, 1].tolist()), tuple(probs[:, 2].tolist())))
        assert total is not None
        mean = (total / len(active)).tolist()
        version = self._ensemble_version(active)
        self.predictions += len(samples)
        return outputs, [Prediction(sym, ts, "ensemble", version, p[1], p[2])
                         for sym, p in zip(symbols, mean, strict=True)]

    def _ensemble_version(self, active: list[LoadedModel]) -> str:
        key = tuple(m.version for m in active)
        if key != self._ens_key:
            self._ens_key = key
            self._ens_version = ",".join(f"{m.family}={m.version}" for m in active)
        return self._ens_version

    def status(self) -> dict[str, Any]:
        return {
            "models": {f: m.version for f, m in self.models.items()},
            "symbols": len(self._symbols),
            "predictions": self.predictions,
            "outcomes": self.outcomes,
            "in_sample_skipped": self.in_sample_skipped,
            "swaps": self.swaps,
            "regimes": dict(self._last_regime),
        }


def _not_temp(_change: object, path: str) -> bool:
    return not is_temp_name(os.path.basename(path))


def _mtimes(models_dir: Path, family: str, version: str) -> tuple[float, float]:
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return -1.0

    return mtime(onnx_path(models_dir, family, version)), mtime(meta_path(models_dir, family,
                                                                            version))
