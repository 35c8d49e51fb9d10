"""`qtraderd walkforward`: does continuous learning pay? Measured, net of costs.

The learning loop is only worth its complexity if a daemon that retrains beats the same
daemon that never does. This command replays the stored candles in data time, with the
real daemon and the real learner, and compares over one out-of-sample test period:

1. continuous learning - `[learning] enabled`, retraining every `--retrain-hours` on a
   `--train-days` sliding window; jobs hold the replay clock, so the run is deterministic;
2. never retrained - the same initial models, `[learning] enabled = false`;
3. buy-and-hold - equal weight across the symbols, from the bars, fully invested;
4. buy-and-hold at exposure - the same, with only arm 1's average exposure invested;
5. random entries - as many entries as arm 1, seeded random side and bar, arm 1's sizes
   and the daemon's exits (TP/SL, trailing and time stops), one position per symbol
   (does the model beat a coin?). walkforward_arms says why each is fair.

Layout. The test period starts `--train-days` + `learning.eval_window_days` after the first
stored bar: that is exactly the history a learner job needs (sliding window + held-out
gate window), so the learner may retrain from the first test bar on and the initial
models are trained on the same amount of history (`python -m qtraderd.training train
--train-until <test start>`, a subprocess: this process runs daemons and never imports
the ML libraries). Bars are copied into a fresh store under `<out>/work`; each daemon arm
gets its own copy of that store and of the initial models, so registries never mix, and
its own generated TOML, which records exactly what ran. Both daemon arms replay the same
bars from the first one (the feature warm-up); models abstain on bars they trained on.
With `--executor ray` the two daemon arms run as Ray tasks in parallel instead
(walkforward_remote: the base store and initial models shipped as bytes, each arm's store
landed back in its arm dir), and the same report is built from the same files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qtraderd.core import config as config_mod
from qtraderd.core.clock import iso
from qtraderd.core.config import to_toml, with_changes
from qtraderd.reporting.walkforward_plan import (
    ARMS,
    Plan,
    WalkforwardError,
    make_plan,
)
from qtraderd.store.db import StoreError, Transaction, connect, db_path

log = logging.getLogger("qtraderd.reporting.walkforward")

MARKER = ".qtraderd-walkforward"  # only a work dir carrying this is ever deleted


@contextlib.contextmanager
def _no_qt_env() -> Iterator[None]:
    """Hide QT_* variables while arms run: they are baked into the generated TOML, and a
    learner job (a subprocess reading the environment) must not see them applied twice
    over the walk-forward's own settings (QT_FEED_SYMBOLS would change its data)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("QT_")}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


# ----------------------------------------------------------------------------- running


def prepare(plan: Plan) -> dict[str, Path]:
    """Fresh work dir: a store with exactly the bars used, and one TOML per daemon arm."""
    work = plan.work
    if work.exists():
        if not (work / MARKER).exists():
            raise WalkforwardError(f"{work} exists and was not made by walkforward; choose "
                                   "another --out")
        shutil.rmtree(work)
    (work / "base").mkdir(parents=True)
    (work / MARKER).write_text("made by qtraderd walkforward; deleted by the next run\n")
    src = connect(plan.source, readonly=True)
    dst = connect(work / "base" / "state")
    try:
        for sym in plan.symbols:
            rows = src.execute("SELECT symbol, interval, open_time, open, high, low, close, "
                               "volume FROM bars WHERE symbol=? AND interval=? AND open_time "
                               "BETWEEN ? AND ?", (sym, plan.cfg.feed.interval,
                                                   plan.hist_start, plan.test_end))
            with Transaction(dst):
                dst.executemany("INSERT INTO bars VALUES (?,?,?,?,?,?,?,?)", rows)
    finally:
        src.close()
        dst.close()
    paths = {}
    for arm, enabled in (("continuous", True), ("frozen", False)):
        (work / arm).mkdir()
        cfg = with_changes(plan.cfg, learning={"enabled": enabled})
        text = to_toml(cfg, f"qtraderd walkforward, arm '{ARMS[arm]}': the complete config "
                            f"that ran\n(replay {iso(plan.hist_start)} .. {iso(plan.test_end)}"
                            f", test period from {iso(plan.test_start)})")
        paths[arm] = work / arm / "qtraderd.toml"
        paths[arm].write_text(text)
        if config_mod.load(paths[arm], env={}) != cfg:  # the file must be what runs
            raise WalkforwardError(f"generated {paths[arm]} does not round-trip", 1)
    return paths


def train_initial(plan: Plan, toml: Path) -> list[dict[str, Any]]:
    """The initial models, once, in a subprocess (this process never imports ML libs)."""
    base = plan.work / "base"
    fams = list(dict.fromkeys(plan.cfg.learning.families))
    cmd = [sys.executable, "-m", "qtraderd.training", "train", "--state-dir", str(base / "state"),
           "--models-dir", str(base / "models"), "--config", str(toml), "--train-until",
           str(plan.test_start - 1), "--families", ",".join(fams)]
    log.info("walkforward: training the initial models (%s) on %s .. %s (subprocess)",
             ", ".join(fams), iso(plan.hist_start), iso(plan.test_start))
    timeout = plan.cfg.train.timeout_s * len(fams)
    try:
        with _no_qt_env():
            done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout,
                                  check=False)
    except subprocess.TimeoutExpired as exc:
        raise WalkforwardError(f"initial training timed out after {timeout:.0f} s", 1) from exc
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {"error": f"unreadable result {lines[-1][:200]!r}"}
    if done.returncode != 0 or not result.get("ok"):
        raise WalkforwardError(f"initial training failed (exit {done.returncode}): "
                               f"{result.get('error', 'see the lines above')}", 1)
    return list(result.get("models", []))


