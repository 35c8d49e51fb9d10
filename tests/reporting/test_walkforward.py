"""`qtraderd walkforward` end to end on real candles, kept small so it fits the default suite.

One walk-forward (3 real pairs, 4 days of history + a 1-day gate window, 2 test days, tree
families only, retrain daily: four retrain jobs) runs once per module as a real
subprocess, as an operator would start it; the tests then check its numbers against the
stores and the bars it came from, rather than against themselves.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qtraderd.core.config import load, to_toml
from qtraderd.reporting.walkforward_arms import (
    entry_fractions,
    load_bars,
    period_grid,
    random_arm,
)
from qtraderd.reporting.walkforward_plan import make_plan
from qtraderd.reporting.walkforward_sim import ExitRules, simulate
from tests.conftest import REPO, make_store

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = """
[train]
n_estimators = 25
max_depth = 3

[learning]
families = ["xgboost", "lightgbm"]
eval_window_days = 1
min_retrain_gap_hours = 24

# tiny models rarely clear the costs: loosen the entry rule so every arm trades
[sizing]
min_edge_pct = -0.5
min_confidence = 0.25
"""
# Two test days (two daily windows, four jobs): every check below holds for any number of
# windows, and a third day cost ~40 % more CPU in each of the module's two walk-forwards.
TEST_DAYS = 2
ARGS = ["--train-days", "4", "--test-days", str(TEST_DAYS), "--retrain-hours", "24",
        "--seed", "7"]


def qt(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    return subprocess.run([sys.executable, "-m", "qtraderd", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def rows(db: Path, sql: str, *args: object) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _walkforward(root: Path, out: Path) -> dict:
    cfg = root / "small.toml"
    if not cfg.exists():
        cfg.write_text(SMALL)
    state = root / "state"
    if not state.exists():
        make_store(state)
    done = qt("walkforward", "--config", cfg, "--state-dir", state, "--out", out, *ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"out": out, "state": state, "config": cfg, "proc": done,
            "doc": json.loads((out / "walkforward.json").read_text()),
            "md": (out / "walkforward.md").read_text(),
            "cont_db": out / "work" / "continuous" / "state" / "qtraderd.db",
            "frozen_db": out / "work" / "frozen" / "state" / "qtraderd.db"}


@pytest.fixture(scope="module")
def wf(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("wf")
    return _walkforward(root, root / "out")


def test_four_arms_with_numbers_from_the_stores(wf: dict) -> None:
    arms, runs = wf["doc"]["arms"], wf["doc"]["runs"]
    assert list(arms) == ["continuous", "frozen", "buy_hold", "buy_hold_exposure", "random"]
    for key, db in (("continuous", wf["cont_db"]), ("frozen", wf["frozen_db"])):
        run = runs[key]
        n_trades = rows(db, "SELECT count(*) FROM trades WHERE run_id=?", run)[0][0]
        n_entries = rows(db, "SELECT count(*) FROM fills WHERE run_id=? AND reason='entry'",
                         run)[0][0]
        assert arms[key]["trades"] == n_trades > 0
        assert arms[key]["entries"] == n_entries
        # no trade before the test period: the initial models abstain on what they saw
        first = rows(db, "SELECT min(entry_ts) FROM trades WHERE run_id=?", run)[0][0]
        assert first >= wf["doc"]["test_start"]
        # the return is the account's: last marked equity over the 1 BTC it started with
        last = rows(db, "SELECT equity FROM equity WHERE run_id=? AND quote='BTC' ORDER BY "
                        "seq DESC LIMIT 1", run)[0][0]
        assert arms[key]["return_pct"] == pytest.approx(100 * (last - 1.0), abs=1e-9)
        wins = rows(db, "SELECT sum(net_pnl > 0) FROM trades WHERE run_id=?", run)[0][0]
        assert arms[key]["win_rate_pct"] == pytest.approx(100 * wins / n_trades)
    for a in arms.values():
        assert all(np.isfinite([a["return_pct"], a["max_drawdown_pct"]]))


def test_buy_and_hold_matches_a_hand_computation(wf: dict) -> None:
    doc = wf["doc"]
    conn = sqlite3.connect(wf["state"] / "qtraderd.db")
    nets = []
    for sym in ("ETHBTC", "LTCBTC", "XMRBTC"):
        o = conn.execute("SELECT open FROM bars WHERE symbol=? AND open_time>=? ORDER BY "
                         "open_time LIMIT 1", (sym, doc["test_start"])).fetchone()[0]
        c = conn.execute("SELECT close FROM bars WHERE symbol=? AND open_time<=? ORDER BY "
                         "open_time DESC LIMIT 1", (sym, doc["test_end"])).fetchone()[0]
        nets.append(c / o - 1.0 - 2 * (0.0005 + 0.0002))  # default taker fee + slippage
    conn.close()
    assert doc["arms"]["buy_hold"]["return_pct"] == pytest.approx(100 * np.mean(nets),
                                                                   abs=1e-9)
    assert doc["arms"]["buy_hold"]["entries"] == 3


def test_random_arm_has_arm_1_entries_and_is_deterministic_for_a_seed(wf: dict) -> None:
    doc = wf["doc"]
    n = doc["arms"]["continuous"]["entries"]
    assert doc["arms"]["random"]["entries"] == n and "fit" not in doc["arms"]["random"]["note"]
    plan, bars = _plan_and_bars(wf)
    grid = period_grid(bars, plan)
    conn = sqlite3.connect(wf["cont_db"])
    sizes = entry_fractions(conn, doc["runs"]["continuous"], plan)
    conn.close()
    assert len(sizes) == n
    a, trades = random_arm(bars, plan, grid, sizes, seed=7)
    b, again = random_arm(bars, plan, grid, sizes, seed=7)
    assert trades == again and np.array_equal(a.values, b.values)
    assert [list(t) for t in trades] == doc["random_trades"]
    _, other = random_arm(bars, plan, grid, sizes, seed=8)
    assert other != trades
    assert all(t[1] >= doc["test_start"] for t in trades)  # out-of-sample bars only
    # one position per symbol at a time: a symbol's next entry comes at or after the bar
    # that settled its previous one
    for sym in {t[0] for t in trades}:
        mine = sorted((t[1], t[2]) for t in trades if t[0] == sym)
        assert all(b[0] >= a[1] for a, b in itertools.pairwise(mine))


def _plan_and_bars(wf: dict) -> tuple:
    args = argparse.Namespace(config=wf["config"], state_dir=wf["state"], out=wf["out"],
                              train_days=4.0, test_days=float(TEST_DAYS), retrain_hours=24.0,
                              symbols=None, seed=7)
    plan = make_plan(args)
    conn = sqlite3.connect(wf["state"] / "qtraderd.db")
    bars = load_bars(conn, plan)
    conn.close()
    return plan, bars


def test_the_random_arms_exits_reproduce_the_daemons_own_trades(wf: dict) -> None:
    """The exit simulator the random arm uses, fed the daemon's entries (bar, side,
    quantity), gives every one of its trades back: same exit bar, price, reason and net
    PnL - TP/SL, trailing and time stops included."""
    plan, bars = _plan_and_bars(wf)
    rules = ExitRules.from_config(plan.cfg)
    trades = rows(wf["cont_db"], "SELECT symbol, side, qty, entry_ts, entry_price, exit_ts, "
                                 "exit_price, net_pnl, exit_reason FROM trades WHERE run_id=?",
                  wf["doc"]["runs"]["continuous"])
    assert len(trades) > 20
    assert {"trailing_stop", "stop_loss"} <= {t[-1] for t in trades}
    for sym, side, qty, ets, ep, xts, xp, net, reason in trades:
        a = bars[sym]
        entry = int(np.searchsorted(a[:, 0], ets))
        tr = simulate(a[:, 1], a[:, 2], a[:, 3], entry - 1, side, qty, rules)
        assert (int(a[tr.exit_i, 0]), tr.reason) == (xts, reason)
        assert (tr.entry_price, tr.exit_price, tr.net) == pytest.approx((ep, xp, net),
                                                                        rel=1e-12, abs=1e-15)


def test_buy_and_hold_at_the_strategys_exposure(wf: dict) -> None:
    doc = wf["doc"]
    arms, start = doc["arms"], doc["test_start"]
    eq = rows(wf["cont_db"], "SELECT ts, exposure / equity FROM equity WHERE run_id=? "
                             "AND quote='BTC' ORDER BY seq", doc["runs"]["continuous"])
    plan, bars = _plan_and_bars(wf)
    grid = period_grid(bars, plan)
    ts = np.array([t for t, _ in eq])
    idx = np.searchsorted(ts, grid, side="right") - 1
    by_hand = float(np.mean(np.array([e for _, e in eq])[idx]))
    assert 0 < by_hand < 1 and ts[0] < start
    assert arms["continuous"]["exposure_pct"] == pytest.approx(100 * by_hand)
    assert arms["buy_hold_exposure"]["exposure_pct"] == pytest.approx(100 * by_hand)
    assert arms["buy_hold_exposure"]["return_pct"] == pytest.approx(
        by_hand * arms["buy_hold"]["return_pct"], rel=1e-9)
    assert "buy-and-hold at its exposure" in wf["md"]


def test_one_sharpe_per_arm(wf: dict) -> None:
    """The results table is the only place a Sharpe appears: the daemon summaries quoted
    below it (whole replay, not the test period) leave theirs out."""
    md = wf["md"]
    header = next(line for line in md.splitlines() if line.startswith("| arm | entries"))
    assert header.count("Sharpe") == 1
    assert md.count("| Sharpe |") == 1
    assert "Sharpe" not in md.split("## Daemon run summaries")[1]
    for a in wf["doc"]["arms"].values():
        assert a["bars"] == wf["doc"]["arms"]["continuous"]["bars"]  # one grid for all


def test_validation_lines_carry_sample_size_and_interval(wf: dict) -> None:
    doc = wf["doc"]
    lines = doc["validation"]
    assert len(lines) == TEST_DAYS * len(doc["arms"])  # every daily window x every arm
    for key in ("continuous", "random"):
        mine = [v for v in lines if v["arm"] == key]
        assert sum(v["bars"] for v in mine) == doc["arms"][key]["bars"]
        assert sum(v["trades"] for v in mine) == doc["arms"][key]["trades"]
        for v in mine:
            if v["trades"] >= 2:
                lo, hi = v["ci95_pct"]
                assert lo < v["mean_trade_pct"] < hi
    assert "Student-t 95 % interval" in wf["md"]
    assert "| window | arm | bars | closed trades | mean trade % | 95 % CI (t) |" in wf["md"]
    for h in doc["hit_rates"]:
        if h["n_after"]:
            lo, hi = h["hit_after_ci95_pct"]
            assert lo <= h["hit_after_pct"] <= hi
    assert "95 % CI before" in wf["md"] and "Wilson 95 %" in wf["md"]


def test_report_markdown_and_pngs(wf: dict) -> None:
    md, out = wf["md"], wf["out"]
    assert re.search(r"Continuous learning did (not )?beat never retrained", md)
    for needle in ("continuous learning", "never retrained", "buy-and-hold",
                   "random entries", "## Per window", "## Model versions over time",
                   "## Hit rate before and after each retrain", "qtraderd run summary",
                   "Mean change where the serving version changed"):
        assert needle in md, needle
    for name in ("equity.png", "windows.png", "versions.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 2000, name
        assert f"]({name})" in md
    windows = wf["doc"]["windows"]
    assert len(windows["edges"]) == TEST_DAYS + 1  # the test days in 24 h windows
    assert all(len(v) == TEST_DAYS for v in windows["returns_pct"].values())


def test_window_returns_compound_to_the_total(wf: dict) -> None:
    doc = wf["doc"]
    for key, per_window in doc["windows"]["returns_pct"].items():
        total = np.prod([1 + r / 100 for r in per_window]) - 1
        assert 100 * total == pytest.approx(doc["arms"][key]["return_pct"], abs=1e-9), key


def test_hit_rate_table_has_one_row_per_retrain_job(wf: dict) -> None:
    doc = wf["doc"]
    jobs = rows(wf["cont_db"], "SELECT id, family, status FROM retrain_jobs WHERE run_id=? "
                               "ORDER BY id", doc["runs"]["continuous"])
    assert len(jobs) >= 2  # the daily time trigger at least
    assert [(h["job"], h["family"], h["decision"]) for h in doc["hit_rates"]] == \
        [tuple(j) for j in jobs]
    assert [j["id"] for j in doc["jobs"]] == [j[0] for j in jobs]
    for h in doc["hit_rates"]:
        assert 0 <= h["n_before"] <= 100 and 0 <= h["n_after"] <= 100
        assert h["served_before"] or h["n_before"] == 0
    assert not rows(wf["frozen_db"], "SELECT * FROM retrain_jobs")  # arm 2 never retrains


def test_configs_that_ran_are_in_the_work_dir(wf: dict) -> None:
    work = wf["out"] / "work"
    cont, frozen = (load(work / a / "qtraderd.toml", env={}) for a in ("continuous",
                                                                         "frozen"))
    assert cont.learning.enabled and not frozen.learning.enabled
    assert cont.learning.retrain_interval_hours == 24 and cont.learning.train_window_days == 4
    assert cont.seed == frozen.seed == 7
    assert cont.feed.start == frozen.feed.start and cont.feed.end == frozen.feed.end
    stored = rows(wf["cont_db"], "SELECT config FROM runs WHERE id=?",
                  wf["doc"]["runs"]["continuous"])[0][0]
    assert json.loads(stored) == json.loads(json.dumps(cont.to_dict()))


def test_console_shows_progress_and_the_report_path(wf: dict) -> None:
    proc = wf["proc"]
    assert "arm 'continuous learning'" in proc.stderr and "bars/s" in proc.stderr
    assert "arm 'never retrained' finished" in proc.stderr
    assert f"walk-forward report: {wf['out'] / 'walkforward.md'}" in proc.stdout
    assert "Continuous learning did" in proc.stdout


def test_toml_round_trips_every_kind_of_value(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[sizing]\nmargin = 0.01\n[feed]\nspeed = 60\nsymbols = ["ETHBTC"]\n'
                    '[risk]\nmax_order_notional = {BTC = 0.5}\n')
    cfg = load(path, env={})
    (tmp_path / "out.toml").write_text(to_toml(cfg, "header\nlines"))
    assert load(tmp_path / "out.toml", env={}) == cfg


def test_walkforward_modules_leave_the_daemon_without_matplotlib() -> None:
    code = ("import sys, qtraderd.cli, qtraderd.runtime.daemon, qtraderd.reporting.walkforward, "
            "qtraderd.reporting.walkforward_report; print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("extra, needle", [
    (["--symbols", "DOGEBTC"], "no 5m bars stored for DOGEBTC"),
    (["--test-days", "30"], "test period too short"),
    (["--train-days", "25"], "needs"),
    (["--retrain-hours", "500"], "test period too short"),
    (["--train-days", "-1"], "expected a number > 0"),
    (["--seed", "x"], "expected an integer"),
])
def test_bad_input_exits_2_with_a_message(tmp_path: Path, extra: list[str],
                                          needle: str) -> None:
    state = make_store(tmp_path / "state", limit=288 * 8)
    done = qt("walkforward", "--state-dir", state, "--out", tmp_path / "out",
              "--train-days", "4", *extra)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    assert not (tmp_path / "out" / "work").exists()  # nothing ran


def test_no_store_or_no_bars_exits_2(tmp_path: Path) -> None:
    done = qt("walkforward", "--state-dir", tmp_path / "nothing", "--out", tmp_path / "o")
    assert done.returncode == 2 and "no store at" in done.stderr
    from qtraderd.store.db import connect

    connect(tmp_path / "empty").close()
    done = qt("walkforward", "--state-dir", tmp_path / "empty", "--out", tmp_path / "o")
    assert done.returncode == 2 and "no 5m bars" in done.stderr and "import" in done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[learning]\nnope = 1\n")
    done = qt("walkforward", "--config", bad, "--state-dir", tmp_path / "empty")
    assert done.returncode == 2 and "learning.nope" in done.stderr


def test_a_foreign_work_dir_is_never_deleted(tmp_path: Path) -> None:
    state = make_store(tmp_path / "state", limit=288 * 8)
    (tmp_path / "out" / "work").mkdir(parents=True)
    (tmp_path / "out" / "work" / "keep.txt").write_text("mine")
    done = qt("walkforward", "--state-dir", state, "--out", tmp_path / "out",
              "--train-days", "4")
    assert done.returncode == 2 and "not made by walkforward" in done.stderr
    assert (tmp_path / "out" / "work" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_the_whole_walkforward_is_deterministic(wf: dict, tmp_path: Path) -> None:
    """The learner's jobs hold the replay clock: a second run decides the same at the same
    bars, so every number but the wall times repeats."""
    again = _walkforward(wf["state"].parent, tmp_path / "again")
    for key in ("arms", "windows", "random_trades"):
        assert again["doc"][key] == wf["doc"][key], key

    def named(doc: dict) -> list[dict]:
        """The initial models are named after the wall clock (`qtraderd train`): compare
        them by role; the learner's challengers are named after data time."""
        initial = {m["version"]: f"initial {m['family']}" for m in doc["initial_models"]}

        def role(v: object) -> object:  # "served_*" joins versions with "+"
            if not isinstance(v, str):
                return v
            return "+".join(str(initial.get(p, p)) for p in v.split("+"))

        return [{k: role(v) for k, v in h.items()} for h in doc["hit_rates"]]

    assert named(again["doc"]) == named(wf["doc"])
    strip = [{k: v for k, v in j.items() if k != "wall_s"} for j in again["doc"]["jobs"]]
    assert strip == [{k: v for k, v in j.items() if k != "wall_s"} for j in wf["doc"]["jobs"]]


def test_help_names_every_option() -> None:
    done = qt("walkforward", "--help")
    assert done.returncode == 0
    for opt in ("--config", "--state-dir", "--out", "--train-days", "--test-days",
                "--retrain-hours", "--symbols", "--seed"):
        assert opt in done.stdout, opt
