"""The learner job end to end: in-process `train_main` and `python -m qtraderd.training`."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from qtraderd.features.spec import FEATURE_NAMES, FEATURES_VERSION
from qtraderd.models.artifacts import (
    ArtifactError,
    ModelMeta,
    read_artifact,
    read_champion,
    write_artifact,
)
from qtraderd.store.db import connect
from qtraderd.training import cli, export

REPO = Path(__file__).resolve().parents[2]


def _args(state: Path, models: Path, config: Path, *extra: str) -> list[str]:
    return ["--state-dir", str(state), "--models-dir", str(models), "--config", str(config),
            *extra]


def _registry(state: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(state / "qtraderd.db")
    try:
        return conn.execute("SELECT family, version, status FROM models ORDER BY family"
                            ).fetchall()
    finally:
        conn.close()


def test_train_main_end_to_end(real_store: Path, small_config: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str],
                               caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    caplog.set_level(logging.INFO, logger="qtraderd.training")
    assert cli.train_main(_args(real_store, models, small_config)) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True
    assert [m["family"] for m in result["models"]] == ["xgboost", "lightgbm"]
    assert result["dataset"]["symbols"] == ["ETHBTC", "LTCBTC", "XMRBTC"]
    registry = _registry(real_store)
    assert sorted(f for f, _, s in registry if s == "champion") == ["lightgbm", "xgboost"]
    for item in result["models"]:
        family, version = item["family"], item["version"]
        assert sorted(p.name for p in (models / family).iterdir()) == sorted(
            [f"{version}.onnx", f"{version}.json", "champion"])
        assert read_champion(models, family) == version
        assert (family, version, "champion") in registry
        meta, data = read_artifact(models, family, version)  # verifies sha256 too
        assert version.endswith("-" + meta.sha256[:8])
        datetime.strptime(version.split("-")[0], "%Y%m%dT%H%M%SZ")
        assert meta.features == list(FEATURE_NAMES)
        assert meta.features_version == FEATURES_VERSION
        assert meta.parity_max_abs_diff <= 1e-5
        assert meta.barriers == {"tp": 0.016, "sl": 0.008, "horizon": 48}
        assert meta.params["n_estimators"] == 30
        assert meta.n_train == result["dataset"]["n_train"] > 0
        assert meta.train_end < meta.valid_start <= meta.valid_end <= meta.data_end
        assert meta.metrics == item["metrics"] and meta.metrics["auc_long"] is not None
        assert len(meta.probe_inputs) == 8
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        x = np.asarray(meta.probe_inputs, dtype=np.float32)
        (proba,) = sess.run([meta.output_name], {meta.input_name: x})
        assert proba.shape == (8, 3)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(proba, meta.probe_outputs, atol=1e-6)
    text = caplog.text
    assert "dataset: 3 symbols" in text and "trained xgboost in" in text
    assert "exported lightgbm" in text and "xgboost validation (n=" in text


def test_parity_failure_writes_nothing(real_store: Path, small_config: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = export.ort_proba
    monkeypatch.setattr(export, "ort_proba", lambda data, X: real(data, X) + 1e-3)
    models = tmp_path / "models"
    code = cli.train_main(_args(real_store, models, small_config, "--families", "lightgbm"))
    assert code == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and result["models"] == []
    assert "lightgbm" in result["error"] and "parity failed" in result["error"]
    assert not models.exists() or not any(models.rglob("*"))
    assert _registry(real_store) == []


def test_existing_version_is_never_overwritten(real_store: Path, small_config: Path,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> FrozenClock:  # type: ignore[override]
            return cls(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    monkeypatch.setattr(cli, "datetime", FrozenClock)
    models = tmp_path / "models"
    args = _args(real_store, models, small_config, "--families", "xgboost")
    assert cli.train_main(args) == 0
    first = json.loads(capsys.readouterr().out)["models"][0]
    onnx_file = Path(first["path"])
    before = (onnx_file.read_bytes(), onnx_file.stat().st_mtime_ns)
    # Same data, seed and second: same version, same bytes -> the artifact is reused
    # (a retried job is idempotent), and the file is never rewritten.
    assert cli.train_main(args) == 0
    second = json.loads(capsys.readouterr().out)["models"][0]
    assert second["version"] == first["version"]
    assert (onnx_file.read_bytes(), onnx_file.stat().st_mtime_ns) == before
    # write_artifact itself refuses, even with different bytes under the same version.
    meta = ModelMeta.from_json(Path(first["meta_path"]).read_text())
    with pytest.raises(ArtifactError, match="immutable"):
        write_artifact(models, meta, before[0])
    assert onnx_file.read_bytes() == before[0]


def test_bad_input_exits_2(real_store: Path, small_config: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nn_trees = 3\n")
    assert cli.train_main(_args(real_store, models, bad)) == 2
    assert "train.n_trees" in capsys.readouterr().err
    assert cli.train_main(_args(real_store, models, small_config, "--families", "svm")) == 2
    assert "svm" in capsys.readouterr().err
    assert cli.train_main(_args(real_store, models, small_config, "--symbols", "NOPEBTC")) == 2
    assert "NOPEBTC" in capsys.readouterr().err
    assert cli.train_main(_args(real_store, models, small_config,
                                "--train-until", "yesterday")) == 2
    assert "--train-until" in capsys.readouterr().err
    assert cli.train_main(["--state-dir", str(real_store)]) == 2  # argparse usage error
    assert not models.exists()


def test_parse_time() -> None:
    assert cli.parse_time("1516400000000") == 1516400000000
    assert cli.parse_time("2018-01-19") == 1516320000000
    assert cli.parse_time("2018-01-19T01:00:00Z") == 1516323600000
    assert cli.parse_time("2018-01-19T02:00:00+01:00") == 1516323600000


def _run_module(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "qtraderd.training", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_subprocess_train(real_store: Path, small_config: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    proc = _run_module("train", *_args(real_store, models, small_config),
                       "--symbols", "ethbtc,LTCBTC", "--train-until", "2018-01-22")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True and len(result["models"]) == 2
    assert result["dataset"]["symbols"] == ["ETHBTC", "LTCBTC"]
    assert result["dataset"]["data_end"] <= 1516579200000  # 2018-01-22T00:00Z
    assert all(Path(m["path"]).is_file() for m in result["models"])
    assert "qtraderd.training: dataset: 2 symbols" in proc.stderr


def test_subprocess_empty_store_exits_2(tmp_path: Path, small_config: Path) -> None:
    missing = tmp_path / "nowhere"
    proc = _run_module("train", *_args(missing, tmp_path / "m", small_config))
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "no store" in proc.stderr
    assert not missing.exists()  # the learner does not create stores
    empty = tmp_path / "empty"
    connect(empty).close()
    proc = _run_module("train", *_args(empty, tmp_path / "m", small_config))
    assert proc.returncode == 2
    assert "no 5m bars" in proc.stderr and str(empty) in proc.stderr
    assert json.loads(proc.stdout)["ok"] is False
    assert not (tmp_path / "m").exists()


def test_learner_modules_import_no_ml_library_until_used() -> None:
    # The daemon may import the dataset/metrics helpers; only running a job loads the
    # training libraries, and `qtraderd.training` itself must stay free of them.
    # Nor ray: a job imports it only when it drives a cluster (learning.executor = "ray").
    code = ("import sys, qtraderd.training, qtraderd.training.cli, qtraderd.training.dataset, "
            "qtraderd.training.job, qtraderd.training.fit; "
            "heavy = {'xgboost', 'lightgbm', 'sklearn', 'skl2onnx', 'onnxmltools', 'torch', "
            "'ray'}; "
            "print(sorted(heavy & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"
    assert (REPO / "qtraderd" / "training" / "__init__.py").read_text().strip() == ""
