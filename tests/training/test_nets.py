"""N-HiTS and PatchTST: window data, training, ONNX export + parity, leakage tripwires, CLI.

Small data and one epoch keep this module fast; the point is the contracts (same samples
as the trees, targets only from bars after t, parity, probes, dynamic batch, honest AUCs),
not model quality.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from qtraderd.core.config import Config, load, with_changes
from qtraderd.features.windows import CHANNELS, WINDOW, WINDOW_VERSION, make_windows
from qtraderd.models.artifacts import read_artifact
from qtraderd.store.db import connect
from qtraderd.training import dataset, metrics, nets_train

REPO = Path(__file__).resolve().parents[2]
DEMO = ("ETHBTC", "LTCBTC", "XMRBTC")


def _cfg(**learning: Any) -> Config:
    return with_changes(load(None, env={}), learning={"nets_epochs": 1, **learning})


def _session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, ohlcv_dir: Path) -> dict[str, Any]:
    """Three real pairs, their dataset and window data, and both networks trained on it."""
    from tests.helpers import read_ohlcv, store_bars

    state = tmp_path_factory.mktemp("nets") / "state"
    conn = connect(state)
    for s in DEMO:
        store_bars(conn, s, "5m", read_ohlcv(ohlcv_dir / f"{s}-5m.csv"))
    cfg = _cfg()
    ds = dataset.build(conn, cfg)
    cache: dict[str, Any] = {}
    results = {f: nets_train.train_and_export(f, ds, cfg, cache)
               for f in nets_train.FAMILIES}
    conn.close()
    return {"state": state, "cfg": cfg, "ds": ds, "data": cache["windows"],
            "results": results}


def test_window_data_matches_the_tree_samples(demo: dict[str, Any]) -> None:
    ds, data = demo["ds"], demo["data"]
    assert data.X.shape == (len(ds.rows), WINDOW, CHANNELS) and data.X.dtype == np.float32
    assert np.array_equal(data.y, ds.rows.y) and np.array_equal(data.is_valid, ds.is_valid)
    assert data.points == (6, 12, 18, 24, 30, 36, 42, 48)
    # Row i is the window ending at the bar the tree sample i was decided at.
    conn = connect(demo["state"])
    series = dataset.load_series(conn, ds.symbols, ds.interval, until_ms=ds.span_end)
    conn.close()
    for i in np.linspace(0, len(ds.rows) - 1, 25).astype(int):
        s = series[ds.symbols[ds.rows.sym[i]]]
        t = int(np.searchsorted(s.open_time, ds.rows.ts[i]))
        np.testing.assert_array_equal(data.X[i], make_windows(s.o, s.h, s.low, s.c, s.v,
                                                              np.array([t]))[0])
        want = nets_train.forecast_targets(s.o, s.c, np.array([t]), data.points)[0]
        np.testing.assert_allclose(data.target[i], want, rtol=1e-6, atol=1e-7)
    # The purge holds for the forecast: no weighted training target reads a validation bar.
    # (The dataset already stops training samples a full label horizon before the window,
    # so with points up to the horizon no weight needs zeroing; the check below stands.)
    train = ~data.is_valid
    assert max(data.points) <= ds.barriers.horizon and (data.weight == 1).all()
    for si, sym in enumerate(ds.symbols):
        s, rows = series[sym], np.flatnonzero(train & (ds.rows.sym == si))
        reads = np.searchsorted(s.open_time, ds.rows.ts[rows])[:, None] + np.asarray(
            data.points)[None, :]
        read_ts = s.open_time[np.minimum(reads, len(s) - 1)]
        assert (read_ts[data.weight[rows] > 0] < ds.valid_cutoff).all()
        assert (read_ts[data.weight[rows] == 0] >= ds.valid_cutoff).all()
    assert data.last_read_ms <= ds.span_end


def test_forecast_targets_read_only_bars_after_t() -> None:
    rng = np.random.default_rng(3)
    n, t, points = 200, 100, (6, 12, 48)
    c = 0.05 * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
    o = np.concatenate([[0.05], c[:-1]]) * np.exp(rng.normal(0, 0.001, n))
    base = nets_train.forecast_targets(o, c, np.array([t]), points)[0]
    np.testing.assert_allclose(base, np.log(c[t + np.array(points)] / o[t + 1]))
    past_o, past_c = o.copy(), c.copy()
    past_o[: t + 1] *= 1.5  # every bar up to and including t
    past_c[: t + 1] *= 0.7
    np.testing.assert_array_equal(
        nets_train.forecast_targets(past_o, past_c, np.array([t]), points)[0], base)
    entry = o.copy()
    entry[t + 1] *= 1.01  # the entry price (bar t+1's open) moves every point
    assert (nets_train.forecast_targets(entry, c, np.array([t]), points)[0] != base).all()
    for k in points:  # and a close at t+k moves exactly the point k
        later = c.copy()
        later[t + k] *= 1.01
        diff = nets_train.forecast_targets(o, later, np.array([t]), points)[0] != base
        assert diff.tolist() == [p == k for p in points]


@pytest.mark.parametrize("family", nets_train.FAMILIES)
def test_export_parity_batches_and_probes(family: str, demo: dict[str, Any]) -> None:
    res, data = demo["results"][family], demo["data"]
    assert res.parity_max_abs_diff <= nets_train.PARITY_TOL
    assert res.parity_rows == min(int(data.is_valid.sum()), nets_train.PARITY_ROWS)
    sess = _session(res.onnx_bytes)
    (inp,) = sess.get_inputs()
    assert inp.name == "window" and inp.shape[1:] == [WINDOW, CHANNELS]
    assert not isinstance(inp.shape[0], int)  # dynamic batch
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "forecast"]
    X = data.X[data.is_valid]
    (full,) = sess.run(["probabilities"], {"window": X})
    assert full.shape == (len(X), 3) and (full >= 0).all()
    np.testing.assert_allclose(full.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(full, res.proba_valid, atol=1e-6)
    for n in (1, 37):
        (part,) = sess.run(["probabilities"], {"window": X[:n]})
        assert part.shape == (n, 3)
        np.testing.assert_allclose(part, full[:n], atol=1e-6)
    # Probes: 8 validation windows whose stored outputs the file reproduces.
    probe = np.asarray(res.probe_inputs, dtype=np.float32)
    assert probe.shape == (nets_train.N_PROBES, WINDOW, CHANNELS)
    assert all(any(np.array_equal(p, w) for w in X) for p in probe)
    (again,) = sess.run(["probabilities"], {"window": probe})
    np.testing.assert_allclose(again, np.asarray(res.probe_outputs), atol=1e-6)


@pytest.mark.parametrize("family", nets_train.FAMILIES)
def test_training_and_bytes_are_deterministic(family: str, demo: dict[str, Any]) -> None:
    ds, cfg = demo["ds"], demo["cfg"]
    again = nets_train.train_and_export(family, ds, cfg, {"windows": demo["data"], "dataset": ds})
    assert again.onnx_bytes == demo["results"][family].onnx_bytes


def test_parity_failure_raises(demo: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    real = nets_train.ort_outputs
    monkeypatch.setattr(nets_train, "ort_outputs",
                        lambda data, X, rows=None, threads=1:
                        tuple(a + 1e-3 for a in real(data, X, rows)))
    with pytest.raises(nets_train.ExportError, match="parity failed"):
        nets_train.train_and_export("nhits", demo["ds"], demo["cfg"],
                                    {"windows": demo["data"], "dataset": demo["ds"]})


def _load(state: Path, cfg: Config) -> tuple[dataset.Dataset, nets_train.WindowData]:
    conn = connect(state)
    try:
        ds = dataset.build(conn, cfg)
        return ds, nets_train.build_window_data(ds, cfg)
    finally:
        conn.close()


def _torch_metrics(ds: dataset.Dataset, data: nets_train.WindowData, cfg: Config,
                   family: str, leak: bool = False) -> dict[str, Any]:
    """Validation metrics from the torch model (parity is tested above; no export here)."""
    if leak:  # positive control: the label as a spike on the last bar's volume channel
        X = data.X.copy()
        X[:, -1, 4] = 5.0 * data.y
        data = dataclasses.replace(data, X=X)
    model, _ = nets_train.fit(family, data, cfg)
    proba, _ = nets_train.torch_outputs(model, data.X[data.is_valid])
    return metrics.evaluate(proba, ds.valid, cfg)


@pytest.mark.slow
def test_real_candles_auc_below_leakage_threshold(
    make_store: Callable[..., Path], all_btc_rows: dict[str, list]
) -> None:
    # 4 epochs (~80 steps): enough for the positive control below to learn its leak.
    cfg = _cfg(nets_epochs=4)
    ds, data = _load(make_store(all_btc_rows), cfg)
    for family in nets_train.FAMILIES:
        m = _torch_metrics(ds, data, cfg, family)
        assert m["n_valid"] > 4_000
        # Honest 5m models land around 0.5-0.6; anything at 0.65+ means the pipeline leaks.
        for key in ("auc_long", "auc_short", "auc_direction"):
            assert m[key] < 0.65, (family, m)
        # The tripwire can fire: the same pipeline with the label leaked into the window.
        leaked = _torch_metrics(ds, data, cfg, family, leak=True)
        assert leaked["auc_short"] > 0.85 and leaked["auc_direction"] > 0.75, (family, leaked)


def test_random_walk_auc_is_chance(make_store: Callable[..., Path],
                                   random_walk: Callable[..., list]) -> None:
    cfg = with_changes(_cfg(), train={"train_fraction": 0.9, "valid_fraction": 0.5})
    ds, data = _load(make_store(random_walk(11, 8_000, [f"RW{i}BTC" for i in range(4)])), cfg)
    for family in nets_train.FAMILIES:
        m = _torch_metrics(ds, data, cfg, family)
        assert m["n_valid"] > 12_000
        for key in ("auc_long", "auc_short", "auc_direction"):
            assert abs(m[key] - 0.5) < 0.07, (family, key, m[key])


def test_cli_subprocess_trains_both_networks(demo: dict[str, Any], tmp_path: Path) -> None:
    models = tmp_path / "models"
    cfg = tmp_path / "nets.toml"
    cfg.write_text("[learning]\nnets_epochs = 1\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "qtraderd.training", "train", "--state-dir", str(demo["state"]),
         "--models-dir", str(models), "--config", str(cfg), "--families", "nhits,patchtst"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # stdout is the one JSON result, exporter noise or not
    assert result["ok"] is True
    assert [m["family"] for m in result["models"]] == ["nhits", "patchtst"]
    for item in result["models"]:
        meta, data = read_artifact(models, item["family"], item["version"])
        assert meta.input_kind == "window" and meta.input_name == "window"
        assert meta.output_name == "probabilities"
        assert meta.params["window"] == WINDOW
        assert meta.params["window_version"] == WINDOW_VERSION
        assert meta.parity_max_abs_diff <= nets_train.PARITY_TOL
        assert meta.metrics["auc_long"] is not None and "forecast_corr" in meta.metrics
        # Same samples, same metrics code: comparable with the trees' numbers.
        assert meta.n_valid == demo["ds"].n_valid == meta.metrics["n_valid"]
        assert meta.data_end <= demo["ds"].span_end
        (proba,) = _session(data).run(
            ["probabilities"], {"window": np.asarray(meta.probe_inputs, dtype=np.float32)})
        np.testing.assert_allclose(proba, meta.probe_outputs, atol=1e-6)
        # Same data + seed as the in-process run: the same bytes.
        assert meta.sha256 == item["sha256"]
        assert data == demo["results"][item["family"]].onnx_bytes


def test_daemon_never_imports_torch() -> None:
    code = ("import sys, qtraderd.runtime.daemon, qtraderd.training.cli, "
            "qtraderd.training.nets_train; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "False"
