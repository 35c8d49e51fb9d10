"""ctl's store queries: off the event loop, bounded, and `ctl learning` never counts the
samples table (a real store with many samples; a stand-in for the daemon's view)."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import trio

from qtraderd.control import api as api_mod
from qtraderd.control.api import ControlAPI
from qtraderd.core.clock import ReplayClock
from qtraderd.core.config import load
from qtraderd.store.db import connect

N_SAMPLES = 600_000


class View:
    """What control reads of a daemon: settings and snapshots (runtime.daemon.Daemon)."""

    def __init__(self, state_dir: Path) -> None:
        self.cfg, self.state_dir, self.run_id = load(env={}), state_dir, 1
        self.socket_path, self.credentials, self.plugins = None, None, None
        self.clock = ReplayClock(0)
        self.snaps = {"predictor": {"samples": 120, "outcomes": 100, "awaiting_outcome": 7,
                                    "served": [], "models": {}},
                      "execution": {"positions": (), "accounts": ()}}

    def status(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def actors(self) -> dict[str, dict[str, Any]]:
        return {}

    def snapshot(self, name: str) -> Mapping[str, Any]:
        return MappingProxyType(self.snaps.get(name, {}))


def big_store(trained, tmp_path) -> Path:
    state = tmp_path / "state"
    shutil.copytree(trained["state"], state)
    conn = connect(state)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO samples (run_id, symbol, ts, features, regime, global_regime, label) "
        "VALUES (?,?,?,?,?,?,?)",
        ((1 + i % 5, "ETHBTC", i, b"\0" * 64, "range", "range", None if i % 3 else 1)
         for i in range(N_SAMPLES)))
    conn.execute("COMMIT")
    conn.close()
    return state


async def test_ctl_learning_on_a_big_store_reads_no_sample_rows(trained, tmp_path,
                                                               monkeypatch):
    state = big_store(trained, tmp_path)
    statements: list[str] = []

    def traced(state_dir, **kw):
        conn = connect(state_dir, **kw)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(api_mod, "connect", traced)
    api = ControlAPI(View(state), trio.open_memory_channel(1)[0], None)
    t0 = time.perf_counter()
    with trio.fail_after(api_mod.QUERY_TIMEOUT_S):
        out = await api.learning({})
    wall = time.perf_counter() - t0
    assert out["samples"] == {"with_outcome": 100, "without_outcome": 20, "this_run": 120,
                              "stored_all_runs": N_SAMPLES,
                              "awaiting_outcome_in_memory": 7}
    assert out["learner"].startswith("disabled")
    plans = []
    check = sqlite3.connect(state / "qtraderd.db")
    for sql in statements:
        if "samples" in sql:
            plans += [r[3] for r in check.execute(f"EXPLAIN QUERY PLAN {sql}")]
    check.close()
    assert plans and not [p for p in plans if p.startswith("SCAN samples")], plans
    assert wall < 1.0, wall  # one b-tree descent, whatever the store's size


async def test_the_event_loop_answers_while_a_store_query_runs(trained, tmp_path,
                                                               monkeypatch):
    """`ctl models` (learner off: a store query) held in its thread; `ctl positions` and
    `ctl status` are answered meanwhile, so the loop, and the bars on it, keep going."""
    state = tmp_path / "state"
    shutil.copytree(trained["state"], state)
    entered, release = threading.Event(), threading.Event()
    real = api_mod.list_models

    def slow_list_models(conn):
        entered.set()
        release.wait(30)
        return real(conn)

    monkeypatch.setattr(api_mod, "list_models", slow_list_models)
    api = ControlAPI(View(state), trio.open_memory_channel(1)[0], None)
    result: dict[str, Any] = {}

    async def models() -> None:
        result["models"] = await api.models({})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(models)
        await trio.to_thread.run_sync(entered.wait, 30)
        with trio.fail_after(5):
            assert await api.positions({}) == []
            assert (await api.status({}))["run_id"] == 1
        assert "models" not in result  # still in its thread
        release.set()
    assert {r["family"] for r in result["models"]["registry"]} == {"xgboost", "lightgbm"}