def arm_dirs(plan: Plan, arm: str) -> tuple[Path, Path]:
    """Copy the trained base store and models into the arm's own state and models dirs."""
    base, root = plan.work / "base", plan.work / arm
    state, models = root / "state", root / "models"
    state.mkdir()
    src = sqlite3.connect(db_path(base / "state"))
    dst = sqlite3.connect(db_path(state))
    try:
        src.backup(dst)
        dst.execute("UPDATE models SET path = replace(path, ?, ?)",
                    (str(base / "models"), str(models)))
        dst.commit()
    finally:
        src.close()
        dst.close()
    shutil.copytree(base / "models", models)
    return state, models


def run_arm(plan: Plan, arm: str, toml: Path, total_bars: int) -> tuple[int, float]:
    """One daemon replay in process (trio.run), with progress lines; -> (run id, wall s)."""
    import trio

    from qtraderd.runtime.daemon import Daemon, DaemonError, unwrap

    state, models = arm_dirs(plan, arm)
    cfg = config_mod.load(toml, env={})
    sock_dir = Path(tempfile.mkdtemp(prefix="qtwf", dir="/tmp"))  # sun_path is short
    daemon = Daemon(cfg, state, models, socket_path=sock_dir / "d.sock", progress_every_s=0,
                    config_path=toml)
    label = f"arm '{ARMS[arm]}'"
    t0 = time.monotonic()

    def line(final: bool = False) -> None:
        feed, learner = daemon.snapshot("feed"), daemon.snapshot("learner")
        if not feed:
            return
        wall = max(time.monotonic() - t0, 1e-9)
        current = learner.get("current_job")
        job = f" | retraining {current}" if current and not final else ""
        jobs = f" | retrains {learner['jobs_done'] + learner['jobs_failed']}" if learner else ""
        log.info("walkforward: %s %s: %s/%s bars (%s bars/s) | data time %s | trades %d%s%s",
                 label, "finished" if final else "running", f"{feed['bars']:,}",
                 f"{total_bars:,}", f"{feed['bars'] / wall:,.0f}", iso(feed["last_ts"]),
                 daemon.snapshot("execution").get("trades", 0), jobs, job)

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            async def progress() -> None:
                shown, at = -1, 0.0
                while True:  # every 2 s while bars move, every 20 s while a job holds them
                    await trio.sleep(2.0)
                    bars = daemon.snapshot("feed").get("bars", 0)
                    if bars != shown or time.monotonic() - at >= 20.0:
                        line()
                        shown, at = bars, time.monotonic()
            nursery.start_soon(progress)
            code = await daemon.run()
            nursery.cancel_scope.cancel()
        return code

    log.info("walkforward: %s: replay %s .. %s (%s bars), config %s", label,
             iso(plan.hist_start), iso(plan.test_end), f"{total_bars:,}", toml)
    try:
        with _no_qt_env():
            code = trio.run(main)
    except BaseExceptionGroup as group:
        leaf = unwrap(group)
        raise WalkforwardError(f"{label} failed: {leaf}", 1) from leaf
    except (DaemonError, StoreError, OSError) as exc:
        raise WalkforwardError(f"{label} failed: {exc}", 1) from exc
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    line(final=True)
    if code != 0 or daemon.stopping:
        raise WalkforwardError(f"{label} did not finish (exit {code}"
                               f"{', stopped by a signal' if daemon.stopping else ''})", 1)
    return daemon.run_id, time.monotonic() - t0


def main(args: argparse.Namespace) -> int:
    """The `qtraderd walkforward` command: plan, train, run both daemon arms, report."""
    from qtraderd.reporting.walkforward_report import write_report
    from qtraderd.runtime import logs as logsetup

    logsetup.setup("INFO")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # "N changes detected"
    t0 = time.monotonic()
    try:
        plan = make_plan(args)
        logging.getLogger().setLevel(plan.cfg.runtime.log_level)
        log.info("walkforward: %d symbols (%s), history %s, test period %s .. %s, retrain "
                 "every %g h, work dir %s", len(plan.symbols), ",".join(plan.symbols),
                 iso(plan.hist_start), iso(plan.test_start), iso(plan.test_end),
                 plan.retrain_hours, plan.work)
        tomls = prepare(plan)
        initial = train_initial(plan, tomls["continuous"])
        base = connect(plan.work / "base" / "state", readonly=True)
        total = base.execute("SELECT count(*) FROM bars").fetchone()[0]
        base.close()
        runs, walls = {}, {}
        if getattr(args, "executor", "local") == "ray":  # the arms in parallel, as tasks
            from qtraderd.reporting.walkforward_remote import run_arms
            runs, walls = run_arms(plan, tomls, "ray", args.ray_address)
        else:
            for arm in ("continuous", "frozen"):
                runs[arm], walls[arm] = run_arm(plan, arm, tomls[arm], total)
        walls["total"] = time.monotonic() - t0
        md, head = write_report(plan, runs, walls, initial, tomls)
    except WalkforwardError as exc:
        print(f"qtraderd: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("qtraderd: error: interrupted", file=sys.stderr)
        return 1
    print(head.replace("**", ""))
    print(f"walk-forward report: {md} (wall time {time.monotonic() - t0:.0f} s)")
    return 0
