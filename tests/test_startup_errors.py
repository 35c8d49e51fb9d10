"""Start-up, import and train failures as the operator meets them (issue 11, B6 B7 B10 B13):
real subprocesses, real SQLite files; every refusal is one message and a non-zero exit,
never a traceback."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qtraderd.control import client as ctl
from qtraderd.store.importer import MAX_LINE_CHARS
from tests.conftest import OHLCV, REPO, make_store


def qt(*args, env_extra=None, timeout=120, cwd=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "qtraderd", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, env=env,
                          timeout=timeout)


def peak_rss_mb(*args) -> tuple[subprocess.CompletedProcess, float]:
    """Run `qtraderd ARGS` under a fresh parent that reports its child's peak RSS (so
    children of earlier tests do not count)."""
    probe = ("import resource, subprocess, sys, json\n"
             "p = subprocess.run([sys.executable, '-m', 'qtraderd', *sys.argv[1:]],"
             " capture_output=True, text=True)\n"
             "print(json.dumps([p.returncode, p.stdout, p.stderr,"
             " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    out = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=300, check=True)
    code, stdout, stderr, rss_kb = json.loads(out.stdout)
    return subprocess.CompletedProcess(args, code, stdout, stderr), rss_kb / 1024


# ------------------------------------------------------------------------------ B6 import


def test_import_of_a_missing_file_creates_nothing(tmp_path):
    state = tmp_path / "state"
    out = qt("import", OHLCV / "ETHBTC-5m.csv", tmp_path / "nope.csv", "--state-dir", state)
    assert out.returncode == 2
    assert f"{tmp_path / 'nope.csv'} (no such file)" in out.stderr
    assert "nothing was imported" in out.stderr and "Traceback" not in out.stderr
    assert not state.exists()  # no empty store, and the good file was not half-imported
    out = qt("import", tmp_path, "--state-dir", state)
    assert out.returncode == 2 and "(not a file)" in out.stderr and not state.exists()


def test_import_rejecting_every_row_exits_2_naming_the_file_and_reasons(tmp_path):
    path = tmp_path / "ETHBTC-5m.csv"
    path.write_text("open_time,open,high,low,close,volume\n"
                    "1515560100000,1,0.5,2,1,10\n1515560400000,x,1,1,1,1\n")
    out = qt("import", path, "--state-dir", tmp_path / "s")
    assert out.returncode == 2, out.stdout
    assert f"{path}: no candles imported: all 2 rows were rejected" in out.stderr
    assert "line 2: high 0.5 < low 2" in out.stderr and "line 3: unparseable open" in out.stderr
    assert "Traceback" not in out.stderr
    conn = sqlite3.connect(tmp_path / "s" / "qtraderd.db")
    assert conn.execute("SELECT count(*) FROM imports").fetchone() == (0,)


def _bomb(path: Path, mb: int, line_chars: int) -> None:
    """A small gzip file that inflates to `mb` MB of text: a header, then lines of x."""
    line = b"x" * (line_chars - 1) + b"\n" if line_chars else b"x" * 1_000_000
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(b"open_time,open,high,low,close,volume\n")
        for _ in range(mb * 1_000_000 // len(line)):
            f.write(line)


@pytest.mark.parametrize("line_chars, problem", [
    (100_000, "no candles imported: all 2000 rows were rejected"),  # many long junk rows
    (0, f"line 2 is longer than {MAX_LINE_CHARS:,} characters"),  # one endless line
])
def test_gzip_bomb_is_streamed_in_bounded_memory(tmp_path, line_chars, problem):
    bomb = tmp_path / "ETHBTC-5m.csv.gz"
    _bomb(bomb, 200, line_chars)
    assert bomb.stat().st_size < 1_000_000  # < 1 MB on disk, 200 MB inflated
    out, rss = peak_rss_mb("import", bomb, "--state-dir", tmp_path / "s")
    assert out.returncode == 2 and problem in out.stderr, out.stderr[-500:]
    assert "Traceback" not in out.stderr
    # Reading it whole took > 1 GB (200 MB of bytes, then the decoded text); streamed, the
    # peak is the interpreter plus one line.
    assert rss < 120, f"peak RSS {rss:.0f} MB"


# ------------------------------------------------------------------ B7 locked / damaged


def test_run_on_a_store_locked_by_another_process_exits_2(tmp_path):
    state = make_store(tmp_path / "state", symbols=("ETHBTC",), limit=300)
    holder = sqlite3.connect(state / "qtraderd.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # an sqlite3 shell in the middle of a transaction
    try:
        out = qt("run", "--no-train", "--state-dir", state, "--models-dir", tmp_path / "m",
                 timeout=60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"store {state / 'qtraderd.db'} is locked by another process" in out.stderr
    assert "stop that process" in out.stderr and "Traceback" not in out.stderr


def test_run_on_a_store_with_garbage_pages_exits_2(tmp_path):
    state = make_store(tmp_path / "state", symbols=("ETHBTC",), limit=3000)
    db = state / "qtraderd.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = db.stat().st_size
    assert size > 200_000
    with open(db, "r+b") as f:  # pages in the middle: the header and schema stay readable
        f.seek(size // 2 // 4096 * 4096)
        f.write(os.urandom(8 * 4096))
    out = qt("run", "--no-train", "--state-dir", state, "--models-dir", tmp_path / "m",
             timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"store {db} is damaged" in out.stderr and ".recover" in out.stderr
    assert "Traceback" not in out.stderr


# --------------------------------------------------------------------- B10 second instance


def test_a_refused_second_instance_changes_nothing_and_report_shows_the_live_run(tmp_path):
    # 600 bars: the first daemon soon holds at the end of its replay (what is refused and
    # reported does not depend on the length) instead of replaying 5,760 beside the test
    state = make_store(tmp_path / "state", symbols=("ETHBTC",), limit=600)
    models = tmp_path / "m"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env.update(QT_FEED_EXIT_AT_END="false", QT_LEARNING_ENABLED="false")
    first = subprocess.Popen([sys.executable, "-m", "qtraderd", "run", "--no-train",
                              "--state-dir", str(state), "--models-dir", str(models)],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(ctl.CtlError):
                if ctl.request(state / "qtraderd.sock", "status")["ok"]:
                    break
            time.sleep(0.1)
        # without --no-train: it would train into the live models dir if it got that far
        out = qt("run", "--state-dir", state, "--models-dir", models)
        assert out.returncode == 2
        assert (f"state directory {state} is in use by another qtraderd (pid {first.pid})"
                in out.stderr)
        assert "training" not in out.stderr and "Traceback" not in out.stderr
        assert not list(models.rglob("*.onnx"))  # the first daemon has none; none trained
        conn = sqlite3.connect(f"file:{state / 'qtraderd.db'}?mode=ro", uri=True)
        assert conn.execute("SELECT id, status FROM runs").fetchall() == [(1, "running")]
        conn.close()
        rep = qt("report", "--state-dir", state, "--json")
        assert rep.returncode == 0 and json.loads(rep.stdout)["run"]["id"] == 1
    finally:
        first.terminate()
        first.wait(timeout=30)


def test_report_skips_a_newer_run_that_never_started(tmp_path):
    from qtraderd.reporting.report import latest_run

    state = make_store(tmp_path / "state", symbols=("ETHBTC",), limit=10)
    conn = sqlite3.connect(state / "qtraderd.db", isolation_level=None)
    row = ("2026-01-01", "paper", "replay", 1, "{}", "[]", "5m")
    conn.execute("INSERT INTO runs (started_at, mode, source, seed, config, symbols, interval,"
                 " status, bars) VALUES (?,?,?,?,?,?,?,'running',500)", row)
    conn.execute("INSERT INTO runs (started_at, mode, source, seed, config, symbols, interval,"
                 " status, bars) VALUES (?,?,?,?,?,?,?,'finished',0)", row)
    assert latest_run(conn) == 1
    conn.execute("INSERT INTO runs (started_at, mode, source, seed, config, symbols, interval,"
                 " status, bars) VALUES (?,?,?,?,?,?,?,'finished',20)", row)
    assert latest_run(conn) == 3  # a newer run that did trade is the latest
    conn.close()


# ------------------------------------------------------------------------- B13 train


def test_a_failed_train_prints_only_the_error(tmp_path):
    out = qt("train", "--state-dir", tmp_path / "none", "--models-dir", tmp_path / "m")
    assert out.returncode == 2
    assert out.stdout == ""  # no JSON error object beside the message
    assert "qtraderd: error: no store at" in out.stderr and "Traceback" not in out.stderr
    state = make_store(tmp_path / "state", symbols=("ETHBTC",))
    blocker = tmp_path / "models-is-a-file"
    blocker.write_text("")
    cfg = tmp_path / "fast.toml"
    cfg.write_text("[train]\nn_estimators = 5\nmax_depth = 2\n")
    out = qt("train", "--state-dir", state, "--models-dir", blocker, "--config", cfg,
             "--families", "lightgbm", timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stdout == ""
    assert "qtraderd: error: training failed: lightgbm:" in out.stderr
    assert "Traceback" not in out.stderr
    # the job protocol (python -m qtraderd.training) still answers in JSON
    job = subprocess.run([sys.executable, "-m", "qtraderd.training", "train", "--state-dir",
                          str(tmp_path / "none"), "--models-dir", str(tmp_path / "m")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert job.returncode == 2 and json.loads(job.stdout)["ok"] is False
