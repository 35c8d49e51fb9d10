"""Window datasets, training, ONNX export and parity for the network families.

The networks train and validate on exactly the samples the trees use (`dataset.build`:
same global time split, purge, embargo and rows, in the same order), only their input is
the candle window ending at the sample's bar instead of its feature row. Why the pieces
look the way they do:

* **Targets** are the cumulative log returns of the close relative to the entry price
  (bar t+1's open) at `nets.forecast_points(horizon)`, read only from bars after t, plus the
  triple-barrier class. A training sample's forecast target reads bars up to t+horizon,
  further than its barrier label when that settled early, so target points that fall in
  the validation window get weight 0: the purge holds for the forecast too, while the
  sample set stays identical to the trees'.
* **Nothing after the span** is loaded: bars come from `dataset.load_series` with the same
  cutoff, and their sha256 must equal the dataset's (else the store changed under us).
* **No early stopping / model selection on the validation window**: a fixed number of
  epochs (`learning.nets_epochs`) and a fixed schedule, so the validation metrics stay
  out-of-sample, as for the trees.
* **Deterministic**: `torch.manual_seed(cfg.seed)`, a seeded shuffle, deterministic
  algorithms, 2 threads (the learner runs beside a live daemon). Same data + seed gives the
  same weights and, as far as the dynamo exporter allows, the same ONNX bytes.
* **Export** with the dynamo exporter to bytes in memory (nothing is written here), then
  onnxruntime vs torch on held-out windows, max abs diff <= PARITY_TOL or `ExportError`.

torch is imported inside the functions: `qtraderd.training.cli` imports this module for the
family names, and the tree-only jobs (and `--help`) must not pay for, or depend on, torch.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qtraderd.core.config import Config
from qtraderd.features.windows import CHANNELS, WINDOW, WINDOW_VERSION, make_windows
from qtraderd.training.dataset import Dataset
from qtraderd.training.export import ExportError, spread_rows
from qtraderd.training.trees import TrainError

if TYPE_CHECKING:
    from qtraderd.training.nets import ForecastClassifier

log = logging.getLogger("qtraderd.training")

FAMILIES = ("nhits", "patchtst")
INPUT_NAME = "window"
OUTPUT_NAME = "probabilities"
FORECAST_NAME = "forecast"
PARITY_TOL = 1e-4
PARITY_ROWS = 20_000
N_PROBES = 8
BATCH = 1024
LR = 2e-3
WEIGHT_DECAY = 1e-2
WARMUP = 0.03  # share of steps with a linear learning-rate warm-up; cosine decay after
TARGET_CLIP = 6.0  # forecast targets clipped at this many spreads (fat tails vs. MSE)
N_THREADS = 2
CHUNK = 16_384  # windows built per call (bounds make_windows' float64 intermediate)
EVAL_BATCH = 2048  # inference batch: bounds activations and onnxruntime's buffers


@dataclass(frozen=True, eq=False)
class WindowData:
    """Network inputs and targets for every row of a Dataset, in `ds.rows` order."""

    X: np.ndarray  # float32 [n, WINDOW, CHANNELS]
    target: np.ndarray  # float32 [n, points] log(close[t+k] / open[t+1])
    weight: np.ndarray  # float32 [n, points]: 0 where a training target reads a valid bar
    y: np.ndarray  # int64 class (same as ds.rows.y)
    is_valid: np.ndarray  # bool (same as ds.is_valid)
    points: tuple[int, ...]
    last_read_ms: int  # open_time of the last bar any target read


@dataclass
class NetResult:
    """What the CLI needs to write, register and report one network artifact."""

    onnx_bytes: bytes
    proba_valid: np.ndarray  # onnxruntime probabilities on the validation rows
    parity_max_abs_diff: float
    parity_rows: int
    probe_inputs: list[Any]
    probe_outputs: list[list[float]]
    train_seconds: float
    export_seconds: float
    data_end: int
    params: dict[str, Any] = field(default_factory=dict)
    extra_metrics: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------- dataset


def forecast_targets(o: np.ndarray, c: np.ndarray, at: np.ndarray,
                     points: tuple[int, ...]) -> np.ndarray:
    """[len(at), len(points)] float64: log(c[t+k] / o[t+1]) for each sample bar t.

    Reads bars t+1 .. t+max(points) only; the caller guarantees t+max(points) exists.
    """
    at = np.asarray(at, dtype=np.int64)
    lo, lc = np.log(np.asarray(o, dtype=np.float64)), np.log(np.asarray(c, dtype=np.float64))
    k = np.asarray(points, dtype=np.int64)
    return lc[at[:, None] + k[None, :]] - lo[at + 1][:, None]


def forecast_points_for(cfg: Config) -> tuple[int, ...]:
    """The forecast points for this config's label horizon (see nets.forecast_points)."""
    from qtraderd.training.nets import forecast_points

    return forecast_points(cfg.labels.horizon_bars)


