"""The learning loop inside the real daemon: evaluations on the data clock, real jobs,
decisions recorded, ctl answering while a job holds the clock, deterministic replays."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
import trio

from qtraderd.control import client as ctl
from qtraderd.core.clock import iso
from qtraderd.core.config import load, to_toml, with_changes
from qtraderd.runtime.daemon import Daemon

DAY = 86_400_000


def world(trained, root: Path) -> dict:
    shutil.copytree(trained["state"], root / "state")
    shutil.copytree(trained["models"], root / "models")
    conn = sqlite3.connect(root / "state" / "qtraderd.db")
    first, last = conn.execute("SELECT min(open_time), max(open_time) FROM bars").fetchone()
    conn.close()
    sock = Path(tempfile.mkdtemp(prefix="qtl", dir="/tmp")) / "s.sock"
    return {"state": root / "state", "models": root / "models", "sock": sock,
            "first": first, "last": last}


# What these tests check (the data clock, the records, determinism) does not depend on
# model quality: the jobs train as many trees as the session's `trained` fixture.
SMALL_TREES = {"n_estimators": 25, "max_depth": 3}


def learning_daemon(w: dict, days: float = 2.5, jobs_see_config: bool = False,
                    **over) -> Daemon:
    """A replay of `days` after the initial models' data with the learner on. With
    `jobs_see_config` the daemon has a config file, so its jobs train with its settings
    (job-config.toml) instead of the defaults."""
    start = w["first"] + 11 * DAY  # after the initial models' training data
    cfg = with_changes(
        load(env={}),
        feed={"start": iso(start - DAY).replace(" ", "T"),
              "end": iso(start + int(days * DAY)).replace(" ", "T"), **over.pop("feed", {})},
        learning={"families": ("xgboost", "lightgbm"), "train_window_days": 4.0,
                  "eval_window_days": 1.0, "retrain_interval_hours": 24.0,
                  "min_retrain_gap_hours": 12.0, **over.pop("learning", {})},
        rl={"enabled": False}, **over)
    path = None
    if jobs_see_config:
        path = w["state"].parent / "qtraderd.toml"
        path.write_text(to_toml(cfg, "learning_daemon"), encoding="utf-8")
    return Daemon(cfg, w["state"], w["models"], socket_path=w["sock"], progress_every_s=0,
                  config_path=path)


def rows(db: Path, sql: str, *args):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def replay_records(db: Path) -> tuple:
    """What two replays must agree on: orders, fills and the learner's jobs."""
    return (
        rows(db, "SELECT id, ts, symbol, side, qty, risk_action FROM orders ORDER BY id"),
        rows(db, "SELECT seq, order_id, price, fee FROM fills ORDER BY seq, order_id"),
        rows(db, "SELECT family, status, version FROM retrain_jobs ORDER BY id"),
    )


def learning_replay(trained, root: Path) -> dict:
    """Two days of data (the warm-up day and one more) with the learner on and small trees,
    run to its end: six jobs of both families, each ~2.5 s (mostly the job subprocess's
    imports); the tests need four."""
    w = world(trained, root)
    d = learning_daemon(w, days=1.0, jobs_see_config=True, train=SMALL_TREES)
    code = trio.run(d.run)
    return {"w": w, "code": code, "run_id": d.run_id, "last_ts": d.feed.last_ts,
            "db": w["state"] / "qtraderd.db"}


@pytest.fixture(scope="module")
def replay(trained, tmp_path_factory) -> dict:
    """One learning replay, shared: its records are checked by the first test below, and
    the determinism test compares a second, independent replay with it (a third run of
    the same replay would prove nothing more)."""
    return learning_replay(trained, tmp_path_factory.mktemp("replay"))


def test_learner_evaluates_hourly_on_the_data_clock_and_records_jobs(replay):
    assert replay["code"] == 0
    db = replay["db"]
    evals = [r[0] for r in rows(db, "SELECT clock_ts FROM learner_evaluations WHERE run_id=? "
                                    "ORDER BY id", replay["run_id"])]
    hours = (replay["last_ts"] - evals[0]) / 3_600_000
    assert abs(len(evals) - (hours + 1)) <= 1  # one evaluation per hour of data time
    assert all(b - a == 3_600_000 for a, b in itertools.pairwise(evals))
    jobs = rows(db, "SELECT family, status, version, decision FROM retrain_jobs WHERE "
                    "run_id=? ORDER BY id", replay["run_id"])
    assert {f for f, *_ in jobs} == {"xgboost", "lightgbm"}
    # every job ends in a recorded decision; "alarm" is one: a 25-tree model can cross the
    # leakage alarm's fixed mean-AUC line on one day of samples (here 0.70 on 720), and
    # the alarm errs on the side of never deploying it
    assert all(s in ("deploy", "canary", "keep", "reject", "alarm") for _, s, *_ in jobs), jobs
    alarms = [d for _, s, _, d in jobs if s == "alarm"]
    assert all('"leakage alarm: auc=' in d for d in alarms), alarms
    registered = {(f, v) for f, v in rows(db, "SELECT family, version FROM models")}
    assert all((f, v) in registered for f, _, v, _ in jobs)  # every challenger is on record
    history = rows(db, "SELECT family, version, status FROM model_history")
    assert len(history) >= len(jobs)


async def test_ctl_answers_while_a_job_holds_the_clock(trained, tmp_path):
    w = world(trained, tmp_path)
    # default trees: the job must last while the test asks ctl what it is doing; six hours
    # after the warm-up day: the first jobs and the one asked for run before the data ends
    d = learning_daemon(w, days=0.25, feed={"exit_at_end": False})

    async def ask(cmd, **args):
        return await trio.to_thread.run_sync(ctl.request, w["sock"], cmd, args)

    async with trio.open_nursery() as n:
        await n.start(d.run)
        with trio.fail_after(120):
            while d.learner.current is None:  # wait for a job to be holding the data
                await trio.sleep(0.02)
        held_at = d.feed.seq
        learning = (await ask("learning"))["result"]
        assert learning["current_job"] in ("xgboost", "lightgbm")
        assert {"with_outcome", "without_outcome", "awaiting_outcome_in_memory"} <= set(
            learning["samples"])
        assert {"last_evaluation", "next_evaluation", "queue", "versions"} <= set(learning)
        models = (await ask("models"))["result"]
        assert {r["family"] for r in models["served"]} == {"xgboost", "lightgbm"}
        assert d.feed.seq <= held_at + 2  # the data waited for the job
        rl = await ask("rl")
        assert rl["ok"] and rl["result"]["enabled"] is False
        assert (await ask("retrain", model="xgboost"))["result"]["queued"] == ["xgboost"]
        bad = await ask("promote", model="xgboost", version="nope")
        assert not bad["ok"] and "no model xgboost/nope" in bad["error"]
        with trio.fail_after(300):
            while not d.feed.done:
                await trio.sleep(0.05)
        d.request_stop("test over")
    assert d.exit_code == 0


@pytest.mark.slow
def test_replays_with_the_learner_are_identical(replay, trained, tmp_path):
    """Jobs hold the clock: models change at the same bar, so orders and fills agree. The
    module's replay and a second one from its own copy of the same store and models."""
    again = learning_replay(trained, tmp_path)
    assert replay["code"] == again["code"] == 0
    first, second = replay_records(replay["db"]), replay_records(again["db"])
    assert len(first[2]) >= 4 and first == second  # jobs ran, same bars
