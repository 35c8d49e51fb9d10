"""The command line as an operator meets it: true --help, exit codes, clear errors."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from qtraderd.control import client as ctl
from tests.conftest import OHLCV, REPO, make_store


def qt(*args, cwd=None, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "qtraderd", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, env=env,
                          timeout=timeout)


@pytest.mark.parametrize("sub, needles", [
    ([], ["run", "import", "train", "ctl", "report"]),
    (["run"], ["--config", "--state-dir", "--models-dir", "bundled"]),
    (["import"], ["FILE", "--symbol", "--interval", "--state-dir"]),
    (["train"], ["--state-dir", "--models-dir", "--config"]),
    (["ctl"], ["--state-dir", "--socket", "--json", "status", "halt", "flatten",
               "resume-symbol"]),
    (["report"], ["--state-dir", "--run", "--json", "--out", "report.html"]),
])
def test_every_subcommand_has_a_true_help(sub, needles):
    out = qt(*sub, "--help")
    assert out.returncode == 0, out.stderr
    for n in needles:
        assert n in out.stdout, f"{n!r} missing from `qtraderd {' '.join(sub)} --help`"


def test_version():
    out = qt("--version")
    assert out.returncode == 0 and out.stdout.startswith("qtraderd ")


def test_import_reports_rows_and_rejects_and_fails_on_bad_files(tmp_path):
    bad = tmp_path / "ETHBTC-5m.csv"
    lines = (OHLCV / "ETHBTC-5m.csv").read_text().splitlines()[:30]
    lines[5] = lines[5].split(",")[0] + ",1,0.5,2,1,10"  # high < low
    bad.write_text("\n".join(lines) + "\n")
    junk = tmp_path / "LTCBTC-5m.csv"
    junk.write_text("open_time,open,high,low,close,volume\n1515560100000,1,0.5,2,1,10\n")
    out = qt("import", bad, junk, "--state-dir", tmp_path / "s")
    assert out.returncode == 2
    assert "28 added" in out.stdout and "1 rejected" in out.stdout
    assert "rejected line 6" in out.stdout
    assert f"{junk}: no candles imported: all 1 rows were rejected" in out.stderr
    again = qt("import", bad, "--state-dir", tmp_path / "s")
    assert again.returncode == 0 and "0 added, 28 already stored" in again.stdout


@contextlib.contextmanager
def read_only_dir(path: Path):
    """A directory nobody can write: a read-only bind mount as root, else chmod."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o500)
        try:
            yield path
        finally:
            path.chmod(0o700)
        return
    mnt = Path(tempfile.mkdtemp(prefix="qtro"))
    ok = subprocess.run(["mount", "--bind", str(path), str(mnt)], capture_output=True)
    if ok.returncode != 0:
        pytest.skip("cannot make a read-only mount here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], check=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def test_read_only_state_dir_is_a_clear_error(tmp_path):
    src = tmp_path / "state"
    make_store(src, symbols=("ETHBTC",), limit=100)
    with read_only_dir(src) as ro:
        out = qt("import", OHLCV / "LTCBTC-5m.csv", "--state-dir", ro)
        assert out.returncode == 2
        assert "not writable" in out.stderr or "read-only" in out.stderr
        out = qt("run", "--no-train", "--state-dir", ro, "--models-dir", tmp_path / "m")
        assert out.returncode == 2 and ("not writable" in out.stderr
                                        or "read-only" in out.stderr)
        assert "Traceback" not in out.stderr
        # reading a past run from a read-only store still works
        rep = qt("report", "--state-dir", ro)
        assert rep.returncode == 2 and "no runs recorded" in rep.stderr


def test_locked_store_is_a_clear_error(tmp_path):
    state = make_store(tmp_path / "state", symbols=("ETHBTC",), limit=100)
    holder = sqlite3.connect(state / "qtraderd.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        out = qt("import", OHLCV / "LTCBTC-5m.csv", "--state-dir", state, timeout=60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert out.returncode == 2
    assert "locked" in out.stderr and "Traceback" not in out.stderr


def test_missing_symbols_and_missing_store(tmp_path):
    state = make_store(tmp_path / "state", symbols=("ETHBTC",), limit=300)
    out = qt("run", "--no-train", "--state-dir", state, "--models-dir", tmp_path / "m",
             env_extra={"QT_FEED_SYMBOLS": "ETHBTC,DOGEBTC"})
    assert out.returncode == 2 and "DOGEBTC" in out.stderr and "qtraderd import" in out.stderr
    rep = qt("report", "--state-dir", tmp_path / "nothing-here")
    assert rep.returncode == 2 and "no store" in rep.stderr


def test_run_without_models_predicts_nothing_and_says_so(tmp_path):
    state = make_store(tmp_path / "state", symbols=("ETHBTC",), limit=400)
    out = qt("run", "--no-train", "--state-dir", state, "--models-dir", tmp_path / "m")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no models loaded: predicting nothing" in out.stderr
    assert "Totals: no trades." in out.stdout


def test_a_second_daemon_on_the_same_state_dir_is_refused(trained, tmp_path):
    state, models = tmp_path / "state", tmp_path / "models"
    shutil.copytree(trained["state"], state)
    shutil.copytree(trained["models"], models)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env["QT_FEED_EXIT_AT_END"] = "false"
    env["QT_LEARNING_ENABLED"] = "false"
    first = subprocess.Popen([sys.executable, "-m", "qtraderd", "run", "--state-dir", str(state),
                              "--models-dir", str(models)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(ctl.CtlError):
                if ctl.request(state / "qtraderd.sock", "status")["ok"]:
                    break
            time.sleep(0.1)
        out = qt("run", "--state-dir", state, "--models-dir", models)
        assert out.returncode == 2
        assert f"in use by another qtraderd (pid {first.pid})" in out.stderr
        assert "Traceback" not in out.stderr
        assert ctl.request(state / "qtraderd.sock", "status")["ok"]  # the first one is fine
    finally:
        first.terminate()
        first.wait(timeout=10)


# The demo's replay (days 11-20) ends here instead: 17 hours after its first learner
# evaluation (day 12, 05:00), which trains both networks, deploys them and swaps them in.
# The 7 days after that repeat the same retrain -> gate -> decision steps 12 more times
# (~80 s of CPU, 3/4 of the demo's cost); the learner tests cover those decisions.
DEMO_END = "2018-01-22T22:00"


@pytest.mark.slow
def test_the_demo_from_a_fresh_directory(tmp_path):
    """What `make run` does, with its own config, up to the first hot swap: bundled
    candles, initial training in a subprocess, replay with the learning loop: retrains,
    gate decisions and a hot swap."""
    demo = REPO / "examples" / "demo.toml"
    t0 = time.monotonic()
    out = qt("run", "--config", demo, cwd=tmp_path, timeout=300,
             env_extra={"QT_FEED_END": DEMO_END})
    assert out.returncode == 0, out.stderr[-3000:]
    assert time.monotonic() - t0 < 300
    assert f"config in force: {demo}; 3 settings differ from the defaults: feed.end=" in (
        out.stderr)
    assert "importing the 4 bundled files" in out.stderr
    assert "training the initial models" in out.stderr
    assert "Retraining Orchestrator: ENABLED (retrains every 3 days" in out.stderr
    assert "retrain started" in out.stderr and "gate decision" in out.stderr
    assert "model deployed" in out.stderr  # the networks join: a hot swap mid-replay
    assert "replay finished" in out.stderr
    for needle in ("qtraderd run summary", "trading window (out-of-sample)", "win rate %",
                   "net PnL", "max DD %", "Sharpe", "Per symbol", "ETHBTC", "XMRBTC",
                   "Learning loop", "Champion changes"):
        assert needle in out.stdout
    assert (tmp_path / "state" / "qtraderd.db").exists()
    assert list((tmp_path / "models").glob("*/champion"))
    # a second run reuses the store and the models
    again = qt("run", cwd=tmp_path, timeout=300, env_extra={"QT_LEARNING_ENABLED": "false"})
    assert again.returncode == 0 and "training the initial models" not in again.stderr
