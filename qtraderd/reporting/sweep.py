"""`qtraderd sweep`: sizing and threshold settings, out of sample, over folds x symbols.

Each fold's models are trained once, here, in a subprocess (`python -m qtraderd.training
train --train-until <fold start>`; this process never imports the ML libraries), cached in
`<out>/work/fold-K` so a rerun does not retrain. Every cell (fold x symbol x setting) is
then one task on the executor (training/cluster.py: "local", one after another, or "ray",
in parallel on a cluster): a real daemon replay of the fold's window for that symbol with
that setting (sweep_task.run_cell). The fold's store and models are shipped as bytes with
`share` on both executors, so the two paths are the same code and give the same figures.

Each finished cell is written to `<out>/sweep.db` at once (one row per fold/symbol/setting),
so a killed sweep run again with the same arguments redoes none of them. The report (a
table per setting over folds and symbols, best mean return first; `--json` adds the cells)
is built from that table, whichever executor filled it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qtraderd.core.clock import iso
from qtraderd.core.config import to_toml
from qtraderd.features.spec import HISTORY_BARS
from qtraderd.reporting.sweep_plan import Plan, SweepError, cell_toml, make_plan, setting_label
from qtraderd.reporting.sweep_task import pack
from qtraderd.store.db import Transaction, connect

log = logging.getLogger("qtraderd.reporting.sweep")

FIGURES = ("trades", "wins", "net_pnl", "return_pct", "win_rate_pct", "sharpe",
           "max_drawdown_pct", "exposure_pct")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    fold INTEGER NOT NULL, symbol TEXT NOT NULL, setting TEXT NOT NULL,
    trades INTEGER, wins INTEGER, net_pnl REAL, return_pct REAL, win_rate_pct REAL,
    sharpe REAL, max_drawdown_pct REAL, exposure_pct REAL, bars INTEGER,
    wall_s REAL, host TEXT, finished_at REAL,
    PRIMARY KEY (fold, symbol, setting));
"""


# ------------------------------------------------------------------------- fold preparation


def prepare_fold(plan: Plan, k: int) -> dict[str, Any]:
    """Train fold k's models (or reuse them) and pack what its cells need to ship."""
    start, end = plan.folds[k]
    root = plan.work / f"fold-{k}"
    state, models = root / "state", root / "models"
    key = json.dumps({"symbols": plan.symbols, "first": plan.first, "fold": [start, end],
                      "cfg": plan.cfg.to_dict()}, sort_keys=True, default=str)
    done = root / "trained.json"
    if not (done.exists() and done.read_text() == key):
        _train_fold(plan, k, root, state, models)
        done.write_text(key)
    else:
        log.info("sweep: fold %d: reusing its models in %s", k, models)
    return pack(state, models, start - HISTORY_BARS * plan.interval_ms, end)


def _train_fold(plan: Plan, k: int, root: Path, state: Path, models: Path) -> None:
    start, end = plan.folds[k]
    shutil.rmtree(root, ignore_errors=True)
    state.mkdir(parents=True)
    src = connect(plan.source, readonly=True)
    dst = connect(state)
    try:
        for sym in plan.symbols:
            rows = src.execute("SELECT symbol, interval, open_time, open, high, low, close, "
                               "volume FROM bars WHERE symbol=? AND interval=? AND open_time "
                               "BETWEEN ? AND ?", (sym, plan.cfg.feed.interval, plan.first,
                                                   end))
            with Transaction(dst):
                dst.executemany("INSERT INTO bars VALUES (?,?,?,?,?,?,?,?)", rows)
    finally:
        src.close()
        dst.close()
    for extra in plan.source.glob("instruments.toml"):
        shutil.copy(extra, state / extra.name)
    toml = root / "train.toml"
    toml.write_text(to_toml(plan.cfg, f"qtraderd sweep fold {k}: training config"))
    fams = ",".join(dict.fromkeys(plan.cfg.train.families))
    cmd = [sys.executable, "-m", "qtraderd.training", "train", "--state-dir", str(state),
           "--models-dir", str(models), "--config", str(toml), "--train-until",
           str(start - 1), "--families", fams]
    log.info("sweep: fold %d: training %s on %s .. %s (subprocess)", k, fams,
             iso(plan.first), iso(start))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    timeout = plan.cfg.train.timeout_s * len(plan.cfg.train.families)
    try:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout,
                             check=False, env=env)
    except subprocess.TimeoutExpired:
        raise SweepError(f"fold {k}: training timed out after {timeout:.0f} s", 1) from None
    lines = res.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    if res.returncode != 0 or not result.get("ok"):
        raise SweepError(f"fold {k}: training failed (exit {res.returncode}): "
                         f"{result.get('error', 'see the lines above')}", 1)


