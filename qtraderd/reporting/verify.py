"""`qtraderd verify`: is the daemon actually doing its job, end to end?

`ctl status` says the process is up; this says whether the loop works: bars arrive,
models predict on them, orders are placed and filled, outcomes label the samples the
learner trains on, the learner evaluates its triggers on schedule, the last retrain did not
fail, the daemon serves exactly the champions the registry names, and no plugin is broken.
Each check reads the daemon (through its control socket) and the store (read-only), and
judges by *data* time where it can — a replay held at its end, a live daemon between two
5-minute bars and a finished run are all healthy for the same reasons.

Results are pass / fail / skip (skip: the check does not apply, e.g. the learner is
disabled), each with a one-line detail. Any fail makes the exit code 1. Without a running
daemon the daemon-dependent checks fail ("daemon not running"); `--offline` checks only
the store (a finished run, a copied state directory).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qtraderd.control import client as ctl
from qtraderd.control.tables import format_table
from qtraderd.core.clock import iso
from qtraderd.core.config import INTERVAL_MS
from qtraderd.features.spec import WARMUP_BARS
from qtraderd.learning.registry import champions
from qtraderd.models.artifacts import champions_on_disk
from qtraderd.store.db import StoreError, connect

PASS, FAIL, SKIP = "pass", "fail", "skip"
HOUR_MS = 3_600_000
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NOT_RUNNING = "daemon not running"


@dataclass
class Check:
    check: str
    result: str
    detail: str


@dataclass
class RunInfo:
    """The run under test, from the runs table (config as stored with it)."""

    run_id: int
    status: str
    bars: int
    first_ts: int | None
    last_ts: int | None
    interval_ms: int
    cfg: dict[str, Any]

    @property
    def learning(self) -> dict[str, Any]:
        return self.cfg.get("learning", {})

    @property
    def steps(self) -> int:
        """Bar times replayed or received so far (bars per symbol)."""
        if self.first_ts is None or self.last_ts is None:
            return 0
        return (self.last_ts - self.first_ts) // self.interval_ms + 1


@dataclass
class Snapshot:
    """What changes over time, taken twice `wait_s` apart to see the daemon move."""

    status: dict[str, Any] | None
    bars: int
    labelled: int


class Verifier:
    def __init__(self, state_dir: Path | None = None, socket_path: Path | None = None,
                 models_dir: Path | None = None, *, offline: bool = False,
                 wait_s: float = 2.0, timeout_s: float = 10.0,
                 socket_origin: str | None = None) -> None:
        self.explicit_state_dir = state_dir
        self.state_dir = state_dir
        self.models_dir = models_dir
        self.offline = offline
        self.wait_s = wait_s
        self.timeout_s = timeout_s
        self.socket_path, self.socket_origin = locate_socket(state_dir, socket_path)
        self.socket_origin = socket_origin or self.socket_origin
        self.checks: list[Check] = []
        self.db: sqlite3.Connection | None = None
        self.run: RunInfo | None = None

    # ------------------------------------------------------------------ plumbing

    def add(self, name: str, result: str, detail: str) -> None:
        self.checks.append(Check(name, result, detail))

    def ask(self, cmd: str) -> dict[str, Any]:
        """One control request; raises ctl.CtlError when there is no usable answer."""
        return ctl.request(self.socket_path, cmd, timeout_s=self.timeout_s)

    def ask_or_fail(self, check: str, cmd: str) -> dict[str, Any] | None:
        """The reply to `cmd`, or None after recording `check` as failed (no answer)."""
        try:
            return self.ask(cmd)
        except ctl.CtlError as exc:
            self.add(check, FAIL, f"{NOT_RUNNING}: {exc}; socket {self.socket_path} "
                     f"{self.socket_origin}")
            return None

    def snapshot(self) -> Snapshot:
        status = None
        if not self.offline:
            try:
                reply = self.ask("status")
            except ctl.CtlError:
                reply = {"ok": False}
            status = reply.get("result") if reply["ok"] else None
        bars = labelled = 0
        if self.db is not None and self.run is not None:
            bars, labelled = self.db.execute(
                "SELECT (SELECT bars FROM runs WHERE id=?), "
                "(SELECT count(*) FROM samples WHERE run_id=? AND label IS NOT NULL)",
                (self.run.run_id, self.run.run_id)).fetchone()
        return Snapshot(status, bars or 0, labelled or 0)

    # ------------------------------------------------------------------ the run

    def run_checks(self) -> list[Check]:
        status = self.check_daemon()
        self.open_store(status)
        if self.run is None:
            for name in ("feed", "predictions", "orders", "samples", "triggers", "retrain",
                         "models"):
                self.add(name, FAIL, "no run to check (see the store row)")
            self.check_plugins(status)
            return self.checks
        first = self.snapshot()
        if status is not None and self.wait_s > 0:
            time.sleep(self.wait_s)  # the interval over which the daemon must make progress
        second = self.snapshot()
        self.refresh_run()
        self.check_feed(first, second)
        self.check_predictions()
        self.check_orders()
        self.check_samples(first, second)
        self.check_triggers(second.status)
        self.check_retrain()
        self.check_models(status)
        self.check_plugins(status)
        return self.checks

    def check_daemon(self) -> dict[str, Any] | None:
        if self.offline:
            self.add("daemon", SKIP, "--offline: store only")
            return None
        reply = self.ask_or_fail("daemon", "status")
        if reply is None:
            return None
        if not reply["ok"]:
            self.add("daemon", FAIL, f"status refused: {reply['error']}")
            return None
        st = reply["result"]
        served_dir = st.get("state_dir")
        if (self.explicit_state_dir is not None and served_dir
                and Path(served_dir) != self.explicit_state_dir.resolve()):
            self.add("daemon", FAIL, f"the daemon at {self.socket_path} uses state dir "
                     f"{served_dir}, not {self.explicit_state_dir}")
            return None
        self.state_dir = self.state_dir or (Path(served_dir) if served_dir else None)
        if self.models_dir is None and st.get("models_dir"):
            self.models_dir = Path(st["models_dir"])
        actors = st.get("actors", {})
        failed = [n for n, a in actors.items() if a.get("state") == "failed"]
        restarts = sum(int(a.get("restarts", 0)) for a in actors.values())
        detail = (f"pid {st.get('pid')}, run {st.get('run_id')}, {st.get('mode')} "
                  f"{st.get('source')}, {len(actors)} actors, {restarts} restarts, risk "
                  f"{st.get('risk_state')}")
        if failed:
            self.add("daemon", FAIL, f"actors failed: {', '.join(failed)} ({detail})")
        else:
            self.add("daemon", PASS, detail)
        return st

    def open_store(self, status: dict[str, Any] | None) -> None:
        state_dir = self.state_dir or ctl.DEFAULT_STATE_DIR
        try:
            self.db = connect(state_dir, readonly=True)
        except StoreError as exc:
            self.add("store", FAIL, str(exc))
            return
        run_id = status.get("run_id") if status else None
        if run_id is None:
            row = self.db.execute("SELECT max(id) FROM runs").fetchone()
            run_id = row[0] if row else None
        if run_id is None:
            self.add("store", FAIL, f"{state_dir}: no run recorded yet")
            return
        self.refresh_run(int(run_id))
        assert self.run is not None
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        self.add("store", PASS, f"{state_dir} (schema {version}), run {self.run.run_id} "
                 f"{self.run.status}")

    def refresh_run(self, run_id: int | None = None) -> None:
        assert self.db is not None
        run_id = self.run.run_id if run_id is None and self.run else run_id
        row = self.db.execute("SELECT id, status, bars, first_ts, last_ts, interval, config "
                              "FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return
        self.run = RunInfo(row[0], row[1], row[2] or 0, row[3], row[4],
                           INTERVAL_MS.get(row[5], 300_000), json.loads(row[6] or "{}"))

    # ------------------------------------------------------------------ checks

    def check_feed(self, a: Snapshot, b: Snapshot) -> None:
        run = self.run
        assert run is not None
        span = f"{run.bars:,} bars, last bar {iso(run.last_ts)}"
        if self.offline:
            self.add("feed", PASS if run.bars else FAIL,
                     f"run {run.run_id} {run.status}: {span}" if run.bars else
                     f"run {run.run_id} {run.status}: no bar recorded")
            return
        if b.status is None:
            self.add("feed", FAIL, NOT_RUNNING)
            return
        before, after = (a.status or {}).get("bars", 0), b.status.get("bars", 0)
        if "feed" in b.status:  # a live feed: judged by how far its last bar lags
            self.check_live_feed(b.status, span)
            return
        if after > before:
            self.add("feed", PASS, f"{after - before:,} bars in {self.wait_s:g} s; {span}")
            return
        feed = b.status.get("actors", {}).get("feed", {})
        job = b.status.get("actors", {}).get("learner", {}).get("current_job")
        replay = b.status.get("source") == "replay"
        if replay and feed.get("finished"):
            self.add("feed", PASS, f"replay complete, holding: {span}")
        elif replay and job:
            self.add("feed", PASS, f"replay paused while retraining {job}: {span}")
        elif not replay and run.last_ts is not None and b.status.get("clock_ms", 0) - \
                run.last_ts <= 2 * run.interval_ms + 60_000:
            self.add("feed", PASS, f"last bar is current: {span}")
        else:
            self.add("feed", FAIL, f"no new bar in {self.wait_s:g} s and the feed has not "
                     f"finished: {span}")

    def check_live_feed(self, status: dict[str, Any], span: str) -> None:
        """A live feed is healthy when its last bar closed at most one interval plus a
        minute before the daemon's clock (the exchange's time): one bar may be late
        (left out, fetched over REST), two in a row means the feed is stuck."""
        run = self.run
        assert run is not None
        feed = status["feed"]
        last = feed.get("last_bar_ms")
        now = status.get("clock_ms", 0)
        tolerance = run.interval_ms + 60_000
        conn = (f"stream {'connected' if feed.get('connected') else 'NOT connected'}, "
                f"{feed.get('reconnects', 0)} reconnects, last frame "
                f"{feed.get('last_frame_age_s')} s ago, {feed.get('late_bars', 0)} late bars")
        if last is None:
            self.add("feed", FAIL, f"live feed has emitted no bar yet (next step "
                     f"{feed.get('next_step', '-')}); {conn}")
            return
        lag = now - (last + run.interval_ms)
        if lag > tolerance:
            self.add("feed", FAIL, f"last bar {iso(last)} closed {lag / 1000:,.0f} s before "
                     f"the clock ({iso(now)}): lagging beyond {tolerance / 1000:g} s; {conn}")
        else:
            self.add("feed", PASS, f"last bar is current ({iso(last)}, closed "
                     f"{max(0, lag) / 1000:,.0f} s ago); {conn}")

    def check_predictions(self) -> None:
        run, db = self.run, self.db
        assert run is not None and db is not None
        n, newest = db.execute("SELECT count(*), max(ts) FROM predictions WHERE run_id=?",
                               (run.run_id,)).fetchone()
        if n == 0 and run.steps <= WARMUP_BARS + 1:
            # the models' features need WARMUP_BARS bars of each symbol: no prediction
            # before then is normal, not a fault
            self.add("predictions", SKIP, f"warming up: predictions start after "
                     f"{WARMUP_BARS} bars of each symbol ({run.steps} so far)")
            return
        if n == 0:
            ends = [r[0] for r in db.execute(
                "SELECT data_end FROM models WHERE status='champion'").fetchall()]
            if ends and run.last_ts is not None and all(e and e >= run.last_ts for e in ends):
                self.add("predictions", SKIP, "every champion abstains on its training data "
                         f"(up to {iso(min(ends))}); no out-of-sample bar yet")
            else:
                self.add("predictions", FAIL, f"no prediction recorded in run {run.run_id} "
                         f"({run.bars:,} bars)")
            return
        behind = ((run.last_ts or newest) - newest) // run.interval_ms
        detail = f"{n:,} predictions, newest for the bar of {iso(newest)}"
        if behind <= 2:
            self.add("predictions", PASS, detail)
        else:
            self.add("predictions", FAIL, f"{detail}: {behind} bars behind the last bar")

    def check_orders(self) -> None:
        run, db = self.run, self.db
        assert run is not None and db is not None
        rid = run.run_id
        orders, allowed = db.execute(
            "SELECT count(*), coalesce(sum(risk_action != 'deny'), 0) FROM orders "
            "WHERE run_id=?", (rid,)).fetchone()
        fills = db.execute("SELECT count(*) FROM fills WHERE run_id=?", (rid,)).fetchone()[0]
        trades = db.execute("SELECT count(*) FROM trades WHERE run_id=?", (rid,)).fetchone()[0]
        detail = (f"{orders:,} orders ({allowed:,} allowed), {fills:,} fills, "
                  f"{trades:,} closed trades")
        if orders == 0:
            preds = db.execute("SELECT count(*) FROM predictions WHERE run_id=?",
                               (rid,)).fetchone()[0]
            if preds == 0:
                self.add("orders", SKIP, "nothing predicted yet, so nothing to trade")
            else:
                self.add("orders", FAIL, f"no order recorded in run {rid} after "
                         f"{preds:,} predictions")
        elif allowed and not fills:
            self.add("orders", FAIL, f"allowed orders were never filled: {detail}")
        else:
            self.add("orders", PASS, detail)

    def check_samples(self, a: Snapshot, b: Snapshot) -> None:
        """Training samples must keep getting outcomes: the learner's raw material."""
        run, db = self.run, self.db
        assert run is not None and db is not None
        total, newest = db.execute(
            "SELECT count(*), max(ts) FROM samples WHERE run_id=? AND label IS NOT NULL",
            (run.run_id,)).fetchone()
        everywhere = db.execute("SELECT count(*) FROM samples WHERE label IS NOT NULL"
                                ).fetchone()[0]
        horizon = int(self.run.cfg.get("labels", {}).get("horizon_bars", 48))
        detail = (f"{total:,} with outcomes in run {run.run_id} ({everywhere:,} in the store)"
                  f", newest {iso(newest)}")
        if b.labelled > a.labelled:
            self.add("samples", PASS, f"+{b.labelled - a.labelled:,} outcomes in "
                     f"{self.wait_s:g} s; {detail}")
        elif total == 0 and run.steps <= WARMUP_BARS + horizon:
            # a step holds one bar per symbol: the first sample needs WARMUP_BARS bars of
            # its symbol, its outcome up to `horizon` more
            self.add("samples", SKIP, f"too early: a sample needs {WARMUP_BARS} bars of "
                     f"warm-up and its outcome up to {horizon} more ({run.steps} so far)")
        elif total and run.last_ts is not None and \
                run.last_ts - newest <= (horizon + 2) * run.interval_ms:
            self.add("samples", PASS, f"outcomes keep up with the bars; {detail}")
        else:
            self.add("samples", FAIL, f"outcomes are not being recorded: {detail}")

    def check_triggers(self, status: dict[str, Any] | None) -> None:
        run, db = self.run, self.db
        assert run is not None and db is not None
        lc = run.learning
        if not lc.get("enabled", True):
            self.add("triggers", SKIP, "learner disabled ([learning] enabled = false)")
            return
        every_ms = int(float(lc.get("eval_every_hours", 1.0)) * HOUR_MS)
        if status is not None and "clock_ms" in status:
            now = int(status["clock_ms"])
        elif not self.offline:
            self.add("triggers", FAIL, NOT_RUNNING)
            return
        else:
            now = (run.last_ts or 0) + run.interval_ms
        n, last = db.execute("SELECT count(*), max(clock_ts) FROM learner_evaluations "
                             "WHERE run_id=?", (run.run_id,)).fetchone()
        limit = max(HOUR_MS, every_ms) + run.interval_ms
        if last is None:
            started = run.first_ts
            if started is not None and now - started < every_ms + run.interval_ms:
                self.add("triggers", SKIP, f"first evaluation due at {iso(started + every_ms)}")
            else:
                self.add("triggers", FAIL, f"no trigger evaluation recorded in run "
                         f"{run.run_id} (clock {iso(now)})")
        elif now - last <= limit:
            self.add("triggers", PASS, f"{n:,} evaluations, last at {iso(last)} "
                     f"(clock {iso(now)})")
        else:
            self.add("triggers", FAIL, f"last evaluation at {iso(last)}, "
                     f"{(now - last) / HOUR_MS:.1f} h before the clock ({iso(now)})")

    def check_retrain(self) -> None:
        db = self.db
        assert db is not None and self.run is not None
        rows = db.execute(
            "SELECT family, status, attempt, version, detail, clock_ts FROM retrain_jobs j "
            "WHERE id = (SELECT max(id) FROM retrain_jobs WHERE family=j.family) "
            "ORDER BY family").fetchall()
        if not rows:
            why = "learner disabled" if not self.run.learning.get("enabled", True) else \
                "no retraining job has run yet"
            self.add("retrain", SKIP, why)
            return
        failed = [f"{f}: failed (attempt {a}) at {iso(ts)}: {d}"
                  for f, s, a, _v, d, ts in rows if s == "failed"]
        if failed:
            self.add("retrain", FAIL, "; ".join(failed))
        else:
            self.add("retrain", PASS, "; ".join(
                f"{f}: {s}" + (f" {v}" if v else "") + f" at {iso(ts)}"
                for f, s, _a, v, _d, ts in rows))

    def check_models(self, status: dict[str, Any] | None) -> None:
        """The served versions, the champion pointer files and the registry must agree."""
        assert self.db is not None
        registry = champions(self.db)
        views: dict[str, dict[str, str]] = {"registry": registry}
        models_dir = self.models_dir or Path("models")
        if models_dir.is_dir():
            pointers, bad = champions_on_disk(models_dir)
            if bad:
                self.add("models", FAIL, "; ".join(bad))
                return
            views["pointer"] = pointers
        if not self.offline:
            if status is None:
                self.add("models", FAIL, NOT_RUNNING)
                return
            reply = self.ask_or_fail("models", "models")
            if reply is None:
                return
            if not reply["ok"]:
                self.add("models", FAIL, f"ctl models refused: {reply['error']}")
                return
            views["served"] = {m["family"]: m["version"] for m in reply["result"]["served"]
                               if m.get("role", "serving") == "serving"}
        fams = sorted(set().union(*views.values()))
        if not fams:
            self.add("models", FAIL, "no model anywhere: the daemon predicts nothing")
            return
        bad = [f"{f}: " + ", ".join(f"{k} {v.get(f, '-')}" for k, v in views.items())
               for f in fams if len({v.get(f) for v in views.values()}) > 1]
        compared = ", ".join(views)
        if bad:
            self.add("models", FAIL, f"{compared} disagree: " + "; ".join(bad))
        else:
            self.add("models", PASS, f"{compared} agree: " + ", ".join(
                f"{f} {registry.get(f) or next(iter(views.values())).get(f)}" for f in fams))

    def check_plugins(self, status: dict[str, Any] | None) -> None:
        if self.offline:
            self.add("plugins", SKIP, "--offline: plugin state lives in the daemon")
            return
        if status is None:
            self.add("plugins", FAIL, NOT_RUNNING)
            return
        reply = self.ask_or_fail("plugins", "plugins")
        if reply is None:
            return
        if not reply["ok"]:
            if "unknown command" in reply["error"]:
                self.add("plugins", SKIP, "this daemon has no plugins command")
            elif "disabled" in reply["error"]:
                self.add("plugins", SKIP, reply["error"])
            else:
                self.add("plugins", FAIL, f"ctl plugins refused: {reply['error']}")
            return
        plugins = reply["result"].get("plugins", [])
        broken = [p for p in plugins if p.get("state") in ("rejected", "disabled")]
        if broken:
            self.add("plugins", FAIL, "; ".join(
                f"{p.get('name')} {p.get('state')}: {p.get('last_error') or p.get('errors')}"
                for p in broken))
        else:
            active = [p.get("name") for p in plugins if p.get("state") == "active"]
            self.add("plugins", PASS, f"{len(active)} active" +
                     (f" ({', '.join(map(str, active))})" if active else ""))

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def locate_socket(state_dir: Path | None, socket_path: Path | None) -> tuple[Path, str]:
    """The control socket to ask, and why that one (said when nobody answers there).

    --socket; with --state-dir: its socket if one is there, else where the daemon binds
    under systemd ($RUNTIME_DIRECTORY, or the unit's /run/qtraderd if it exists), else the
    state dir's own (so a failure names the path the operator implied); without either:
    where `qtraderd ctl` looks.
    """
    if socket_path is not None:
        return socket_path, "(from --socket)"
    if state_dir is None:
        return ctl.socket_path_for(), "(where `qtraderd ctl` looks; see --state-dir/--socket)"
    own = state_dir / ctl.SOCKET_NAME
    if own.exists():
        return own, f"(in --state-dir {state_dir})"
    rt = ctl.runtime_dir()
    if rt is not None:
        return rt / ctl.SOCKET_NAME, (f"($RUNTIME_DIRECTORY; {own} does not exist)")
    if ctl.SYSTEMD_SOCKET.exists():
        return ctl.SYSTEMD_SOCKET, f"(the systemd unit's; {own} does not exist)"
    return own, f"(in --state-dir {state_dir})"