def cached_window_data(ds: Dataset, cfg: Config, cache: dict[str, Any]) -> WindowData:
    """The dataset's windows, built once per job and shared by both networks and the gate."""
    if cache.get("dataset") is not ds:
        t0 = time.monotonic()
        data = build_window_data(ds, cfg)
        cache.update(windows=data, dataset=ds)
        log.info("windows: %s x %d x %d (%.0f MB) in %.1f s", f"{len(data.X):,}", WINDOW,
                 CHANNELS, data.X.nbytes / 2**20, time.monotonic() - t0)
    return cache["windows"]


def build_window_data(ds: Dataset, cfg: Config) -> WindowData:
    """Windows and targets for the dataset's rows, from the same bars the dataset used."""
    series = ds.series
    points = forecast_points_for(cfg)
    if max(points) > ds.barriers.horizon:  # pragma: no cover - forecast_points contract
        raise AssertionError("forecast points beyond the label horizon")
    rows = ds.rows
    n, h = len(rows), len(points)
    X = np.empty((n, WINDOW, CHANNELS), dtype=np.float32)
    target = np.empty((n, h), dtype=np.float32)
    weight = np.ones((n, h), dtype=np.float32)
    last_read = 0
    for si, sym in enumerate(ds.symbols):
        where = np.flatnonzero(rows.sym == si)
        if len(where) == 0:
            continue
        s = series[sym]
        at = np.searchsorted(s.open_time, rows.ts[where])
        if (at >= len(s)).any() or not np.array_equal(s.open_time[at], rows.ts[where]):
            raise TrainError(f"{sym}: dataset rows do not map onto stored bars")
        for a in range(0, len(where), CHUNK):
            w, t = where[a:a + CHUNK], at[a:a + CHUNK]
            win = make_windows(s.o, s.h, s.low, s.c, s.v, t)
            if not np.isfinite(win).all():  # per chunk: a whole-array check costs 100 MB
                raise TrainError(f"{sym}: non-finite window (zero or negative prices?)")
            X[w] = win
            target[w] = forecast_targets(s.o, s.c, t, points)
        # Purge for the forecast: a training row's target point at bar t+k must not reach
        # the validation window (this symbol's first bar at/after the cutoff).
        test_start = int(np.searchsorted(s.open_time, ds.valid_cutoff, side="left"))
        train_rows = ~ds.is_valid[where]
        reads = at[:, None] + np.asarray(points)[None, :]
        leak = train_rows[:, None] & (reads >= test_start)
        weight[where] = np.where(leak, 0.0, 1.0).astype(np.float32)
        used = reads[weight[where] > 0]
        if used.size:
            last_read = max(last_read, int(s.open_time[used.max()]))
    if not np.isfinite(target).all():
        raise TrainError("non-finite forecast target (zero or negative prices?)")
    return WindowData(X=X, target=target, weight=weight, y=rows.y, is_valid=ds.is_valid,
                      points=points, last_read_ms=last_read)


# ------------------------------------------------------------------------------ training


def _setup_torch(seed: int) -> None:
    import torch

    torch.set_num_threads(N_THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)


def _scales(data: WindowData) -> dict[str, Any]:
    """Data-dependent buffers, from (a spread sample of) the training rows only."""
    import torch

    from qtraderd.training.nets import window_summaries

    tr = np.flatnonzero(~data.is_valid)
    sample = tr[spread_rows(len(tr), 50_000)]
    xs = torch.from_numpy(data.X[sample])
    in_scale = xs.reshape(-1, CHANNELS).std(dim=0).clamp_min(1e-6)
    summ = window_summaries(xs)
    t, w = data.target[tr].astype(np.float64), data.weight[tr].astype(np.float64)
    rms = np.sqrt((t * t * w).sum(axis=0) / np.maximum(w.sum(axis=0), 1.0))
    return {
        "in_scale": in_scale,
        "target_scale": torch.from_numpy(np.maximum(rms, 1e-6).astype(np.float32)),
        "summary_mean": summ.mean(dim=0),
        "summary_std": summ.std(dim=0).clamp_min(1e-6),
    }


