"""The learner's side of the honest gate: leakage alarms and lineage refusals are stored,
logged and never served; a models directory holding files the registry does not know
(B11): the serving champion is never marked rejected, other families are not ours,
`rollback` after `promote` has somewhere to go, a deleted pointer is logged. Real
registry and model files; a predictor stand-in (tests/actors/test_learner.py)."""

from __future__ import annotations

import json
import logging
import shutil

import trio
import trio.testing

from qtraderd.actors.learner import Job
from qtraderd.actors.predictor import PredictorActor
from qtraderd.features.labels import Barriers
from qtraderd.learning.registry import RegistryView
from qtraderd.models.artifacts import meta_path, read_champion, write_champion
from qtraderd.models.modelset import ModelSet, load_spec
from tests.actors.test_learner import T0, copy_version, load_view, make, result


async def harness_for(trained, tmp_path, nursery, **learning):
    models = tmp_path / "models"
    shutil.copytree(trained["models"], models)
    return await make(nursery, load_view(trained["state"], models), trained["state"],
                      models, **learning)


def leaky(models, family, version) -> dict:
    r = result(models, family, version, skill=0.31, skill_p=0.0005, improvement=40.0,
               p=0.001)
    r["gate"]["challenger"].update(n=1584, skill_lo=0.25, skill_hi=0.37, auc_long=0.88,
                                   auc_short=0.86)
    return r


async def test_a_leakage_alarm_is_stored_logged_and_never_served(trained, tmp_path,
                                                                 nursery, caplog):
    h = await harness_for(trained, tmp_path, nursery)
    models = h.learner.models_dir
    champ = read_champion(models, "lightgbm")
    new = copy_version(models, "lightgbm", champ, "v-leaky")
    d = await h.learner._decide(Job("lightgbm", ["time"], 4), leaky(models, "lightgbm", new),
                                T0)
    assert d["action"] == "alarm"
    assert "leakage alarm: lightgbm v-leaky auc=0.870 skill=+0.310" in caplog.text
    assert h.statuses("lightgbm")[new] == "rejected"
    assert read_champion(models, "lightgbm") == champ and not h.pushed
    assert "canary:lightgbm" not in h.learner.watches
    listing = await h.learner.command("models", {})
    row = next(r for r in listing["registry"] if r["version"] == new)
    assert row["gate"] == "alarm" and row["reason"].startswith("leakage alarm: auc=0.870")
    await trio.testing.wait_all_tasks_blocked()
    hist = [r.row for r in h.records if r.table == "model_history"
            and r.row["version"] == new]
    assert hist[-1]["status"] == "rejected" and hist[-1]["reason"].startswith("leakage alarm")


async def test_a_job_result_whose_metadata_file_lies_is_refused(trained, tmp_path, nursery,
                                                               caplog):
    """The job reports what it produced; a metadata file that says otherwise (here a
    data_end a week earlier, written after the job) is refused before any verdict."""
    h = await harness_for(trained, tmp_path, nursery)
    models = h.learner.models_dir
    new = copy_version(models, "xgboost", read_champion(models, "xgboost"), "v-edited")
    r = result(models, "xgboost", new, improvement=9.0, p=0.001)
    path = meta_path(models, "xgboost", new)
    data = json.loads(path.read_text())
    data["data_end"] -= 7 * 86_400_000
    path.write_text(json.dumps(data))
    d = await h.learner._decide(Job("xgboost", ["time"], 4), r, T0)
    assert d["action"] == "refused" and d["reason"].startswith(
        "refused: lineage mismatch: its metadata says data_end")
    assert h.statuses("xgboost")[new] == "rejected" and not h.pushed
    assert "gate refused: xgboost v-edited: lineage mismatch" in caplog.text