# ------------------------------------------------------------------------------- results


def open_results(plan: Plan) -> sqlite3.Connection:
    """`<out>/sweep.db`; refuses one written by a sweep of other arguments."""
    plan.out.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(plan.out / "sweep.db", isolation_level=None)
    conn.executescript(SCHEMA)
    fp = plan.fingerprint()
    row = conn.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (fp,))
    elif row[0] != fp:
        conn.close()
        raise SweepError(f"{plan.out / 'sweep.db'} holds a sweep of other arguments "
                         f"(fingerprint {row[0]}, this one {fp}); choose another --out")
    return conn


def record(conn: sqlite3.Connection, fold: int, symbol: str, setting: str,
           fig: dict[str, Any]) -> None:
    conn.execute("INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (fold, symbol, setting, *(fig.get(k) for k in FIGURES), fig.get("bars"),
                  fig.get("wall_s"), fig.get("host"), time.time()))


def report(conn: sqlite3.Connection, plan: Plan) -> dict[str, Any]:
    """Per setting over folds and symbols, best mean return first, and the cells."""
    cols = ["fold", "symbol", "setting", *FIGURES, "bars", "wall_s", "host"]
    cells = [dict(zip(cols, r, strict=True)) for r in conn.execute(
        f"SELECT {', '.join(cols)} FROM cells ORDER BY fold, symbol, setting")]
    rows = []
    for setting in plan.settings:
        label = setting_label(setting)
        mine = [c for c in cells if c["setting"] == label]
        if not mine:
            continue
        trades = sum(c["trades"] for c in mine)
        sharpes = [c["sharpe"] for c in mine if c["sharpe"] is not None]
        rows.append({
            "setting": label, "cells": len(mine), "trades": trades,
            "net_pnl": sum(c["net_pnl"] for c in mine),
            "mean_return_pct": sum(c["return_pct"] for c in mine) / len(mine),
            "win_rate_pct": 100.0 * sum(c["wins"] for c in mine) / trades if trades else None,
            "mean_sharpe": sum(sharpes) / len(sharpes) if sharpes else None,
            "max_drawdown_pct": max(c["max_drawdown_pct"] for c in mine),
            "exposure_pct": sum(c["exposure_pct"] for c in mine) / len(mine)})
    rows.sort(key=lambda r: -r["mean_return_pct"])
    return {"folds": [[iso(a), iso(b)] for a, b in plan.folds], "symbols": plan.symbols,
            "settings": rows, "cells": cells}


def render(rep: dict[str, Any]) -> str:
    def f(v: Any, nd: int = 2) -> str:
        return "-" if v is None else f"{v:.{nd}f}"
    head = ["setting", "cells", "trades", "net PnL", "mean return %", "win rate %",
            "mean Sharpe", "max DD %", "exposure %"]
    body = [[r["setting"], str(r["cells"]), str(r["trades"]), f(r["net_pnl"], 6),
             f(r["mean_return_pct"], 3), f(r["win_rate_pct"], 1), f(r["mean_sharpe"]),
             f(r["max_drawdown_pct"]), f(r["exposure_pct"], 1)] for r in rep["settings"]]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
             for row in [head, ["-" * w for w in widths], *body]]
    folds = ", ".join(f"{a} .. {b}" for a, b in rep["folds"])
    return (f"sweep: {len(rep['folds'])} folds ({folds}), symbols "
            f"{', '.join(rep['symbols'])}; per setting, best mean return first\n"
            + "\n".join(lines))


