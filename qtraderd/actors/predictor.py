"""Predictor actor: features, regimes, model probabilities and outcomes for every bar.

For each closed bar it updates the symbol's incremental features (the same definitions
the learner trains on), the regime detector and the triple-barrier labeler (which turns
earlier samples into labelled outcomes once their window has closed). Then it runs each
served ONNX model once on the whole step (one row per symbol) and averages the models
into the ensemble. Every prediction row names the exact model version.

Honesty: a model abstains on bars its training could have seen (up to `data_end` in its
metadata), so a replay over the training period never trades on in-sample predictions.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import replace
from typing import Any

import numpy as np
import trio

from qtraderd.clock import iso
from qtraderd.features import FeatureState
from qtraderd.labels import Barriers, Labeler
from qtraderd.messages import Outcome, Prediction, Sample, Step
from qtraderd.models.onnx_model import LoadedModel
from qtraderd.regime import RegimeDetector, global_regime
from qtraderd.supervisor import StepActor

log = logging.getLogger("qtraderd.predictor")


def pack_features(row: tuple[float, ...]) -> bytes:
    """Feature rows are stored as float32 blobs (what the models consume)."""
    return array("f", row).tobytes()


class PredictorActor(StepActor):
    name = "predictor"

    def __init__(self, barriers: Barriers, models: dict[str, LoadedModel],
                 inbox: trio.MemoryReceiveChannel[Step],
                 outbox: trio.MemorySendChannel[Step]) -> None:
        super().__init__(inbox, outbox)
        self.barriers = barriers
        self.models: dict[str, LoadedModel] = {}
        self._features: dict[str, FeatureState] = {}
        self._labelers: dict[str, Labeler] = {}
        self._regimes: dict[str, RegimeDetector] = {}
        self._last_regime: dict[str, str] = {}
        self.predictions = 0
        self.outcomes = 0
        self.in_sample_skipped = 0
        self._announced_oos: set[str] = set()
        self.swap(models)

    def swap(self, models: dict[str, LoadedModel]) -> None:
        """Serve a new model set from the next step on (never inside a step)."""
        self.models = dict(sorted(models.items()))
        if not self.models:
            log.warning("no models loaded: predicting nothing (train with `qtraderd train`)")
        for m in self.models.values():
            log.info("serving model %s/%s (abstains on its training data up to %s)",
                     m.family, m.version, iso(m.data_end))

    def handle(self, step: Step) -> Step:
        samples: list[Sample] = []
        outcomes: list[Outcome] = []
        rows: list[tuple[float, ...]] = []
        for bar in step.bars:
            sym = bar.symbol
            fs = self._features.get(sym)
            if fs is None:
                fs = self._features[sym] = FeatureState()
                self._labelers[sym] = Labeler(self.barriers)
                self._regimes[sym] = RegimeDetector()
            row = fs.update(bar.open_time, bar.open, bar.high, bar.low, bar.close, bar.volume)
            for ts, label, resolved, rl, rs in self._labelers[sym].update(
                    bar.open_time, bar.open, bar.high, bar.low, bar.close,
                    track=row is not None):
                outcomes.append(Outcome(sym, ts, label, resolved, rl, rs))
            if row is None:
                continue
            regime = self._regimes[sym].update(row)
            self._last_regime[sym] = regime
            samples.append(Sample(sym, bar.open_time, row, regime))
            rows.append(row)
        self.outcomes += len(outcomes)
        predictions = self._predict(step.ts, samples, rows) if rows else []
        return replace(
            step,
            samples=tuple(samples),
            outcomes=tuple(outcomes),
            predictions=tuple(predictions),
            global_regime=global_regime(s.regime for s in samples),
        )

    def _predict(self, ts: int, samples: list[Sample], rows: list[tuple[float, ...]]
                 ) -> list[Prediction]:
        active = [m for m in self.models.values() if ts > m.data_end]
        if len(active) < len(self.models):
            self.in_sample_skipped += len(samples)
        if not active:
            return []
        for m in active:
            if m.family not in self._announced_oos:
                self._announced_oos.add(m.family)
                log.info("model %s/%s out of sample from %s: predictions start",
                         m.family, m.version, iso(ts))
        x = np.asarray(rows, dtype=np.float32)
        outputs = [(m, m.predict(x).tolist()) for m in active]
        out: list[Prediction] = []
        n_models = len(outputs)
        ens_version = ",".join(f"{m.family}={m.version}" for m, _ in outputs)
        for i, s in enumerate(samples):
            pl = ps = 0.0
            for m, probs in outputs:
                p = probs[i]
                out.append(Prediction(s.symbol, s.ts, m.family, m.version, p[1], p[2]))
                pl += p[1]
                ps += p[2]
            out.append(Prediction(s.symbol, s.ts, "ensemble", ens_version,
                                  pl / n_models, ps / n_models))
        self.predictions += len(samples)
        return out

    def status(self) -> dict[str, Any]:
        return {
            "models": {f: m.version for f, m in self.models.items()},
            "symbols": len(self._features),
            "predictions": self.predictions,
            "outcomes": self.outcomes,
            "in_sample_skipped": self.in_sample_skipped,
            "regimes": dict(self._last_regime),
        }
