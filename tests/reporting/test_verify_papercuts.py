"""`qtraderd verify` papercuts (issue 11, B13): no predictions during the warm-up is not a
failure; `--state-dir DIR` asks DIR's socket and says why; `verify --json | head` ends
quietly. Real stores, a real daemon run, a real pipe."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio

from qtraderd.core.config import INTERVAL_MS, load, with_changes
from qtraderd.features.spec import WARMUP_BARS
from qtraderd.reporting.verify import FAIL, SKIP, verify
from qtraderd.runtime.daemon import Daemon
from tests.conftest import REPO, make_store


@pytest.fixture
def short_run(trained, tmp_path) -> Path:
    """A finished run with real champions over fewer bars than the features' warm-up."""
    state = tmp_path / "state"
    make_store(state, limit=WARMUP_BARS - 50)
    sock_dir = Path(tempfile.mkdtemp(prefix="qvp", dir="/tmp"))
    cfg = with_changes(load(env={}), learning={"enabled": False}, rl={"enabled": False})
    d = Daemon(cfg, state, trained["models"], socket_path=sock_dir / "s.sock",
               progress_every_s=0)
    assert trio.run(d.run) == 0
    os.rmdir(sock_dir)
    return state


def test_no_prediction_during_the_warm_up_is_not_a_failure(short_run, trained):
    checks = {c.check: c for c in verify(short_run, models_dir=trained["models"],
                                         offline=True, wait_s=0)}
    assert checks["predictions"].result == SKIP, checks["predictions"]
    assert f"predictions start after {WARMUP_BARS} bars" in checks["predictions"].detail
    assert checks["orders"].result == SKIP  # nothing predicted, nothing to trade
    # the same run long past the warm-up (and the champions' training data) without a
    # prediction is a failure
    conn = sqlite3.connect(short_run / "qtraderd.db")
    conn.execute("UPDATE runs SET last_ts = first_ts + ? * ?", (10_000, INTERVAL_MS["5m"]))
    conn.commit()
    conn.close()
    checks = {c.check: c for c in verify(short_run, models_dir=trained["models"],
                                         offline=True, wait_s=0)}
    assert checks["predictions"].result == FAIL


def test_state_dir_names_its_own_socket_and_why(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./state here
    state = tmp_path / "elsewhere"
    make_store(state, limit=10)
    checks = {c.check: c for c in verify(state, wait_s=0)}
    detail = checks["daemon"].detail
    assert checks["daemon"].result == FAIL
    assert f"no daemon listening on {state / 'qtraderd.sock'}" in detail
    assert f"(in --state-dir {state})" in detail
    assert "state/qtraderd.sock" not in detail.replace(str(state), "")


def test_verify_json_into_a_closed_pipe_ends_quietly(tmp_path):
    state = tmp_path / "state"
    make_store(state, limit=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    proc = subprocess.Popen([sys.executable, "-m", "qtraderd", "verify", "--offline",
                             "--json", "--state-dir", str(state)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # `| head -0`: the reader is gone before a byte is written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err