async def test_a_pointer_switched_by_hand_is_adopted_not_rejected(trained, tmp_path, nursery,
                                                                  caplog):
    """B11: the predictor serves what the pointer names; the registry follows it instead
    of gating (and rejecting) the model that serves."""
    h = await harness_for(trained, tmp_path, nursery)
    models = h.learner.models_dir
    old = read_champion(models, "xgboost")
    new = copy_version(models, "xgboost", old, "v-by-pointer")
    write_champion(models, "xgboost", new)
    now = T0 + 30 * 86_400_000
    h.learner.first_ts, h.learner.data_start = now, now - 30 * 86_400_000
    await h.learner.evaluate(now)
    assert not any(j.version == new for j in h.learner.queue)
    assert h.statuses("xgboost")[new] == "champion"
    assert h.statuses("xgboost")[old] == "retired"
    assert f"registry repaired: xgboost champion {old} -> v-by-pointer" in caplog.text
    # and `rollback` goes back to the one before it
    assert (await h.learner.command("rollback", {"model": "xgboost"}))["champion"] == old


async def test_families_outside_learning_families_are_not_ours(trained, tmp_path, nursery):
    h = await harness_for(trained, tmp_path, nursery, families=("lightgbm",))
    models = h.learner.models_dir
    copy_version(models, "xgboost", read_champion(models, "xgboost"), "v-other-family")
    copy_version(models, "lightgbm", read_champion(models, "lightgbm"), "v-ours")
    now = T0 + 30 * 86_400_000
    h.learner.first_ts, h.learner.data_start = now, now - 30 * 86_400_000
    await h.learner.evaluate(now)
    assert {j.family for j in h.learner.queue} == {"lightgbm"}
    assert {j.version for j in h.learner.queue} <= {None, "v-ours"}


async def test_rollback_after_promote_of_a_pointer_only_champion(trained, tmp_path, nursery):
    """B11: the champion the store never recorded (pointer only) is recorded by the
    promote that replaces it, so `rollback` finds it — also without the rollback guard
    (as after a restart)."""
    models = tmp_path / "models"
    shutil.copytree(trained["models"], models)
    old = copy_version(models, "lightgbm", read_champion(models, "lightgbm"), "v-pointer")
    write_champion(models, "lightgbm", old)
    h = await make(nursery, RegistryView(models), trained["state"], models)  # knows nothing
    new = copy_version(models, "lightgbm", old, "v-promoted")
    await h.learner.command("promote", {"model": "lightgbm", "version": new})
    h.learner.watches.clear()  # a restarted daemon has no rollback guard in memory
    assert (await h.learner.command("rollback", {"model": "lightgbm"}))["champion"] == old
    assert read_champion(models, "lightgbm") == old
    # a second rollback does not go "back" to the version just rolled back
    await h.learner.command("promote", {"model": "lightgbm", "version": new})
    third = copy_version(models, "lightgbm", old, "v-third")
    await h.learner.command("promote", {"model": "lightgbm", "version": third})
    h.learner.watches.clear()
    assert (await h.learner.command("rollback", {"model": "lightgbm"}))["champion"] == new
    assert (await h.learner.command("rollback", {"model": "lightgbm"}))["champion"] == old


def test_a_deleted_champion_pointer_is_logged_once(trained, tmp_path, caplog):
    models = tmp_path / "models"
    shutil.copytree(trained["models"], models)
    champ = read_champion(models, "xgboost")
    wanted = {f: read_champion(models, f) for f in ("xgboost", "lightgbm")}
    served, errors = load_spec(models, wanted, [], ModelSet())
    assert not errors
    p = PredictorActor(Barriers(0.016, 0.008, 48), served, trio.open_memory_channel(1)[1],
                       trio.open_memory_channel(1)[0], models_dir=models)
    (models / "xgboost" / "champion").unlink()
    with caplog.at_level(logging.WARNING):
        assert p.reload_from_disk() is None  # keeps serving
        p.reload_from_disk()
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("champion pointer deleted: xgboost")]
    assert lines == [f"champion pointer deleted: xgboost ({champ} keeps serving; the "
                     "start-up check rewrites the pointer from the registry)"]
    assert p.models.serving["xgboost"].version == champ
