"""One sweep cell, as a task: replay one fold's test window for one symbol with one setting.

This is the function `qtraderd sweep` hands to the executor (training/cluster.py), so it
runs here ("local") or on any node of a Ray cluster ("ray"). A cluster node cannot see
this machine's files, so everything the cell needs travels with it: the fold's store (the
bytes of a SQLite file holding only the bars the replay reads, and the model registry) and
the model artifacts, in the shared payload; the cell's config travels in the item as TOML
text. The task rebuilds them in a temp dir of its own and runs the real daemon in a
subprocess (`python -m qtraderd run`, learning off), then reads its figures from the store
it wrote. The local path does exactly the same, so both give the same figures.

Importing this module imports no ML library and no ray (the daemon subprocess loads the
ONNX runtime it always does).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import qtraderd

DB_NAME = "qtraderd.db"


def rebuild(fold: dict[str, Any], root: Path) -> tuple[Path, Path]:
    """Write a fold's shipped store and models under `root`; -> (state dir, models dir).
    The registry's artifact paths are rewritten from where they were trained to here."""
    state, models = root / "state", root / "models"
    state.mkdir(parents=True)
    (state / DB_NAME).write_bytes(fold["store"])
    for name, data in fold.get("state_files", {}).items():
        (state / name).write_bytes(data)
    for rel, data in fold["models"].items():
        path = models / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    conn = sqlite3.connect(state / DB_NAME)
    try:
        conn.execute("UPDATE models SET path = replace(path, ?, ?)",
                     (fold["models_dir"], str(models)))
        conn.commit()
    finally:
        conn.close()
    return state, models


def pack(state: Path, models: Path, keep_from: int, keep_to: int) -> dict[str, Any]:
    """A store and its models as bytes (what `rebuild` takes): a copy of the store holding
    only the bars in [keep_from, keep_to] (a fold: its window and the history warm-up
    before it) and the registry, and every model artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        slim = Path(tmp) / "slim.db"
        src = sqlite3.connect(state / DB_NAME)
        dst = sqlite3.connect(slim)
        try:
            src.backup(dst)
            dst.execute("DELETE FROM bars WHERE open_time < ? OR open_time > ?",
                        (keep_from, keep_to))
            dst.commit()
            dst.execute("VACUUM")
        finally:
            src.close()
            dst.close()
        store = slim.read_bytes()
    files = {str(p.relative_to(models)): p.read_bytes()
             for p in sorted(models.rglob("*")) if p.is_file()}
    extra = {p.name: p.read_bytes() for p in state.glob("instruments.toml")}
    return {"store": store, "models": files, "models_dir": str(models), "state_files": extra}


def figures(db: Path, window_bars: int) -> dict[str, Any]:
    """The cell's figures from the daemon's store: the same numbers `qtraderd report` gives
    (trades, net PnL after costs, win rate, Sharpe, max drawdown) plus exposure, the share
    of the window's bars a position was open."""
    from qtraderd.reporting.report import summarize

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        s = summarize(conn)
        held = conn.execute("SELECT coalesce(sum(bars_held), 0) FROM trades WHERE run_id=?",
                            (s["run"]["id"],)).fetchone()[0]
    finally:
        conn.close()
    acct = s["accounts"][0] if s["accounts"] else {}
    return {"status": s["run"]["status"], "bars": s["run"]["bars"],
            "trades": int(acct.get("trades") or 0),
            "net_pnl": float(acct.get("net_pnl") or 0.0),
            "return_pct": float(acct.get("return_pct") or 0.0),
            "wins": round((acct.get("win_rate_pct") or 0.0) * (acct.get("trades") or 0) / 100),
            "win_rate_pct": acct.get("win_rate_pct"),
            "sharpe": acct.get("sharpe"),
            "max_drawdown_pct": float(acct.get("max_drawdown_pct") or 0.0),
            "exposure_pct": 100.0 * held / window_bars if window_bars else 0.0}


def replay(root: Path, state: Path, models: Path, toml_text: str, label: str,
           timeout_s: float | None) -> None:
    """Run the real daemon over `state` in a subprocess (`qtraderd run`, its config the
    given TOML) until its replay ends; raises naming `label` and the daemon's last lines."""
    toml = root / "qtraderd.toml"
    toml.write_text(toml_text)
    pkg_root = str(Path(qtraderd.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "qtraderd", "run", "--config", str(toml), "--state-dir",
           str(state), "--models-dir", str(models), "--no-train", "--fresh"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{label}: the replay ran past {timeout_s:g} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{label}: daemon exit {done.returncode}: " + " | ".join(tail))


def run_cell(item: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """Replay one cell in a daemon subprocess and return its figures (raises on failure,
    naming the cell and the daemon's last output)."""
    t0 = time.monotonic()
    fold = shared["folds"][item["fold"]]
    root = Path(tempfile.mkdtemp(prefix="qtsweep"))  # short: the control socket lives here
    try:
        state, models = rebuild(fold, root)
        replay(root, state, models, item["toml"], f"cell {item['label']}", item["timeout_s"])
        out = figures(state / DB_NAME, item["window_bars"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["wall_s"] = time.monotonic() - t0
    out["host"] = os.uname().nodename
    return out
