"""The daemon end to end: the real actor chain over real candles, in process and as a
real subprocess (signals, exit codes, what it imports)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import trio

from qtraderd.actors.sizer import SizerActor
from qtraderd.control import client as ctl
from qtraderd.core.config import load, with_changes
from qtraderd.runtime.daemon import EXIT_ESCALATED, Daemon
from qtraderd.store.db import connect
from tests.conftest import REPO


@pytest.fixture
def world(trained, tmp_path):
    """A private copy of the trained store and models, and a short socket path."""
    shutil.copytree(trained["state"], tmp_path / "state")
    shutil.copytree(trained["models"], tmp_path / "models")
    sock_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="qt"))
    yield {"state": tmp_path / "state", "models": tmp_path / "models",
           "sock": sock_dir / "s.sock", "root": tmp_path}
    shutil.rmtree(sock_dir, ignore_errors=True)


# Tiny test models rarely clear the costs; loosen the entry rule so the chain trades.
LOOSE = {"min_edge_pct": -0.5, "min_confidence": 0.25}
LOOSE_ENV = {"QT_SIZING_MIN_EDGE_PCT": "-0.5", "QT_SIZING_MIN_CONFIDENCE": "0.25",
             "QT_LEARNING_ENABLED": "false", "QT_RL_ENABLED": "false"}


def daemon(world, **sections):
    """The trading core alone: the learner and the RL sizer have their own tests."""
    sections.setdefault("sizing", LOOSE)
    sections.setdefault("learning", {"enabled": False})
    sections.setdefault("rl", {"enabled": False})
    cfg = with_changes(load(env={}), **sections)
    return Daemon(cfg, world["state"], world["models"], socket_path=world["sock"],
                  progress_every_s=0)


def rows(db: Path, sql: str, *args):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def test_replay_end_to_end_records_everything(world):
    d = daemon(world)
    assert await d.run() == 0
    db = world["state"] / "qtraderd.db"
    run = rows(db, "SELECT status, bars, first_ts, last_ts FROM runs WHERE id=?", d.run_id)[0]
    stored = rows(db, "SELECT count(*) FROM bars")[0][0]
    assert run[0] == "finished" and run[1] == stored  # every bar replayed, none invented
    n = {t: rows(db, f"SELECT count(*) FROM {t} WHERE run_id=?", d.run_id)[0][0]
         for t in ("samples", "predictions", "orders", "fills", "trades", "equity", "signals")}
    assert n["trades"] > 10 and n["fills"] >= 2 * n["trades"] and n["orders"] >= n["trades"]
    assert n["predictions"] == 3 * rows(db, "SELECT count(DISTINCT symbol || ts) FROM "
                                             "predictions WHERE run_id=?", d.run_id)[0][0]
    # every sample with a full horizon behind it got its outcome
    unlabelled = rows(db, "SELECT count(*) FROM samples WHERE run_id=? AND label IS NULL",
                      d.run_id)[0][0]
    assert 0 < unlabelled <= 3 * 48
    # fills happen strictly after the signal bar, at the next bar's open (+ slippage)
    for oid, fill_ts, price in rows(db, "SELECT order_id, ts, price FROM fills WHERE run_id=? "
                                        "AND reason='entry'", d.run_id)[:50]:
        order_ts, symbol = rows(db, "SELECT ts, symbol FROM orders WHERE run_id=? AND "
                                    "client_id=?",
                                d.run_id, oid)[0]
        assert fill_ts > order_ts
        nxt = rows(db, "SELECT open_time, open FROM bars WHERE symbol=? AND open_time>? "
                       "ORDER BY open_time LIMIT 1", symbol, order_ts)[0]
        assert fill_ts == nxt[0] and price == pytest.approx(nxt[1], rel=3e-4)
    # trades are net of fees, and the summary agrees with the trades table
    fees, gross, net = rows(db, "SELECT sum(fees), sum(gross_pnl), sum(net_pnl) FROM trades "
                                "WHERE run_id=?", d.run_id)[0]
    assert fees > 0 and net == pytest.approx(gross - fees)
    assert d.recorder.batches_acked < d.feed.seq / 10  # writes were batched
    assert d.recorder.steps_written == d.feed.seq


async def test_two_replays_with_the_same_seed_are_identical(world, tmp_path):
    results = []
    for i in range(2):
        w = dict(world, state=tmp_path / f"s{i}")
        shutil.copytree(world["state"], w["state"])
        d = daemon(w)
        assert await d.run() == 0
        db = w["state"] / "qtraderd.db"
        results.append((
            rows(db, "SELECT id, seq, ts, symbol, side, qty, ref_price, purpose, reason, "
                     "risk_action, risk_reason, approved_qty FROM orders ORDER BY id"),
            rows(db, "SELECT seq, order_id, ts, symbol, side, qty, price, fee, reason FROM fills "
                     "ORDER BY seq, order_id"),
        ))
    assert len(results[0][0]) > 10 and len(results[0][1]) > 10
    assert results[0] == results[1]


async def test_every_channel_is_bounded(world):
    d = daemon(world)
    await d.run()
    assert d.channels and all(math.isfinite(ch.statistics().max_buffer_size)
                              for ch in d.channels.values())


async def test_control_socket_against_a_running_daemon(world):
    d = daemon(world, feed={"exit_at_end": False})
    path = world["sock"]

    async def ask(cmd, **args):
        return await trio.to_thread.run_sync(ctl.request, path, cmd, args)

    async with trio.open_nursery() as n:
        await n.start(d.run)
        with trio.fail_after(30):
            while not d.feed.done or d.recorder.status()["buffered_steps"]:
                await trio.sleep(0.05)
        st = (await ask("status"))["result"]
        assert st["mode"] == "paper" and st["bars"] > 10_000 and st["risk_state"] in (
            "ACTIVE", "REDUCING", "HALTED")
        assert set(st["actors"]) == {"feed", "execution", "monitor", "predictor", "sizer",
                                     "risk", "recorder"}
        assert all(a["restarts"] == 0 for a in st["actors"].values())
        modules = (await ask("modules"))["result"]
        assert {m["module"] for m in modules} >= {"store", "clock", "models", "risk",
                                                  "actor:predictor", "control"}
        assert (await ask("models"))["result"]["served"]
        assert isinstance((await ask("positions"))["result"], list)
        trades = (await ask("trades", limit=5))["result"]
        assert 0 < len(trades) <= 5 and {"symbol", "net_pnl", "reason"} <= set(trades[0])
        assert (await ask("pnl"))["result"]["accounts"]
        assert (await ask("halt", reason="test"))["result"]["risk_state"] == "HALTED"
        assert (await ask("status"))["result"]["risk_state"] == "HALTED"
        assert (await ask("resume"))["result"]["risk_state"] == "ACTIVE"
        assert "ETHBTC" in (await ask("pause", symbol="ethbtc"))["result"]["paused_symbols"]
        assert "ETHBTC" not in (await ask("resume-symbol", symbol="ETHBTC"))["result"][
            "paused_symbols"]
        bad = await ask("resume-symbol", symbol="ETHBTC")
        assert bad["ok"] is False and "not paused" in bad["error"]
        assert (await ask("flatten"))["ok"]
        unknown = await ask("launch-rockets")
        assert unknown["ok"] is False and "unknown command" in unknown["error"]
        assert (await ask("status"))["ok"]  # still alive after bad requests
        d.request_stop("test over")
    assert d.exit_code == 0
    events = rows(world["state"] / "qtraderd.db", "SELECT state, reason FROM risk_events "
                  "WHERE run_id=? ORDER BY id", d.run_id)
    assert ("HALTED", "MANUAL") in events and ("ACTIVE", "RESUMED") in events


async def test_crashing_actor_restarts_then_escalation_exits_nonzero(world, monkeypatch,
                                                                     caplog):
    calls = {"n": 0}
    real = SizerActor.handle

    def flaky(self, step):
        if step.predictions:
            calls["n"] += 1
            if calls["n"] == 1 or calls["n"] > 50:
                raise RuntimeError("sizer bug")
        return real(self, step)

    monkeypatch.setattr(SizerActor, "handle", flaky)
    d = daemon(world, runtime={"restart_backoff_s": 0.0, "restart_intensity": 3,
                               "restart_period_s": 3600.0})
    code = await d.run()
    assert code == EXIT_ESCALATED
    h = d.supervisor.handles
    assert h["sizer"].restarts == 4 and h["sizer"].state == "failed"
    assert all(h[a].restarts == 0 for a in h if a != "sizer")  # one-for-one
    db = world["state"] / "qtraderd.db"
    ev = rows(db, "SELECT actor, event FROM actor_events WHERE run_id=? ORDER BY id", d.run_id)
    assert ev[0] == ("sizer", "restarted") and ev[-1] == ("sizer", "escalated")
    assert rows(db, "SELECT status, exit_code FROM runs WHERE id=?", d.run_id)[0] == (
        "escalated", EXIT_ESCALATED)
    assert "actor restarted: sizer" in caplog.text


def _spawn(world, *extra, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env.update(LOOSE_ENV)
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-m", "qtraderd", "run", "--state-dir", str(world["state"]),
         "--models-dir", str(world["models"]), *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_stops_cleanly_within_5s_and_flushes(world):
    sock = world["state"] / "qtraderd.sock"
    proc = _spawn(world, env_extra={"QT_FEED_SPEED": "20000"})  # ~15 ms per step
    try:
        deadline = time.monotonic() + 30
        steps = 0
        while time.monotonic() < deadline and steps < 50:
            if sock.exists():
                with contextlib.suppress(ctl.CtlError):
                    steps = ctl.request(sock, "status")["result"]["steps"]
            time.sleep(0.05)
        assert steps >= 50, "daemon did not start replaying"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert elapsed < 5.0
    assert "stopping: received SIGTERM" in err and "qtraderd run summary" in out
    conn = connect(world["state"], readonly=True)
    run_id, status, bars = conn.execute(
        "SELECT id, status, bars FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    equity_steps = conn.execute("SELECT count(DISTINCT seq) FROM equity WHERE run_id=?",
                                (run_id,)).fetchone()[0]
    assert status == "stopped"
    assert equity_steps >= 50 and bars > 0  # what was processed was flushed
    assert not sock.exists()


def test_daemon_process_never_imports_training_libraries(world):
    code = (
        "import sys, trio\n"
        "from qtraderd.core.config import load\n"
        "from qtraderd.runtime.daemon import Daemon\n"
        f"d = Daemon(load(env={LOOSE_ENV!r}), {str(world['state'])!r}, {str(world['models'])!r}, "
        f"socket_path={str(world['sock'])!r}, progress_every_s=0)\n"
        "assert trio.run(d.run) == 0\n"
        "assert d.predictor.predictions > 0\n"
        "print(sorted(m for m in ('torch', 'xgboost', 'lightgbm', 'sklearn', 'skl2onnx', 'ray') "
        "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_summary_json_report_for_a_past_run(world):
    proc = _spawn(world)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    rep = subprocess.run([sys.executable, "-m", "qtraderd", "report", "--state-dir",
                          str(world["state"]), "--json"], capture_output=True, text=True,
                         cwd=REPO)
    assert rep.returncode == 0
    s = json.loads(rep.stdout)
    assert s["accounts"][0]["quote"] == "BTC" and s["accounts"][0]["trades"] > 0
    assert {r["symbol"] for r in s["symbols"]} == {"ETHBTC", "LTCBTC", "XMRBTC"}
    assert 37 < s["run"]["breakeven_win_rate_pct"] < 41