def fit(family: str, data: WindowData, cfg: Config,
        epochs: int | None = None) -> tuple[ForecastClassifier, list[float]]:
    """Train one network on the training rows; returns it (eval mode) and the epoch losses."""
    import torch
    import torch.nn.functional as F

    from qtraderd.training import nets
    _setup_torch(cfg.seed)
    epochs = epochs or cfg.learning.nets_epochs
    tr = np.flatnonzero(~data.is_valid)
    classes = np.bincount(data.y[tr], minlength=nets.N_CLASSES)
    if (classes == 0).any():
        raise TrainError(f"{family}: the training window has classes "
                          f"{np.flatnonzero(classes).tolist()}, need all of 0, 1, 2")
    model = nets.build(family, len(data.points))
    nets.set_scales(model, **_scales(data))
    with torch.no_grad():  # start at the training prior: the first epochs learn signal
        last = model.cls[-1]
        last.bias.copy_(torch.from_numpy(np.log(classes / classes.sum()).astype(np.float32)))
    X = torch.from_numpy(data.X)  # shared with numpy: batches are gathered, never the set
    z = torch.from_numpy(data.target) / model.target_scale
    z = z.clamp(-TARGET_CLIP, TARGET_CLIP)
    wt = torch.from_numpy(data.weight)
    y = torch.from_numpy(data.y)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = -(-len(tr) // BATCH)
    total = epochs * steps_per_epoch
    warm = max(1, int(WARMUP * total))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, total - warm)
        return 0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx = torch.from_numpy(tr)
    losses: list[float] = []
    model.train()
    for _ in range(epochs):
        perm = train_idx[torch.randperm(len(tr), generator=gen)]
        run, seen = 0.0, 0
        for b in range(0, len(perm), BATCH):
            idx = perm[b:b + BATCH]
            logits, f = model.train_outputs(X[idx])
            w = wt[idx]
            mse = (((f - z[idx]) ** 2) * w).sum() / w.sum().clamp_min(1.0)
            loss = mse + F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            run += float(loss.detach()) * len(idx)
            seen += len(idx)
        losses.append(run / max(seen, 1))
    model.eval()
    return model, losses


def _batches(X: np.ndarray, rows: np.ndarray | None, size: int) -> Any:
    """Contiguous float32 batches of X (or of its `rows`), gathered one at a time so the
    held-out windows are never copied as a whole."""
    n = len(X) if rows is None else len(rows)
    for a in range(0, n, size):
        part = X[a:a + size] if rows is None else X[rows[a:a + size]]
        yield np.ascontiguousarray(part, dtype=np.float32)


