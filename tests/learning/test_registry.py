"""The registry: one set of rules for the learner's view and the direct writers, and the
start-up check that makes the store's champions and the `champion` pointer files agree
(real store, real model files)."""

from __future__ import annotations

import logging
import shutil

import pytest

from qtraderd.learning import registry
from qtraderd.learning.registry import RegistryView, reconcile
from qtraderd.models.artifacts import (
    ModelMeta,
    list_versions,
    meta_path,
    onnx_path,
    read_champion,
    sha256_bytes,
    write_artifact,
    write_champion,
)
from qtraderd.store.db import connect


@pytest.fixture
def world(trained, tmp_path):
    shutil.copytree(trained["state"], tmp_path / "state")
    shutil.copytree(trained["models"], tmp_path / "models")
    return tmp_path / "state", tmp_path / "models"


def new_version(models, family: str, new: str) -> str:
    src = read_champion(models, family)
    meta = ModelMeta.from_json(meta_path(models, family, src).read_text())
    data = onnx_path(models, family, src).read_bytes()
    write_artifact(models, ModelMeta(**{**meta.__dict__, "version": new,
                                        "sha256": sha256_bytes(data)}), data)
    return new


def history(conn, family: str) -> list[tuple[str, str]]:
    return conn.execute("SELECT version, status FROM model_history WHERE family=? "
                        "ORDER BY id", (family,)).fetchall()


def test_a_pointer_naming_a_complete_artifact_wins(world, caplog):
    """A crash after the deploy's pointer write and before its rows were stored (or a
    pointer switched by hand): the registry adopts the pointer, registering the version
    from its metadata when it has never seen it."""
    state, models = world
    conn = connect(state)
    old = registry.champions(conn)["xgboost"]
    new = new_version(models, "xgboost", "20990101T000000Z-crash")
    write_champion(models, "xgboost", new)
    with caplog.at_level(logging.WARNING, logger="qtraderd.registry"):
        repairs = reconcile(conn, models)
    assert len(repairs) == 1
    assert f"registry repaired: xgboost champion {old} -> {new}" in caplog.text
    assert registry.champions(conn)["xgboost"] == new
    status = dict(conn.execute("SELECT version, status FROM models WHERE family='xgboost'"))
    assert status[old] == "retired" and status[new] == "champion"
    assert history(conn, "xgboost")[-3:] == [(new, "candidate"), (old, "retired"),
                                             (new, "champion")]
    assert reconcile(conn, models) == []  # agreed now: nothing more to do
    conn.close()


def test_the_registry_wins_where_the_pointer_cannot_be_served(world, caplog):
    state, models = world
    conn = connect(state)
    champs = registry.champions(conn)
    (models / "xgboost" / "champion").unlink()  # lost pointer
    write_champion(models, "lightgbm", "20990101T000000Z-gone")  # names no artifact
    assert "20990101T000000Z-gone" not in list_versions(models, "lightgbm")
    before = conn.execute("SELECT count(*) FROM model_history").fetchone()[0]
    with caplog.at_level(logging.WARNING, logger="qtraderd.registry"):
        repairs = reconcile(conn, models)
    assert len(repairs) == 2
    assert f"registry repaired: xgboost pointer -> {champs['xgboost']} (the registry " \
           "wins: no pointer file)" in caplog.text
    assert f"registry repaired: lightgbm pointer -> {champs['lightgbm']}" in caplog.text
    assert read_champion(models, "xgboost") == champs["xgboost"]
    assert read_champion(models, "lightgbm") == champs["lightgbm"]
    assert registry.champions(conn) == champs  # the store is left as it was
    assert conn.execute("SELECT count(*) FROM model_history").fetchone()[0] == before
    conn.close()


def test_direct_writers_and_the_view_write_the_same_rows(world, tmp_path):
    """`qtraderd train` (direct) and the learner (view -> Records -> recorder) agree."""
    state, models = world
    new = new_version(models, "lightgbm", "20990101T000000Z-same")
    meta = ModelMeta.from_json(meta_path(models, "lightgbm", new).read_text())
    path = onnx_path(models, "lightgbm", new)
    shutil.copytree(state, tmp_path / "state2")
    direct, other = connect(state), connect(tmp_path / "state2")
    registry.register(direct, meta, path, "candidate", "test", 1)
    registry.promote(direct, models, "lightgbm", new, "test", 2)
    view = RegistryView.load(other, models)
    registry.apply(other, view.register(meta, path, "candidate", "test", 1)
                   + view.set_status("lightgbm", new, "champion", "test", 2))
    q = "SELECT * FROM models ORDER BY family, version"
    assert direct.execute(q).fetchall() == other.execute(q).fetchall()
    h = "SELECT clock_ts, family, version, status, reason FROM model_history ORDER BY id"
    assert direct.execute(h).fetchall() == other.execute(h).fetchall()
    registry.register(direct, meta, path, "candidate", "again", 3)  # idempotent per version
    assert direct.execute(h).fetchall() == other.execute(h).fetchall()
    with pytest.raises(ValueError, match="unknown model status"):
        registry.set_status(direct, "lightgbm", new, "great", "no")
    direct.close()
    other.close()


# -------------------------------------------------------------------- lineage


def test_lineage_is_checked_against_what_the_store_recorded(world):
    state, models = world
    conn = connect(state)
    view = RegistryView.load(conn, models)
    champ = read_champion(models, "lightgbm")
    true = ModelMeta.from_json(meta_path(models, "lightgbm", champ).read_text())
    assert view.lineage_problem(true) is None  # `qtraderd train` produced exactly this
    week = 7 * 86_400_000
    lie = ModelMeta(**{**true.__dict__, "data_end": true.data_end - week})
    reason = view.lineage_problem(lie)
    assert reason is not None and reason.startswith("lineage mismatch: its metadata says "
                                                    "data_end")
    stranger = ModelMeta(**{**true.__dict__, "version": "dropped"})
    assert (view.lineage_problem(stranger) or "").startswith(
        "no lineage: no job of this store produced lightgbm/dropped (its metadata borrows")
    forged = ModelMeta(**{**stranger.__dict__, "data_sha256": "f" * 64})
    assert "is not one the store produced" in (view.lineage_problem(forged) or "")
    conn.close()


def test_the_previous_champion_is_on_record_after_a_promote(world):
    """`rollback` after `promote` needs the champion before it, also after a restart
    (no rollback guard in memory) and when a retired challenger is newer than it."""
    state, models = world
    conn = connect(state)
    old = read_champion(models, "xgboost")
    kept = new_version(models, "xgboost", "zz-kept-challenger")  # newest, never served
    registry.register(conn, ModelMeta.from_json(meta_path(models, "xgboost", kept)
                                                .read_text()),
                      onnx_path(models, "xgboost", kept), "candidate", "job")
    registry.set_status(conn, "xgboost", kept, "retired", "gate: keep")
    new = new_version(models, "xgboost", "promoted")
    registry.register(conn, ModelMeta.from_json(meta_path(models, "xgboost", new)
                                                .read_text()),
                      onnx_path(models, "xgboost", new), "candidate", "ctl promote")
    registry.promote(conn, models, "xgboost", new, "ctl promote")
    view = RegistryView.load(conn, models)  # as a restarted daemon loads it
    assert view.previous_champion("xgboost", new) == old
    conn.close()
