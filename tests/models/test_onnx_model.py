"""Serving checks: a model file is served only if every check passes, else a clear reason."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from qtraderd.features.spec import N_FEATURES
from qtraderd.models.artifacts import (
    ArtifactError,
    ModelMeta,
    atomic_write,
    list_versions,
    meta_path,
    onnx_path,
    read_champion,
    sha256_bytes,
    write_artifact,
)
from qtraderd.models.onnx_model import load_champions, load_model


@pytest.fixture
def models(trained, tmp_path):
    d = tmp_path / "models"
    shutil.copytree(trained["models"], d)
    return d


def a_version(models, family="xgboost"):
    return read_champion(models, family)


def test_champions_load_and_predict_probabilities(models):
    loaded, errors = load_champions(models)
    assert errors == [] and sorted(loaded) == ["lightgbm", "xgboost"]
    x = np.random.default_rng(0).normal(0, 0.01, (5, N_FEATURES)).astype(np.float32)
    for m in loaded.values():
        p = m.predict(x)
        assert p.shape == (5, 3)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
        assert m.data_end > 0


def test_corrupt_model_file_is_refused(models):
    v = a_version(models)
    p = onnx_path(models, "xgboost", v)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"sha256 .* does not match"):
        load_model(models, "xgboost", v)
    loaded, errors = load_champions(models)
    assert "xgboost" not in loaded and "lightgbm" in loaded
    assert any("xgboost" in e for e in errors)


def test_half_written_model_is_refused(models):
    v = a_version(models)
    p = onnx_path(models, "xgboost", v)
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="corrupt or half-written"):
        load_model(models, "xgboost", v)


def _rewrite_meta(models, family, version, **changes):
    mp = meta_path(models, family, version)
    data = json.loads(mp.read_text())
    data.update(changes)
    mp.write_text(json.dumps(data))


def test_model_for_other_features_is_refused(models):
    v = a_version(models)
    _rewrite_meta(models, "xgboost", v, features=["a", "b"])
    with pytest.raises(ArtifactError, match="built for features"):
        load_model(models, "xgboost", v)


def test_failed_parity_probe_is_refused(models):
    v = a_version(models)
    meta = json.loads(meta_path(models, "xgboost", v).read_text())
    bad = [[p + 0.01 for p in row] for row in meta["probe_outputs"]]
    _rewrite_meta(models, "xgboost", v, probe_outputs=bad)
    with pytest.raises(ArtifactError, match="parity probe failed"):
        load_model(models, "xgboost", v)


def test_wrong_output_name_is_refused(models):
    v = a_version(models)
    _rewrite_meta(models, "xgboost", v, output_name="nope")
    with pytest.raises(ArtifactError, match="expected input 'input' and output 'nope'"):
        load_model(models, "xgboost", v)


def test_missing_metadata_and_non_onnx_bytes(models):
    v = a_version(models)
    meta_path(models, "xgboost", v).unlink()
    with pytest.raises(ArtifactError, match="metadata file missing"):
        load_model(models, "xgboost", v)
    # garbage with a matching hash: onnxruntime itself refuses it
    lv = a_version(models, "lightgbm")
    meta = ModelMeta.from_json(meta_path(models, "lightgbm", lv).read_text())
    junk = b"not an onnx model"
    fake = ModelMeta(**{**meta.__dict__, "version": "junk-1", "sha256": sha256_bytes(junk)})
    write_artifact(models, fake, junk)
    with pytest.raises(ArtifactError, match="onnxruntime cannot load it"):
        load_model(models, "lightgbm", "junk-1")


def test_artifacts_are_immutable_and_written_atomically(models, tmp_path):
    lv = a_version(models, "lightgbm")
    meta, data = ModelMeta.from_json(meta_path(models, "lightgbm", lv).read_text()), \
        onnx_path(models, "lightgbm", lv).read_bytes()
    with pytest.raises(ArtifactError, match="already exists"):
        write_artifact(models, meta, data)
    atomic_write(tmp_path / "x.bin", b"abc")
    assert (tmp_path / "x.bin").read_bytes() == b"abc"
    assert not list(tmp_path.glob(".*.tmp"))
    # an .onnx without its .json is not a complete artifact
    (models / "lightgbm" / "partial.onnx").write_bytes(data)
    assert "partial" not in list_versions(models, "lightgbm")
