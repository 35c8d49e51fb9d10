"""ONNX export of the tree models, with a parity check that gates every artifact.

The daemon serves the ONNX file, not the native model, so what was measured (native
`predict_proba`) must be what is served. `export` converts, runs onnxruntime on held-out
rows, and raises `ExportError` when the largest probability difference exceeds
`PARITY_TOL`; it returns bytes and writes nothing, so a failed export cannot leave a file
behind. A handful of probe rows (inputs and ONNX outputs) go into the metadata so the
predictor can re-run them when it loads the file and refuse one that no longer agrees.

The graph: input "input" float32 [None, N_FEATURES]; outputs "label" and "probabilities"
float32 [None, 3] (columns in class order none, long, short; no ZipMap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qtraderd.features.spec import N_FEATURES

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
PARITY_TOL = 1e-5
PARITY_ROWS = 2000
N_PROBES = 8


class ExportError(RuntimeError):
    """Conversion failed or the ONNX model does not reproduce the native one."""


@dataclass(frozen=True)
class Exported:
    onnx_bytes: bytes
    parity_max_abs_diff: float
    parity_rows: int
    probe_inputs: list[list[float]]
    probe_outputs: list[list[float]]


_registered = False


def _register_converters() -> None:
    """Teach skl2onnx the XGBoost/LightGBM classifiers (onnxmltools' converters)."""
    global _registered
    if _registered:
        return
    from lightgbm import LGBMClassifier
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
    from xgboost import XGBClassifier

    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    update_registered_converter(XGBClassifier, "XGBoostXGBClassifier",
                                calculate_linear_classifier_output_shapes, convert_xgboost,
                                options=options)
    update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier",
                                calculate_linear_classifier_output_shapes, convert_lightgbm,
                                options=options)
    _registered = True


def to_onnx(model: Any) -> bytes:
    """Serialized ONNX model for a fitted XGBClassifier / LGBMClassifier."""
    _register_converters()
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    try:
        onx = convert_sklearn(
            model,
            initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
            target_opset=TARGET_OPSET,
            options={id(model): {"zipmap": False}},
            # A fixed graph name (the default is a random uuid) makes the bytes, and so the
            # sha256 and version suffix, a function of the model alone.
            name=f"qtraderd_{type(model).__name__}",
        )
        if type(model).__name__ == "LGBMClassifier":
            _round_thresholds_down(onx, model)
        # skl2onnx lists opset imports in set order (varies with PYTHONHASHSEED): sort them.
        imports = sorted((o.domain, o.version) for o in onx.opset_import)
        del onx.opset_import[:]
        for domain, version in imports:
            onx.opset_import.add(domain=domain, version=version)
        onnx.checker.check_model(onx)
    except Exception as exc:  # converters raise anything from KeyError to RuntimeError
        raise ExportError(f"ONNX conversion failed: {type(exc).__name__}: {exc}") from exc
    outputs = [o.name for o in onx.graph.output]
    if OUTPUT_NAME not in outputs or [i.name for i in onx.graph.input] != [INPUT_NAME]:
        raise ExportError(f"unexpected ONNX signature: inputs "
                          f"{[i.name for i in onx.graph.input]}, outputs {outputs}")
    return onx.SerializeToString()


def _round_thresholds_down(onx: Any, model: Any) -> None:
    """Make the ONNX tree thresholds route float32 inputs exactly as LightGBM does.

    LightGBM splits on double thresholds (midpoints between training values) and tests
    `x <= t`; the converter stores them as float32, rounded to nearest. When a threshold
    rounds *up* to a float32 value v, an input exactly v goes left in ONNX and right in
    LightGBM — one validation row in 1,584 was enough to fail a job's parity check. For
    float32 x, `x <= t` equals `x <= the largest float32 <= t`, so such thresholds are
    moved one float32 step down. The doubles come from the booster's own dump (ONNX tree
    ids are its tree indices).
    """
    trees = model.booster_.dump_model()["tree_info"]
    splits: list[dict[tuple[int, float], list[float]]] = []
    for info in trees:
        by_key: dict[tuple[int, float], list[float]] = {}
        stack = [info["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" in node:
                t = float(node["threshold"])
                by_key.setdefault((int(node["split_feature"]), float(np.float32(t))),
                                  []).append(t)
                stack += [node["left_child"], node["right_child"]]
        splits.append(by_key)
    for node in onx.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: a for a in node.attribute}
        values = attrs["nodes_values"].floats
        modes, tree_ids = attrs["nodes_modes"].strings, attrs["nodes_treeids"].ints
        features = attrs["nodes_featureids"].ints
        for i, mode in enumerate(modes):
            if mode != b"BRANCH_LEQ" or tree_ids[i] >= len(splits):
                continue
            v = float(np.float32(values[i]))
            doubles = splits[tree_ids[i]].get((int(features[i]), v), [])
            if doubles and all(t < v for t in doubles):
                values[i] = float(np.nextafter(np.float32(v), np.float32(-np.inf)))


def ort_proba(onnx_bytes: bytes, X: np.ndarray) -> np.ndarray:
    """Probabilities from onnxruntime, exactly as the predictor will compute them."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    (out,) = sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})
    return np.asarray(out, dtype=np.float64)


def _native_proba(model: Any, X: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_proba(X), dtype=np.float64)


def spread_rows(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over range(n) (all of them when n <= k); deterministic."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def export(model: Any, X_holdout: np.ndarray, *, tol: float = PARITY_TOL) -> Exported:
    """Convert, check parity on up to PARITY_ROWS held-out rows, pick probe rows.

    `X_holdout` should be rows the model did not train on (the validation window), so the
    check also covers feature values outside the training distribution.
    """
    X = np.ascontiguousarray(X_holdout, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != N_FEATURES or len(X) == 0:
        raise ExportError(f"parity needs held-out rows of shape (n, {N_FEATURES}), "
                          f"got {X.shape}")
    data = to_onnx(model)
    rows = X[spread_rows(len(X), PARITY_ROWS)]
    native = _native_proba(model, rows)
    onnx_out = ort_proba(data, rows)
    if onnx_out.shape != (len(rows), 3) or native.shape != onnx_out.shape:
        raise ExportError(f"parity failed: output shapes native {native.shape} vs ONNX "
                          f"{onnx_out.shape}, expected ({len(rows)}, 3)")
    diff = float(np.max(np.abs(native - onnx_out)))
    if not diff <= tol:  # also catches NaN
        raise ExportError(f"parity failed: max abs diff {diff:.3g} > {tol:g} "
                          f"over {len(rows)} held-out rows")
    probe = X[spread_rows(len(X), N_PROBES)]
    probe_out = ort_proba(data, probe)
    return Exported(
        onnx_bytes=data,
        parity_max_abs_diff=diff,
        parity_rows=len(rows),
        probe_inputs=[[float(v) for v in r] for r in probe],
        probe_outputs=[[float(v) for v in r] for r in probe_out],
    )
