"""The learner's lifecycle: gate decisions, modes, canary promotion/retirement, automatic
rollback, ctl commands — with a real registry, real model files and a predictor stand-in
that answers `set_models` the way the real one does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import trio

from qtraderd.actors.learner import Job, LearnerActor, retrain_banner
from qtraderd.core.clock import ReplayClock
from qtraderd.core.config import load, with_changes
from qtraderd.core.messages import LABEL_LONG, LABEL_NONE, Scored
from qtraderd.learning.registry import LINEAGE_FIELDS, RegistryView
from qtraderd.models.artifacts import (
    ModelMeta,
    meta_path,
    onnx_path,
    read_champion,
    sha256_bytes,
    write_artifact,
)
from qtraderd.store.db import connect

T0 = 1_516_600_000_000


def copy_version(models: Path, family: str, src: str, new: str) -> str:
    meta = ModelMeta.from_json(meta_path(models, family, src).read_text())
    data = onnx_path(models, family, src).read_bytes()
    write_artifact(models, ModelMeta(**{**meta.__dict__, "version": new,
                                        "sha256": sha256_bytes(data)}), data)
    return new


class Harness:
    def __init__(self, learner: LearnerActor, pushed: list, records: list) -> None:
        self.learner, self.pushed, self.records = learner, pushed, records

    def statuses(self, family: str) -> dict[str, str]:
        return {e.version: e.status for e in self.learner.registry.entries.values()
                if e.family == family}

    def history(self) -> list[tuple[str, str, str]]:
        return [(r.row["family"], r.row["version"], r.row["status"]) for r in self.records
                if r.table == "model_history"]


@pytest.fixture
async def harness(trained, tmp_path, nursery):
    models = tmp_path / "models"
    shutil.copytree(trained["models"], models)
    state = tmp_path / "state"
    shutil.copytree(trained["state"], state)
    ro = connect(state, readonly=True)
    registry = RegistryView.load(ro, models)
    ro.close()
    return await make(nursery, registry, state, models)


async def make(nursery, registry, state, models, **learning) -> Harness:
    learning.setdefault("canary_outcomes", 20)
    learning.setdefault("rollback_outcomes", 20)
    cfg = with_changes(load(env={}), learning=learning)
    pushed: list = []
    records: list = []
    pred_tx, pred_rx = trio.open_memory_channel(10)
    rec_tx, rec_rx = trio.open_memory_channel(1000)
    _, in_rx = trio.open_memory_channel(1)
    out_tx, _ = trio.open_memory_channel(1)
    _, cmd_rx = trio.open_memory_channel(1)

    async def fake_predictor():
        async for cmd in pred_rx:
            pushed.append(cmd.args)
            cmd.reply.send_nowait({"spec": cmd.args, "errors": []})

    async def drain():
        async for r in rec_rx:
            records.append(r)

    nursery.start_soon(fake_predictor)
    nursery.start_soon(drain)
    clock = ReplayClock(T0)
    learner = LearnerActor(cfg, None, state, models, clock, registry, in_rx, out_tx, pred_tx,
                           rec_tx, cmd_rx, hold_clock=True)
    return Harness(learner, pushed, records)


def result(models: Path, family: str, version: str, *, skill=0.03, skill_p=0.001,
           improvement=None, p=0.01) -> dict:
    gate = {"challenger": {"value": 1.0, "n_trades": 10, "win_rate": 0.4,
                           "mean_net_return": 0.001, "log_loss": 0.95,
                           "prior_log_loss": 0.98, "skill": skill, "skill_p": skill_p},
            "champion": None, "comparison": None}
    if improvement is not None:
        gate["comparison"] = {"improvement_pct": improvement, "p_value": p, "dm_stat": 2.0}
    meta = ModelMeta.from_json(meta_path(models, family, version).read_text())
    return {"ok": True, "family": family, "version": version,
            "path": str(onnx_path(models, family, version)),
            "meta_path": str(meta_path(models, family, version)), "gate": gate,
            "lineage": {k: getattr(meta, k) for k in LINEAGE_FIELDS}}


def scored(model: str, version: str, role: str, i: int, good: bool) -> Scored:
    # good: predicts the long that wins; bad: predicts a long on a bar where nothing wins
    return Scored(model, version, role, "ETHBTC", T0 + i * 3_600_000, "range", 0.6, 0.05,
                  LABEL_LONG if good else LABEL_NONE, 0.016 if good else -0.008, -0.008,
                  T0 + i * 3_600_000 + 1)


async def test_deploy_makes_a_champion_everywhere(harness, tmp_path):
    h = harness
    models = h.learner.models_dir
    old = read_champion(models, "xgboost")
    new = copy_version(models, "xgboost", old, "20180122T050000Z-aaaa0001")
    d = await h.learner._decide(Job("xgboost", ["time"], 4), result(
        models, "xgboost", new, improvement=7.0, p=0.01), T0)
    assert d["action"] == d["applied"] == "deploy"
    assert read_champion(models, "xgboost") == new  # the pointer file, atomically
    assert h.statuses("xgboost")[new] == "champion" and h.statuses("xgboost")[old] == "retired"
    assert h.pushed[-1]["serving"]["xgboost"] == new
    assert ["xgboost", old] in h.pushed[-1]["shadow"]  # the previous one guards the new one
    await trio.testing.wait_all_tasks_blocked()
    assert ("xgboost", new, "champion") in h.history()


@pytest.mark.parametrize("improvement, p, action", [
    (7.0, 0.01, "deploy"), (7.0, 0.4, "canary"), (3.0, 0.01, "canary"), (1.0, 0.01, "keep")])
async def test_gate_bands(harness, improvement, p, action):
    h = harness
    models = h.learner.models_dir
    new = copy_version(models, "lightgbm", read_champion(models, "lightgbm"), f"v-{action}")
    d = await h.learner._decide(Job("lightgbm", ["time"], 4), result(
        models, "lightgbm", new, improvement=improvement, p=p), T0)
    assert d["action"] == action
    expected = {"deploy": "champion", "canary": "canary", "keep": "retired"}[action]
    assert h.statuses("lightgbm")[new] == expected


async def test_a_challenger_without_skill_is_rejected_even_if_it_looks_better(harness):
    h = harness
    models = h.learner.models_dir
    new = copy_version(models, "xgboost", read_champion(models, "xgboost"), "v-useless")
    d = await h.learner._decide(Job("xgboost", ["time"], 4), result(
        models, "xgboost", new, skill=-0.001, skill_p=0.6, improvement=25.0, p=0.001), T0)
    assert d["action"] == "reject" and h.statuses("xgboost")[new] == "rejected"
    assert read_champion(models, "xgboost") != new


async def test_advisory_mode_and_auto_deploy_off_never_deploy(trained, tmp_path, nursery):
    for learning, applied in (({"mode": "ADVISORY"}, "advised-deploy"),
                              ({"auto_deploy": False}, "awaiting-promote")):
        models = tmp_path / f"m-{applied}"
        shutil.copytree(trained["models"], models)
        h = await make(nursery, RegistryView(models), trained["state"], models, **learning)
        old = read_champion(models, "xgboost")
        new = copy_version(models, "xgboost", old, f"v-{applied}")
        d = await h.learner._decide(Job("xgboost", ["time"], 4), result(
            models, "xgboost", new, improvement=9.0, p=0.001), T0)
        assert d["action"] == "deploy" and d["applied"] == applied
        assert read_champion(models, "xgboost") == old and not h.pushed


async def test_canary_is_promoted_when_it_keeps_winning_live(harness):
    h = harness
    models = h.learner.models_dir
    champ = read_champion(models, "xgboost")
    new = copy_version(models, "xgboost", champ, "v-canary")
    await h.learner._decide(Job("xgboost", ["time"], 4), result(
        models, "xgboost", new, improvement=3.0, p=0.01), T0)
    assert ["xgboost", new] in h.pushed[-1]["shadow"]  # recorded, never traded
    for i in range(25):  # the canary trades the winners, the champion does not trade
        h.learner.watches["canary:xgboost"].add(scored("xgboost", new, "shadow", i, True))
        h.learner.watches["canary:xgboost"].add(
            Scored("xgboost", champ, "serving", "ETHBTC", T0 + i * 3_600_000, "range", 0.1,
                   0.1, LABEL_LONG, 0.016, -0.008, T0 + i * 3_600_000 + 1))
    await h.learner._check_watches(T0)
    assert h.statuses("xgboost")[new] == "champion"
    assert read_champion(models, "xgboost") == new


async def test_a_losing_new_champion_is_rolled_back_automatically(harness, caplog):
    h = harness
    models = h.learner.models_dir
    previous = read_champion(models, "lightgbm")
    new = copy_version(models, "lightgbm", previous, "v-worse")
    await h.learner.command("promote", {"model": "lightgbm", "version": new})
    watch = h.learner.watches["rollback:lightgbm"]
    for i in range(25):  # the new champion keeps buying losers; the previous one abstains
        watch.add(scored("lightgbm", new, "serving", i, False))
        watch.add(Scored("lightgbm", previous, "shadow", "ETHBTC", T0 + i * 3_600_000,
                         "range", 0.1, 0.1, LABEL_NONE, -0.008, -0.008,
                         T0 + i * 3_600_000 + 1))
    await h.learner._check_watches(T0 + 30 * 3_600_000)
    assert read_champion(models, "lightgbm") == previous
    assert h.statuses("lightgbm")[new] == "retired"
    assert "model rolled back: lightgbm v-worse" in caplog.text
    await trio.testing.wait_all_tasks_blocked()
    assert ("lightgbm", previous, "champion") in h.history()
    assert h.pushed[-1]["serving"]["lightgbm"] == previous


async def test_ctl_promote_rollback_retrain_and_learning(harness):
    h = harness
    models = h.learner.models_dir
    old = read_champion(models, "xgboost")
    new = copy_version(models, "xgboost", old, "v-by-hand")
    assert (await h.learner.command("promote", {"model": "xgboost", "version": new}))[
        "champion"] == new
    assert read_champion(models, "xgboost") == new
    assert (await h.learner.command("rollback", {"model": "xgboost"}))["champion"] == old
    assert read_champion(models, "xgboost") == old
    with pytest.raises(ValueError, match="no model xgboost/nope"):
        await h.learner.command("promote", {"model": "xgboost", "version": "nope"})
    assert (await h.learner.command("retrain", {"model": "nhits"}))["queued"] == ["nhits"]
    with pytest.raises(ValueError, match="unknown model family"):
        await h.learner.command("retrain", {"model": "gpt"})
    report = await h.learner.command("learning", {})
    assert report["queue"] and report["mode"] == "ENFORCED"
    listing = await h.learner.command("models", {})
    assert {r["status"] for r in listing["registry"]} >= {"champion", "retired"}


def test_banner_speaks_the_seeds_language():
    cfg = load(env={"QT_RETRAIN_INTERVAL_HOURS": "24", "QT_AI_RETRAINING_MODE": "ENFORCED"})
    assert retrain_banner(cfg).startswith("Retraining Orchestrator: ENABLED "
                                          "(retrains every 1 days")
    assert retrain_banner(load(env={"QT_CONTINUOUS_LEARNING": "false"})) == \
        "Retraining Orchestrator: DISABLED"
    assert json.dumps(load(env={"QT_AI_RETRAINING_AUTO_DEPLOY": "0"}).learning.auto_deploy) \
        == "false"


# ---------------------------------------------------------------- real job subprocesses

DAY = 86_400_000


def late_clock(trained) -> int:
    """A clock time with a full 10 + 2 day window of stored history behind it."""
    conn = connect(trained["state"], readonly=True)
    last = conn.execute("SELECT max(open_time) FROM bars").fetchone()[0]
    conn.close()
    return last - DAY


async def test_a_real_job_trains_scores_and_records_its_decision(harness, trained):
    h = harness
    now = late_clock(trained)
    h.learner.clock.advance(now)
    await h.learner._run_job(Job("lightgbm", ["time: test"], 4), now)
    await trio.testing.wait_all_tasks_blocked()
    jobs = [r.row for r in h.records if r.table == "retrain_jobs"]
    assert len(jobs) == 1 and jobs[0]["status"] in ("deploy", "canary", "keep", "reject")
    version = jobs[0]["version"]
    assert h.learner.registry.knows("lightgbm", version)  # registered with its verdict
    decision = json.loads(jobs[0]["decision"])
    assert decision["action"] == jobs[0]["status"] and decision["reason"]
    # named after the daemon's clock (data time), so a replay names it the same way
    assert version.startswith(__import__("qtraderd.core.clock", fromlist=["iso"]).iso(now)[:10]
                              .replace("-", ""))
    assert h.learner.jobs_done == 1 and h.learner.current is None


async def test_a_job_that_times_out_is_killed_recorded_and_retried(trained, tmp_path,
                                                                  nursery, autojump_clock,
                                                                  caplog):
    models = tmp_path / "models"
    shutil.copytree(trained["models"], models)
    h = await make(nursery, RegistryView(models), trained["state"], models,
                   job_timeout_s=30.0, retry_backoff_s=60.0)
    now = late_clock(trained)
    h.learner.clock.advance(now)
    # The autojump clock skips to the deadline as soon as everything waits on the child.
    await h.learner._run_job(Job("xgboost", ["time: test"], 4), now)
    await trio.testing.wait_all_tasks_blocked()
    jobs = [r.row for r in h.records if r.table == "retrain_jobs"]
    assert jobs[0]["status"] == "failed" and "timed out after 30 s" in jobs[0]["detail"]
    assert "retrain failed: xgboost" in caplog.text
    retry = h.learner.queue[0]
    assert retry.family == "xgboost" and retry.attempt == 2
    assert retry.not_before == now + 60_000  # backoff in clock time
    assert read_champion(models, "xgboost") == read_champion(trained["models"], "xgboost")


async def test_a_model_dropped_in_by_hand_is_refused_before_any_job(trained, tmp_path,
                                                                     nursery, caplog):
    """An operator's file has no lineage in the store: it cannot be verified, so the gate
    never judges (or deploys) it; no job process is even started. (`ctl promote` can.)"""
    models = tmp_path / "models"
    shutil.copytree(trained["models"], models)
    champ = read_champion(models, "xgboost")
    copy_version(models, "xgboost", champ, "dropped-by-hand")
    h = await make(nursery, load_view(trained["state"], models), trained["state"], models)
    now = late_clock(trained)
    h.learner.clock.advance(now)
    h.learner.first_ts = now
    h.learner.data_start = now - 20 * DAY
    await h.learner.evaluate(now)
    job = next(j for j in h.learner.queue if j.version == "dropped-by-hand")
    h.learner.queue = [job]
    h.learner._job_cmd = None  # type: ignore[assignment]  # a job would fail loudly
    await h.learner._maybe_start_job(now)
    await trio.testing.wait_all_tasks_blocked()
    row = next(r.row for r in h.records if r.table == "retrain_jobs")
    assert row["version"] == "dropped-by-hand" and row["status"] == "refused", row
    assert row["detail"].startswith("refused: no lineage: no job of this store produced")
    assert h.statuses("xgboost")["dropped-by-hand"] == "rejected"
    assert read_champion(models, "xgboost") == champ and not h.pushed
    assert "gate refused: xgboost dropped-by-hand: no lineage" in caplog.text
    listing = await h.learner.command("models", {})
    mine = next(r for r in listing["registry"] if r["version"] == "dropped-by-hand")
    assert mine["gate"] == "refused" and mine["reason"].startswith("refused: no lineage")
    # the operator can still deploy it by hand; the override is logged
    await h.learner.command("promote", {"model": "xgboost", "version": "dropped-by-hand"})
    assert read_champion(models, "xgboost") == "dropped-by-hand"
    assert "promote overrides the gate: xgboost dropped-by-hand (was rejected: refused: " \
        "no lineage" in caplog.text


def load_view(state: Path, models: Path) -> RegistryView:
    conn = connect(state, readonly=True)
    try:
        return RegistryView.load(conn, models)
    finally:
        conn.close()