# ---------------------------------------------------------------------------------- main


def run(plan: Plan, executor: str, address: str | None) -> dict[str, Any]:
    from qtraderd.reporting.sweep_task import run_cell
    from qtraderd.training.cluster import ClusterUnavailable, open_executor

    conn = open_results(plan)
    try:
        done = {(f, s, st) for f, s, st in conn.execute("SELECT fold, symbol, setting "
                                                          "FROM cells")}
        cells = plan.cells()
        todo = [c for c in cells if (c[0], c[1], setting_label(plan.settings[c[2]]))
                not in done]
        if done:
            log.info("sweep: resuming: %d of %d cells done", len(cells) - len(todo),
                     len(cells))
        if todo:
            folds = {}
            for k in sorted({c[0] for c in todo}):
                folds[k] = prepare_fold(plan, k)
            items = []
            with tempfile.TemporaryDirectory() as tmp:
                for f, sym, k in todo:
                    start, end = plan.folds[f]
                    items.append({"fold": f, "symbol": sym, "setting": k,
                                  "label": f"fold {f} {sym} [{setting_label(plan.settings[k])}]",
                                  "toml": cell_toml(plan, f, sym, plan.settings[k], Path(tmp)),
                                  "window_bars": (end - start) // plan.interval_ms + 1,
                                  "timeout_s": plan.cell_timeout_s})
            try:
                ex = open_executor(executor, address)
            except ClusterUnavailable as exc:
                raise SweepError(str(exc)) from exc
            with ex:
                size = len(pickle.dumps({"folds": folds}, protocol=5))
                log.info("sweep: %d cells to run on %s; the folds' stores and models "
                         "shipped once: %.2f MB", len(items), ex.where, size / 1e6)
                shared = ex.share({"folds": folds})
                t0 = time.monotonic()
                for n, (i, fig) in enumerate(ex.map(run_cell, items, shared=shared, cpus=1),
                                             1):
                    it = items[i]
                    record(conn, it["fold"], it["symbol"],
                           setting_label(plan.settings[it["setting"]]), fig)
                    log.info("sweep: cell done: %s: %d trades, return %+.3f %% (%.1f s on %s)",
                             it["label"], fig["trades"], fig["return_pct"], fig["wall_s"],
                             fig["host"])
                    el = time.monotonic() - t0
                    total_done = len(cells) - len(todo) + n
                    eta = el / n * (len(items) - n)
                    print(f"sweep: progress {total_done}/{len(cells)} cells "
                          f"({100 * total_done / len(cells):.0f} %), elapsed {el:.0f} s, "
                          f"ETA {eta:.0f} s", file=sys.stderr, flush=True)
        return report(conn, plan)
    finally:
        conn.close()


def main(args: argparse.Namespace) -> int:
    """The `qtraderd sweep` command."""
    from qtraderd.runtime import logs as logsetup

    logsetup.setup("INFO")
    t0 = time.monotonic()
    try:
        plan = make_plan(args)
        log.info("sweep: %d folds x %d symbols x %d settings = %d cells, executor %s, out %s",
                 len(plan.folds), len(plan.symbols), len(plan.settings), len(plan.cells()),
                 args.executor, plan.out)
        rep = run(plan, args.executor, args.ray_address)
    except SweepError as exc:
        print(f"qtraderd: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("qtraderd: error: interrupted", file=sys.stderr)
        return 1
    (plan.out / "sweep.json").write_text(json.dumps(rep, indent=1) + "\n")
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(render(rep))
        print(f"sweep: cells in {plan.out / 'sweep.db'} and {plan.out / 'sweep.json'} "
              f"(wall time {time.monotonic() - t0:.0f} s)")
    return 0
