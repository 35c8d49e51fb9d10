"""Serving models with onnxruntime alone (the daemon never imports torch/xgboost/lightgbm).

A model file is only served after it passes every check here: its sha256 matches the
metadata, it was built for this feature list, its input and output shapes fit, and the
probe rows stored at export give the same probabilities (max abs diff <= 1e-5). Anything
else raises ArtifactError with the reason, and the caller keeps what it had.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qtraderd.features.spec import FEATURE_NAMES, FEATURES_VERSION, N_FEATURES
from qtraderd.features.windows import CHANNELS, WINDOW
from qtraderd.models.artifacts import (
    ArtifactError,
    ModelMeta,
    champions_on_disk,
    read_artifact,
)

log = logging.getLogger("qtraderd.models")

PARITY_TOL = 1e-5


@dataclass
class LoadedModel:
    family: str
    version: str
    meta: ModelMeta
    session: ort.InferenceSession
    input_name: str
    output_name: str
    data_end: int  # last bar its training looked at; it abstains on bars up to here
    input_kind: str = "features"  # "features" [n, N_FEATURES] or "window" [n, WINDOW, CH]

    def __post_init__(self) -> None:
        # The predictor calls every model once per step: go straight to the compiled
        # session with the output list and run options made once (InferenceSession.run
        # re-validates and rebuilds both on every call, ~10 % of a tree model's call).
        self._run = self.session._sess.run
        self._outputs = [self.output_name]
        self._run_options = ort.RunOptions()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities [n, 3] (none, long, short) for float32 inputs of its input kind."""
        return self._run(self._outputs, {self.input_name: x}, self._run_options)[0]


def _session(data: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # batch sizes are tiny; threads only add latency
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False  # tiny inputs: an arena only holds on to memory
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one op at a time: no handoffs
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no thread pool to spin: a spinning worker would burn the core the writer uses
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def load_model(models_dir: Path, family: str, version: str) -> LoadedModel:
    meta, data = read_artifact(models_dir, family, version)
    where = f"{family}/{version}"
    if list(meta.features) != list(FEATURE_NAMES) or meta.features_version != FEATURES_VERSION:
        raise ArtifactError(
            f"{where}: built for features v{meta.features_version} {meta.features[:3]}..., "
            f"this qtraderd computes v{FEATURES_VERSION} ({N_FEATURES} features)"
        )
    try:
        sess = _session(data)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ArtifactError(f"{where}: onnxruntime cannot load it ({exc})") from exc
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = {o.name: o for o in sess.get_outputs()}
    if meta.input_name not in inputs or meta.output_name not in outputs:
        raise ArtifactError(
            f"{where}: expected input {meta.input_name!r} and output {meta.output_name!r}, "
            f"file has inputs {sorted(inputs)} outputs {sorted(outputs)}"
        )
    shape = inputs[meta.input_name].shape
    expected = {"features": [N_FEATURES], "window": [WINDOW, CHANNELS]}.get(meta.input_kind)
    if expected is None:
        raise ArtifactError(f"{where}: unknown input kind {meta.input_kind!r}")
    if len(shape) != 1 + len(expected) or list(shape[1:]) != expected:
        raise ArtifactError(f"{where}: input shape {shape}, expected [n, "
                            f"{', '.join(map(str, expected))}] for {meta.input_kind} input")
    model = LoadedModel(family, version, meta, sess, meta.input_name, meta.output_name,
                        meta.data_end or 0, meta.input_kind)
    _check_probes(model)
    return model


def _check_probes(model: LoadedModel) -> None:
    where = f"{model.family}/{model.version}"
    meta = model.meta
    if not meta.probe_inputs:
        raise ArtifactError(f"{where}: metadata has no parity probe rows")
    try:  # ragged or non-numeric rows in a hand-edited file
        x = np.asarray(meta.probe_inputs, dtype=np.float32)
        want = np.asarray(meta.probe_outputs, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{where}: parity probe rows are malformed ({exc})") from exc
    try:  # an output that is not a numeric tensor (a map, strings) fails here too
        got = np.asarray(model.predict(x), dtype=np.float64)
    except Exception as exc:
        raise ArtifactError(f"{where}: inference on probe rows failed ({exc})") from exc
    if got.ndim != 2 or got.shape != want.shape or got.shape[1:] != (3,):
        raise ArtifactError(f"{where}: output shape {got.shape}, expected {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    if not diff <= PARITY_TOL:
        raise ArtifactError(f"{where}: parity probe failed (max abs diff {diff:.2e})")


def load_champions(models_dir: Path) -> tuple[dict[str, LoadedModel], list[str]]:
    """The champion (by its pointer file) of every family, plus errors."""
    wanted, errors = champions_on_disk(models_dir)
    loaded: dict[str, LoadedModel] = {}
    for family, version in wanted.items():
        try:
            loaded[family] = load_model(models_dir, family, version)
        except ArtifactError as exc:
            errors.append(str(exc))
    return loaded, errors