def torch_outputs(model: ForecastClassifier, X: np.ndarray, rows: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, forecast) from torch, float64, for X (or its `rows`)."""
    import torch

    probs, fcs = [], []
    with torch.no_grad():
        for x in _batches(X, rows, EVAL_BATCH):
            p, f = model(torch.from_numpy(x))
            probs.append(p.double().numpy())
            fcs.append(f.double().numpy())
    if not probs:
        return np.zeros((0, 3)), np.zeros((0, 0))
    return np.concatenate(probs), np.concatenate(fcs)


# -------------------------------------------------------------------------------- export


def to_onnx(model: ForecastClassifier, example: np.ndarray) -> bytes:
    """The dynamo export with a dynamic batch dimension, as bytes (nothing on disk).

    The exporter prints progress with print(): it goes to stderr, since stdout carries the
    learner's one JSON result.
    """
    import torch

    ex = torch.from_numpy(np.ascontiguousarray(example[:4], dtype=np.float32))
    if ex.shape[0] < 2:  # a batch of 1 would let the tracer specialise the dimension
        ex = ex.repeat(2, 1, 1)
    batch = torch.export.Dim("batch", min=1)
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                model, (ex,), None, dynamo=True, external_data=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME, FORECAST_NAME],
                dynamic_shapes=({0: batch},), verbose=False)
        assert prog is not None
        proto = prog.model_proto
        _strip_metadata(proto)
        import onnx

        onnx.checker.check_model(proto)
        data: bytes = proto.SerializeToString()
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    return data


def _strip_metadata(proto: Any) -> None:
    """Drop the exporter's per-node debug metadata (Python stack traces with absolute paths
    and line numbers, FX node text): the bytes, and so the sha256 and the version suffix,
    then depend on the weights and the exporter only, not on where the code was checked out."""
    graphs = [proto.graph, *(f for f in proto.functions)]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
        if hasattr(g, "value_info"):
            for group in (g.input, g.output, g.value_info, g.initializer):
                for item in group:
                    del item.metadata_props[:]


def ort_outputs(onnx_bytes: bytes, X: np.ndarray, rows: np.ndarray | None = None,
                threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, forecast) from onnxruntime, as the predictor will compute them."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = False  # as the predictor runs it; and no arena kept at peak
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    probs, fcs = [], []
    for x in _batches(X, rows, EVAL_BATCH):
        p, f = sess.run([OUTPUT_NAME, FORECAST_NAME], {INPUT_NAME: x})
        probs.append(np.asarray(p, dtype=np.float64))
        fcs.append(np.asarray(f, dtype=np.float64))
    if not probs:
        return np.zeros((0, 3)), np.zeros((0, 0))
    return np.concatenate(probs), np.concatenate(fcs)


def check_parity(onnx_bytes: bytes, model: ForecastClassifier, X: np.ndarray,
                 holdout: np.ndarray, tol: float = PARITY_TOL) -> tuple[float, int]:
    """Max abs diff torch vs onnxruntime (probabilities and forecast) on up to PARITY_ROWS
    held-out windows X[holdout], and on batches of 1 and 37 (the dynamic batch dimension);
    raises ExportError."""
    if len(holdout) == 0:
        raise ExportError("parity needs held-out windows, got none")
    rows = X[holdout[spread_rows(len(holdout), PARITY_ROWS)]]
    tp, tf = torch_outputs(model, rows)
    op, of = ort_outputs(onnx_bytes, rows)
    if op.shape != (len(rows), 3) or tp.shape != op.shape or tf.shape != of.shape:
        raise ExportError(f"parity failed: output shapes torch {tp.shape} vs ONNX {op.shape}")
    diff = max(float(np.max(np.abs(tp - op))), float(np.max(np.abs(tf - of))))
    for n in (1, 37):
        bp, _ = ort_outputs(onnx_bytes, rows[:n])
        if bp.shape != (min(n, len(rows)), 3):
            raise ExportError(f"parity failed: batch of {n} gives shape {bp.shape}")
        diff = max(diff, float(np.max(np.abs(bp - tp[:n]))))
    if not diff <= tol:  # also catches NaN
        raise ExportError(f"parity failed: max abs diff {diff:.3g} > {tol:g} "
                          f"over {len(rows)} held-out windows")
    return diff, len(rows)


# ------------------------------------------------------------------------------ the job


def train_and_export(family: str, ds: Dataset, cfg: Config,
                     cache: dict[str, Any] | None = None) -> NetResult:
    """Build (or reuse) the window data, train, export, check parity, evaluate via ONNX."""
    import torch

    if family not in FAMILIES:
        raise TrainError(f"unknown network family {family!r} (known: {', '.join(FAMILIES)})")
    data = cached_window_data(ds, cfg, {} if cache is None else cache)
    t0 = time.monotonic()
    model, losses = fit(family, data, cfg)
    train_s = time.monotonic() - t0
    log.info("trained %s in %.1f s (%d epochs, loss %s)", family, train_s, len(losses),
             " ".join(f"{v:.4f}" for v in losses))
    valid = np.flatnonzero(data.is_valid)  # indices: the windows themselves are not copied
    t0 = time.monotonic()
    onnx_bytes = to_onnx(model, data.X[valid[:4]])
    diff, n_rows = check_parity(onnx_bytes, model, data.X, valid)
    export_s = time.monotonic() - t0
    # Metrics come from the ONNX graph: they describe exactly what the daemon will serve.
    proba, forecast = ort_outputs(onnx_bytes, data.X, valid)
    probe = data.X[valid[spread_rows(len(valid), N_PROBES)]]
    probe_out, _ = ort_outputs(onnx_bytes, probe)
    realised = data.target[data.is_valid][:, -1].astype(np.float64)
    pred = forecast[:, -1]
    sse = float(np.sum((pred - realised) ** 2))
    extra = {
        "forecast_corr": (float(np.corrcoef(pred, realised)[0, 1])
                          if pred.std() > 0 and realised.std() > 0 else None),
        # 1 - SSE/SSE(zero forecast) at the horizon: > 0 beats "no move"
        "forecast_r2_vs_zero": 1.0 - sse / max(float(np.sum(realised ** 2)), 1e-300),
    }
    n_params = sum(int(p.numel()) for p in model.parameters())
    params = {
        **{k: (list(v) if isinstance(v, tuple) else v)
           for k, v in _describe(family).items()},
        "window": WINDOW, "window_version": WINDOW_VERSION, "channels": CHANNELS,
        "forecast_points": list(data.points), "target": "log(close[t+k] / open[t+1])",
        "loss": "mse(forecast / target_rms, clipped) + cross_entropy(class)",
        "epochs": len(losses), "batch_size": BATCH, "lr": LR, "weight_decay": WEIGHT_DECAY,
        "warmup": WARMUP, "target_clip": TARGET_CLIP, "seed": cfg.seed,
        "n_params": n_params, "library_version": str(torch.__version__),
        "outputs": [OUTPUT_NAME, FORECAST_NAME],
        "train_losses": [round(v, 6) for v in losses],  # per epoch, for the record
    }
    return NetResult(
        onnx_bytes=onnx_bytes, proba_valid=proba, parity_max_abs_diff=diff,
        parity_rows=n_rows,
        probe_inputs=[[[float(v) for v in bar] for bar in w] for w in probe],
        probe_outputs=[[float(v) for v in r] for r in probe_out],
        train_seconds=train_s, export_seconds=export_s,
        data_end=max(ds.data_end, data.last_read_ms), params=params, extra_metrics=extra,
    )


def _describe(family: str) -> dict[str, Any]:
    from qtraderd.training.nets import describe

    return describe(family)