def _find_socket(state_dir: Path | None, socket_path: Path | None) -> Path:
    return locate_socket(state_dir, socket_path)[0]


def verify(state_dir: Path | None = None, socket_path: Path | None = None,
           models_dir: Path | None = None, *, offline: bool = False,
           wait_s: float = 2.0, socket_origin: str | None = None) -> list[Check]:
    """Run every check; the list is in display order."""
    v = Verifier(state_dir, socket_path, models_dir, offline=offline, wait_s=wait_s,
                 socket_origin=socket_origin)
    try:
        return v.run_checks()
    finally:
        v.close()


def render(checks: list[Check]) -> str:
    failed = sum(c.result == FAIL for c in checks)
    verdict = "OK" if not failed else f"FAILED ({failed} of {len(checks)} checks)"
    return format_table([asdict(c) for c in checks]) + f"\n\nverify: {verdict}\n"


def main(args: argparse.Namespace) -> int:
    """`qtraderd verify` (parsed by cli.py): prints the table or JSON, returns the exit code."""
    if args.wait < 0:
        print("qtraderd: error: --wait must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    socket_path, origin = args.socket, None
    if getattr(args, "instance", None) is not None:
        origin = f"(of --instance {args.instance})"
        try:
            socket_path = ctl.instance_socket(args.instance)
        except ctl.UsageError as exc:
            print(f"qtraderd: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    checks = verify(args.state_dir, socket_path, args.models_dir, offline=args.offline,
                    wait_s=args.wait, socket_origin=origin)
    ok = not any(c.result == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}, indent=1))
    else:
        sys.stdout.write(render(checks))
    return EXIT_OK if ok else EXIT_FAILED
