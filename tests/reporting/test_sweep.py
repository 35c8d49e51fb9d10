"""`qtraderd sweep` end to end, as an operator runs it: real subprocesses, real daemon
replays in every cell, and a real local Ray head for the cluster run.

One tiny grid (2 folds x 1 symbol x 2 take-profit settings, one day per fold on real 5m
candles) runs locally once per module; the Ray run and the killed-and-resumed run reuse its
trained fold models (copied `work` dir) and must produce exactly its cell figures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, make_store

pytestmark = pytest.mark.slow

SMALL = """
[train]
n_estimators = 25
max_depth = 3
families = ["xgboost", "lightgbm"]

# tiny models rarely clear the costs: loosen the entry rule so every cell trades
[sizing]
min_edge_pct = -0.5
min_confidence = 0.25
"""
GRID = ["--folds", "2", "--fold-days", "1", "--train-days", "4", "--symbols", "ETHBTC",
        "--set", "sizing.take_profit_pct=1.2,1.6", "--seed", "7"]
CELLS = 4
# what a cell computes; wall time and host name are where it ran, not what it found
KEEP = ("fold", "symbol", "setting", "trades", "wins", "net_pnl", "return_pct",
        "win_rate_pct", "sharpe", "max_drawdown_pct", "exposure_pct", "bars")


def sweep_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qtraderd", "sweep", "--config", str(root / "small.toml"),
            "--state-dir", str(root / "state"), "--out", str(out), *GRID, *extra]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    e["PYTHONPATH"] = str(REPO)
    return e


def qt(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env(),
                          timeout=timeout)


def cells(out: Path) -> list[tuple]:
    conn = sqlite3.connect(out / "sweep.db")
    try:
        return conn.execute(f"SELECT {', '.join(KEEP)} FROM cells ORDER BY fold, symbol, "
                            "setting").fetchall()
    finally:
        conn.close()


def with_models(root: Path, name: str, src: Path) -> Path:
    """A fresh --out holding `src`'s trained fold models (no results)."""
    out = root / name
    shutil.copytree(src / "work", out / "work")
    return out


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sweep")
    (root / "small.toml").write_text(SMALL)
    make_store(root / "state", symbols=("ETHBTC",))
    t0 = time.monotonic()
    done = qt(sweep_cmd(root, root / "local", "--json"))
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "out": root / "local", "stderr": done.stderr,
            "report": json.loads(done.stdout), "seconds": time.monotonic() - t0}


def test_local_sweep_reports_every_cell_with_progress(local: dict) -> None:
    rep, rows = local["report"], cells(local["out"])
    assert len(rows) == CELLS and len(rep["cells"]) == CELLS
    assert [r["setting"] for r in rep["settings"]] and len(rep["settings"]) == 2
    returns = [r["mean_return_pct"] for r in rep["settings"]]
    assert returns == sorted(returns, reverse=True)  # best first
    assert sum(r["trades"] for r in rep["settings"]) == sum(r[3] for r in rows) > 0
    for n in range(1, CELLS + 1):
        assert re.search(rf"sweep: progress {n}/{CELLS} cells \(\d+ %\), elapsed \d+ s, "
                         r"ETA \d+ s", local["stderr"])
    assert "resuming" not in local["stderr"]


def test_ray_gives_the_local_cells(local: dict, ray_head: str) -> None:
    out = with_models(local["root"], "ray", local["out"])
    t0 = time.monotonic()
    done = qt(sweep_cmd(local["root"], out, "--executor", "ray", "--ray-address", ray_head,
                        "--json"))
    seconds = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"cells to run on ray:{ray_head}" in done.stderr
    assert cells(out) == cells(local["out"])
    assert json.loads(done.stdout)["settings"] == local["report"]["settings"]
    print(f"sweep seconds: local {local['seconds']:.1f} (with training), ray {seconds:.1f}")


def test_a_killed_sweep_resumes_without_redoing_cells(local: dict) -> None:
    out = with_models(local["root"], "killed", local["out"])
    proc = subprocess.Popen(sweep_cmd(local["root"], out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO, env=env(),
                            start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while not ((out / "sweep.db").exists() and _count(out) >= 1):
            assert proc.poll() is None and time.monotonic() < deadline, "no cell finished"
            time.sleep(0.02)  # polling the results file with a deadline
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = _count(out)
    assert 1 <= first < CELLS
    done = qt(sweep_cmd(local["root"], out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming: {first} of {CELLS} cells done" in done.stderr
    assert done.stderr.count("sweep: cell done:") == CELLS - first  # only the rest ran
    assert "training" not in done.stderr  # fold models reused too
    assert cells(out) == cells(local["out"])


def _count(out: Path) -> int:
    conn = sqlite3.connect(out / "sweep.db")
    try:
        return conn.execute("SELECT count(*) FROM cells").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not there yet
        return 0
    finally:
        conn.close()


@pytest.mark.parametrize(("bad", "named"), [
    ("sizing.take_profit_pct=1.2,abc", "sizing.take_profit_pct=abc"),
    ("sizing.take_profit_pct=0.5", "take-profit must be larger than stop-loss"),
    ("sizing.no_such_key=1", "--set sizing.no_such_key: unknown config key"),
    ("feed.interval=1m", "--set feed.interval: not a sweepable key"),
    ("sizing.min_confidence=2", "sizing.min_confidence=2"),
    ("sizing.leverage", "expected section.key=value"),
])
def test_a_bad_setting_exits_2_naming_it(local: dict, bad: str, named: str) -> None:
    cmd = sweep_cmd(local["root"], local["root"] / "bad")
    cmd[cmd.index("sizing.take_profit_pct=1.2,1.6")] = bad
    done = qt(cmd, timeout=30)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr and "Traceback" not in done.stderr
    assert not (local["root"] / "bad").exists()
