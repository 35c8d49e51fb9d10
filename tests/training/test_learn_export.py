"""Tree training and ONNX export: parity gate, probes, determinism, failure modes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from qtraderd.core.config import Config, load, with_changes
from qtraderd.features.spec import N_FEATURES
from qtraderd.store.db import connect
from qtraderd.training import dataset, export, trees


@pytest.fixture
def cfg() -> Config:
    return with_changes(load(None, env={}), train={"n_estimators": 30})


@pytest.fixture
def ds(real_store: Path, cfg: Config) -> dataset.Dataset:
    conn = connect(real_store)
    try:
        return dataset.build(conn, cfg)
    finally:
        conn.close()


@pytest.mark.parametrize("family", trees.FAMILIES)
def test_export_parity_and_probes(family: str, ds: dataset.Dataset, cfg: Config) -> None:
    model = trees.train(family, ds, cfg)
    out = export.export(model, ds.valid.X)
    assert out.parity_max_abs_diff <= export.PARITY_TOL
    assert out.parity_rows == min(ds.n_valid, export.PARITY_ROWS)
    sess = ort.InferenceSession(out.onnx_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert sess.get_inputs()[0].shape[1] == N_FEATURES
    (proba,) = sess.run(["probabilities"], {"input": ds.valid.X})
    assert proba.shape == (ds.n_valid, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(proba, model.predict_proba(ds.valid.X), atol=1e-5)
    # Probes: 8 validation rows whose stored outputs the ONNX file reproduces.
    assert len(out.probe_inputs) == export.N_PROBES == len(out.probe_outputs)
    probe_x = np.asarray(out.probe_inputs, dtype=np.float32)
    assert all(any(np.array_equal(p, r) for r in ds.valid.X) for p in probe_x)
    (again,) = sess.run(["probabilities"], {"input": probe_x})
    np.testing.assert_allclose(again, np.asarray(out.probe_outputs), atol=1e-6)


@pytest.mark.parametrize("family", trees.FAMILIES)
def test_training_and_bytes_are_deterministic(family: str, ds: dataset.Dataset,
                                              cfg: Config) -> None:
    a = export.export(trees.train(family, ds, cfg), ds.valid.X)
    b = export.export(trees.train(family, ds, cfg), ds.valid.X)
    assert a.onnx_bytes == b.onnx_bytes  # same data + seed -> same sha256 and version suffix
    other_seed = with_changes(cfg, seed=cfg.seed + 1)
    c = export.export(trees.train(family, ds, other_seed), ds.valid.X)
    assert c.onnx_bytes != a.onnx_bytes  # the seed is really used (subsampling)


def test_parity_failure_raises_for_onnx_drift(ds: dataset.Dataset, cfg: Config,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model = trees.train_lightgbm(ds, cfg)
    real = export.ort_proba
    monkeypatch.setattr(export, "ort_proba", lambda data, X: real(data, X) + 1e-3)
    with pytest.raises(export.ExportError, match=r"parity failed: max abs diff 0\.001"):
        export.export(model, ds.valid.X)


def test_parity_failure_raises_for_native_drift(ds: dataset.Dataset, cfg: Config,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model = trees.train_xgboost(ds, cfg)
    real = model.predict_proba
    monkeypatch.setattr(model, "predict_proba", lambda X: real(X) + 1e-3)
    with pytest.raises(export.ExportError, match="parity failed"):
        export.export(model, ds.valid.X)
    # A tolerance above the injected drift passes: the check measures, it does not guess.
    assert export.export(model, ds.valid.X, tol=2e-3).parity_max_abs_diff == pytest.approx(
        1e-3, abs=1e-5)


def test_export_rejects_wrong_holdout_shape(ds: dataset.Dataset, cfg: Config) -> None:
    model = trees.train_lightgbm(ds, cfg)
    with pytest.raises(export.ExportError, match="held-out rows"):
        export.export(model, ds.valid.X[:, :5])


def test_missing_class_is_a_training_error(ds: dataset.Dataset, cfg: Config) -> None:
    y = np.where(ds.rows.y == 2, 0, ds.rows.y)  # no "short wins" anywhere
    no_short = dataclasses.replace(ds, rows=dataclasses.replace(ds.rows, y=y))
    for family in trees.FAMILIES:
        with pytest.raises(trees.TrainError, match=f"{family}: the training window has classes"):
            trees.train(family, no_short, cfg)
    with pytest.raises(trees.TrainError, match="unknown model family"):
        trees.train("catboost", ds, cfg)


def test_params_follow_config(cfg: Config) -> None:
    c = with_changes(cfg, train={"n_estimators": 7, "max_depth": 3, "learning_rate": 0.2},
                     seed=9)
    xp, lp = trees.xgboost_params(c), trees.lightgbm_params(c)
    for p in (xp, lp):
        assert (p["n_estimators"], p["max_depth"], p["learning_rate"]) == (7, 3, 0.2)
        assert p["random_state"] == 9 and p["n_jobs"] == 2
    assert xp["objective"] == "multi:softprob" and xp["num_class"] == 3
    assert "early_stopping_rounds" not in xp and lp["verbose"] == -1
    assert lp["num_leaves"] <= 2 ** 3


def test_lightgbm_thresholds_that_round_up_in_float32_keep_parity() -> None:
    """LightGBM splits between two adjacent float32 training values at a double midpoint;
    stored as float32 it may round up onto the upper value, and an input exactly there
    went the other way in ONNX (a job's parity check failed on one row in 1,584)."""
    from lightgbm import LGBMClassifier

    lo = np.nextafter(np.float32(1.0), np.float32(2.0))  # odd mantissa: the midpoint
    hi = np.nextafter(lo, np.float32(2.0))  # to `hi` rounds to even, i.e. up onto hi
    assert np.float32((float(lo) + float(hi)) / 2) == hi
    rng = np.random.default_rng(0)
    n = 600
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    X[:, 0] = np.where(np.arange(n) % 2 == 0, lo, hi)
    y = np.where(X[:, 0] == hi, 1, 0)
    y[::7] = 2
    model = LGBMClassifier(n_estimators=5, num_leaves=3, min_child_samples=5,
                           verbose=-1, random_state=0).fit(X, y)
    exp = export.export(model, X)  # raised ExportError before the thresholds were fixed
    assert exp.parity_max_abs_diff < 1e-5
