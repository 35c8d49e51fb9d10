"""A random-walk series deploys nothing (issue 11, part A): nothing in the bars says
anything about what follows, so a real retraining job finds no skill over the class
prior, and nothing becomes champion or canary; no pointer is written."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio.testing

from qtraderd.actors.learner import Job, LearnerActor
from qtraderd.core import instruments
from qtraderd.core.clock import ReplayClock
from qtraderd.core.config import load
from qtraderd.learning.registry import RegistryView
from qtraderd.models.artifacts import read_champion
from qtraderd.store.db import connect
from tests.conftest import FAST_TRAIN


def _last(state: Path) -> int:
    conn = connect(state, readonly=True)
    try:
        return conn.execute("SELECT max(open_time) FROM bars").fetchone()[0]
    finally:
        conn.close()


async def test_a_random_walk_deploys_nothing(make_store, random_walk, tmp_path, nursery):
    """No information in the bars: a real retraining job finds no skill, and nothing is
    deployed (not champion, not canary); no pointer is written."""
    syms = [f"RW{i}BTC" for i in range(3)]
    instruments.define(*(instruments.Instrument(s, s[:3], "BTC") for s in syms))
    state = make_store(random_walk(5, 14 * 288, syms))
    models = tmp_path / "models"
    models.mkdir()
    cfg_path = tmp_path / "rw.toml"
    cfg_path.write_text(FAST_TRAIN + '[feed]\nsymbols = ["RW0BTC", "RW1BTC", "RW2BTC"]\n'
                        "[learning]\ntrain_window_days = 10\neval_window_days = 2\n")
    cfg = load(cfg_path, env={})
    last = _last(state)
    now = last + 300_000
    pred_tx, pred_rx = trio.open_memory_channel(10)
    rec_tx, rec_rx = trio.open_memory_channel(1000)
    records: list = []

    async def drain():
        async for r in rec_rx:
            records.append(r)

    nursery.start_soon(drain)
    learner = LearnerActor(cfg, cfg_path, state, models, ReplayClock(now), RegistryView(models),
                           trio.open_memory_channel(1)[1], trio.open_memory_channel(1)[0],
                           pred_tx, rec_tx, trio.open_memory_channel(1)[1], hold_clock=True)
    await learner._run_job(Job("lightgbm", ["initial: no champion yet"], 1), now)
    await trio.testing.wait_all_tasks_blocked()
    job = next(r.row for r in records if r.table == "retrain_jobs")
    assert job["status"] in ("reject", "alarm", "keep"), job
    assert read_champion(models, "lightgbm") is None
    assert {e.status for e in learner.registry.entries.values()} == {"rejected"}
    assert pred_rx.statistics().current_buffer_used == 0  # nothing pushed to serve
    decision = json.loads(job["decision"])
    assert "n=" in decision["reason"] and "95 % CI" in decision["reason"]
