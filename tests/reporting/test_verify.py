"""`qtraderd verify` against a real daemon (in process, holding at the end of its replay):
a healthy one passes every check; breaking things on disk fails exactly the right rows;
without a daemon the daemon checks fail; an empty store fails."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
import trio

from qtraderd import cli
from qtraderd.control import client as ctl
from qtraderd.core.config import load, with_changes
from qtraderd.models.artifacts import read_champion, write_champion
from qtraderd.reporting.verify import FAIL, PASS, SKIP, Check, render, verify
from qtraderd.runtime.daemon import Daemon

BOGUS = "20990101T000000Z-notserved"


@pytest.fixture
def world(trained, tmp_path):
    shutil.copytree(trained["state"], tmp_path / "state")
    shutil.copytree(trained["models"], tmp_path / "models")
    (tmp_path / "plugins").mkdir()
    sock_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="qtv"))
    yield {"state": tmp_path / "state", "models": tmp_path / "models",
           "plugins": tmp_path / "plugins", "sock": sock_dir / "s.sock", "root": tmp_path}
    shutil.rmtree(sock_dir, ignore_errors=True)


def seed_job(state: Path, family: str, status: str, detail: str = "") -> None:
    """A retrain_jobs row as the learner writes it (as if from an earlier run)."""
    conn = sqlite3.connect(state / "qtraderd.db")
    try:
        conn.execute(
            "INSERT INTO retrain_jobs (family, reason, priority, attempt, started_at, "
            "clock_ts, status, version, detail) VALUES (?,?,?,?,?,?,?,?,?)",
            (family, "time", 1, 1, "2024-01-01T00:00:00+00:00", 1_516_000_000_000, status,
             None, detail))
        conn.commit()
    finally:
        conn.close()


def healthy_daemon(world) -> Daemon:
    """The whole chain with the learner on; its windows are too long for any job to start,
    so it only evaluates its triggers every data hour (what verify checks). The replay
    covers the store's last four days (the models' out-of-sample span; the bars before
    are its warm-up): what verify checks does not depend on the replay's length."""
    cfg = with_changes(
        load(env={}), sizing={"min_edge_pct": -0.5, "min_confidence": 0.25},
        rl={"enabled": False}, feed={"exit_at_end": False, "start": "2018-01-26"},
        learning={"families": ("xgboost", "lightgbm"), "train_window_days": 1000.0})
    extra = {"plugins_dir": world["plugins"]} if "plugins_dir" in Daemon.__dataclass_fields__ \
        else {}
    return Daemon(cfg, world["state"], world["models"], socket_path=world["sock"],
                  progress_every_s=0, **extra)


async def run_verify(**kwargs) -> dict[str, Check]:
    kwargs.setdefault("wait_s", 0.2)
    checks = await trio.to_thread.run_sync(functools.partial(verify, **kwargs))
    by_name = {c.check: c for c in checks}
    assert len(by_name) == len(checks)
    return by_name


async def run_cli(*argv: str) -> tuple[int, str]:
    def call() -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["verify", *argv])
        return code, out.getvalue()

    return await trio.to_thread.run_sync(call)


def results(checks: dict[str, Check]) -> dict[str, str]:
    return {name: c.result for name, c in checks.items()}


async def wait_recorded(d: Daemon) -> None:
    """The replay is over and everything it produced is in the store."""
    db = d.state_dir / "qtraderd.db"
    with trio.fail_after(180):
        while not d.feed.done or d.recorder.status()["buffered_steps"]:
            await trio.sleep(0.05)
        while True:
            conn = sqlite3.connect(db)
            n = conn.execute("SELECT count(*) FROM learner_evaluations WHERE run_id=?",
                             (d.run_id,)).fetchone()[0]
            conn.close()
            if n >= d.learner.evaluations > 0:
                return
            await trio.sleep(0.05)


