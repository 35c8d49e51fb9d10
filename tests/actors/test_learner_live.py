"""The learner off the trading path: outside a replay no step waits on a training job or
on the predictor loading a deployed model set; in a replay that holds the clock the step
waits (the swap lands at the same bar every run). Real subprocess job (held on a FIFO until
the test lets it finish), real registry and model files, a predictor stand-in that answers
`set_models` only when the test says so."""

from __future__ import annotations

import json
import os
import shutil
import sys

import trio
import trio.testing

from qtraderd.actors.learner import Job, LearnerActor
from qtraderd.core.clock import ReplayClock
from qtraderd.core.config import load, with_changes
from qtraderd.core.messages import LABEL_LONG, Scored, Step
from qtraderd.learning.registry import RegistryView
from qtraderd.learning.watch import Watch
from qtraderd.store.db import connect

T0 = 1_516_600_000_000
BAR = 300_000


def step(i: int) -> Step:
    return Step(seq=i + 1, ts=T0 + i * BAR, close_ts=T0 + (i + 1) * BAR, bars=())


async def start(trained, tmp_path, nursery, hold_clock: bool):
    shutil.copytree(trained["state"], tmp_path / "state")
    shutil.copytree(trained["models"], tmp_path / "models")
    state, models = tmp_path / "state", tmp_path / "models"
    ro = connect(state, readonly=True)
    registry = RegistryView.load(ro, models)
    ro.close()
    cfg = with_changes(load(env={}), learning={"rollback_outcomes": 1})
    in_tx, in_rx = trio.open_memory_channel[Step](100)
    out_tx, out_rx = trio.open_memory_channel[Step](100)
    pred_tx, pred_rx = trio.open_memory_channel(10)
    rec_tx, rec_rx = trio.open_memory_channel(1000)
    _, cmd_rx = trio.open_memory_channel(1)
    learner = LearnerActor(cfg, None, state, models, ReplayClock(T0), registry, in_rx,
                           out_tx, pred_tx, rec_tx, cmd_rx, hold_clock=hold_clock)
    # a rollback guard that completes on the first step: it pushes the model set again
    champ = registry.champion("xgboost")
    s = Scored("xgboost", champ, "serving", "ETHBTC", T0 - BAR, "range", 0.6, 0.05,
               LABEL_LONG, 0.016, -0.008, T0)
    learner.watches["rollback:xgboost"] = Watch("rollback", "xgboost", champ, champ, T0,
                                                {("ETHBTC", T0 - BAR): {champ: s}}, 1)
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    out = json.dumps({"ok": False, "error": "stub job let go"})
    learner._job_cmd = lambda job, ts: [  # type: ignore[method-assign]
        sys.executable, "-c", f"open({str(fifo)!r}).read(); print({out!r})"]
    learner.queue.append(Job("xgboost", ["test: a long job"], 0))
    asked: list[dict] = []
    release = trio.Event()

    async def slow_predictor() -> None:  # loading takes until the test releases it
        async for cmd in pred_rx:
            asked.append(cmd.args)
            await release.wait()
            cmd.reply.send_nowait({"spec": cmd.args, "errors": []})

    nursery.start_soon(slow_predictor)
    nursery.start_soon(learner.run)
    return learner, in_tx, out_rx, rec_rx, fifo, asked, release


async def test_live_bars_flow_while_a_job_runs_and_a_deploy_loads(trained, tmp_path,
                                                                  nursery):
    learner, in_tx, out_rx, rec_rx, fifo, asked, release = await start(
        trained, tmp_path, nursery, hold_clock=False)
    with trio.fail_after(30):  # before: the first step waited for the model load
        for i in range(50):
            await in_tx.send(step(i))
            assert (await out_rx.receive()).seq == i + 1  # every step passes straight on
    snap = learner.snapshot()
    assert snap["current_job"] == "xgboost" and snap["jobs_failed"] == 0  # job still runs
    assert len(asked) == 1 and not release.is_set()  # the set_models is still loading
    await trio.to_thread.run_sync(fifo.write_text, "go")  # let the job finish
    while (rec := await rec_rx.receive()).table != "retrain_jobs":
        pass
    assert rec.row["status"] == "failed" and rec.row["detail"] == "stub job let go"
    with trio.fail_after(10):  # the record goes out before the learner's own bookkeeping
        while learner.snapshot()["jobs_failed"] != 1:
            await trio.sleep(0.01)  # polling with a deadline
    assert learner.snapshot()["current_job"] == ""
    release.set()


async def test_replay_holding_the_clock_keeps_the_step_until_the_models_are_staged(
        trained, tmp_path, nursery):
    learner, in_tx, out_rx, _rec_rx, fifo, asked, release = await start(
        trained, tmp_path, nursery, hold_clock=True)
    await in_tx.send(step(0))
    await trio.testing.wait_all_tasks_blocked()
    assert len(asked) == 1 and out_rx.statistics().current_buffer_used == 0  # held
    release.set()  # staged: the step goes on to the job, which holds it in turn
    await trio.testing.wait_all_tasks_blocked()
    assert learner.snapshot()["current_job"] == "xgboost"
    assert out_rx.statistics().current_buffer_used == 0
    await trio.to_thread.run_sync(fifo.write_text, "go")
    assert (await out_rx.receive()).seq == 1
    assert learner.snapshot()["jobs_failed"] == 1