async def test_verify_a_healthy_then_broken_then_stopped_daemon(world):
    seed_job(world["state"], "xgboost", "keep", "challenger not better")
    d = healthy_daemon(world)
    champion = read_champion(world["models"], "xgboost")
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await wait_recorded(d)

        checks = await run_verify(socket_path=world["sock"])
        table = render(list(checks.values()))
        assert FAIL not in results(checks).values(), table
        assert table.rstrip().endswith("verify: OK")
        expected = {"daemon", "store", "feed", "predictions", "orders", "samples",
                    "triggers", "retrain", "models", "plugins"}
        assert set(checks) == expected
        assert {n for n, r in results(checks).items() if r == PASS} >= expected - {"plugins"}
        assert "replay complete" in checks["feed"].detail
        assert "xgboost: keep" in checks["retrain"].detail
        assert f"xgboost {champion}" in checks["models"].detail
        assert checks["models"].detail.startswith("registry, pointer, served agree")
        assert checks["plugins"].result in (PASS, SKIP)

        code, out = await run_cli("--socket", str(world["sock"]), "--json", "--wait", "0.1")
        report = json.loads(out)
        assert code == 0 and report["ok"] is True and len(report["checks"]) == len(expected)

        # Break it: the champion pointer names a version the daemon does not (cannot) serve,
        # the last lightgbm retrain failed, and a broken plugin file arrives.
        write_champion(world["models"], "xgboost", BOGUS)
        seed_job(world["state"], "lightgbm", "failed", "exit code 1")
        plugins = d.plugins is not None if hasattr(d, "plugins") else False
        if plugins:
            (world["plugins"] / "broken.py").write_text("this is not python (\n")
            with trio.fail_after(30):
                while not any(p["state"] == "rejected" for p in
                              d.plugins.status()["plugins"]):
                    await trio.sleep(0.05)
        checks = await run_verify(socket_path=world["sock"])
        failed = {n for n, r in results(checks).items() if r == FAIL}
        assert failed == {"models", "retrain"} | ({"plugins"} if plugins else set()), \
            render(list(checks.values()))
        models = checks["models"].detail
        assert f"xgboost: registry {champion}, pointer {BOGUS}, served {champion}" in models
        assert "lightgbm" not in models  # it agrees everywhere
        assert "lightgbm: failed (attempt 1)" in checks["retrain"].detail
        assert "exit code 1" in checks["retrain"].detail
        if plugins:
            assert "broken rejected" in checks["plugins"].detail
        code, out = await run_cli("--socket", str(world["sock"]), "--wait", "0.1")
        assert code == 1 and "verify: FAILED (" in out

        d.request_stop("test over")

    # No daemon any more: whatever depends on it fails, and says why.
    checks = await run_verify(socket_path=world["sock"], state_dir=world["state"],
                              models_dir=world["models"])
    for name in ("daemon", "feed", "models", "plugins"):
        assert checks[name].result == FAIL and "daemon not running" in checks[name].detail
    code, _ = await run_cli("--socket", str(world["sock"]), "--state-dir",
                            str(world["state"]), "--wait", "0")
    assert code == 1

    # --offline checks the finished run from the store alone; the breakage is still there.
    checks = await run_verify(state_dir=world["state"], models_dir=world["models"],
                              offline=True)
    assert results(checks) == {
        "daemon": SKIP, "store": PASS, "feed": PASS, "predictions": PASS, "orders": PASS,
        "samples": PASS, "triggers": PASS, "retrain": FAIL, "models": FAIL,
        "plugins": SKIP}, render(list(checks.values()))
    assert "stopped" in checks["feed"].detail
    assert checks["models"].detail.startswith("registry, pointer disagree")

    # Repaired: the offline verdict is clean again.
    write_champion(world["models"], "xgboost", champion)
    seed_job(world["state"], "lightgbm", "keep")
    code, out = await run_cli("--offline", "--state-dir", str(world["state"]),
                              "--models-dir", str(world["models"]))
    assert code == 0, out


async def test_empty_store_fails(tmp_path):
    from qtraderd.store.db import connect

    connect(tmp_path / "state").close()  # a store with the schema and nothing in it
    checks = await run_verify(state_dir=tmp_path / "state", models_dir=tmp_path / "models",
                              offline=True)
    assert checks["store"].result == FAIL and "no run recorded" in checks["store"].detail
    for name in ("feed", "predictions", "orders", "samples", "triggers", "retrain",
                 "models"):
        assert checks[name].result == FAIL, name
    code, out = await run_cli("--offline", "--state-dir", str(tmp_path / "state"),
                              "--models-dir", str(tmp_path / "models"))
    assert code == 1 and "verify: FAILED" in out
    # No store at all, and no daemon: both said plainly.
    checks = await run_verify(state_dir=tmp_path / "nothing",
                              socket_path=tmp_path / "none.sock", wait_s=0)
    assert checks["daemon"].result == FAIL and "daemon not running" in checks["daemon"].detail
    assert checks["store"].result == FAIL and "no store at" in checks["store"].detail


def test_cli_rejects_a_negative_wait(capsys):
    assert cli.main(["verify", "--wait", "-1"]) == 2
    assert "--wait must be >= 0" in capsys.readouterr().err


def test_ctl_socket_lookup_is_shared(tmp_path, monkeypatch):
    """verify finds the daemon where ctl does (RUNTIME_DIRECTORY under systemd)."""
    from qtraderd.reporting.verify import _find_socket

    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "rt"))
    assert _find_socket(None, None) == tmp_path / "rt" / ctl.SOCKET_NAME
    # a state dir that holds a socket wins; one without falls back to the runtime dir
    assert _find_socket(tmp_path, None) == tmp_path / "rt" / ctl.SOCKET_NAME
    (tmp_path / ctl.SOCKET_NAME).touch()
    assert _find_socket(tmp_path, None) == tmp_path / ctl.SOCKET_NAME
