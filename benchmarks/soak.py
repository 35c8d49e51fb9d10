"""Soak: several daemons paper-trading for the whole shared data through one faulty simulator.

    .venv/bin/python benchmarks/soak.py [--instances 2] [--days 20] [--speed 1500]
                                        [--keep DIR]

The ten shared 5m pairs are served by `qtraderd exchange-sim` (a real subprocess) at
`--speed` with every feed fault on (dropped, stalled, garbage, duplicated and reordered
frames, 429/418/5xx and slow REST answers), and `--instances` daemons (real subprocesses,
each its own state directory and control socket) paper-trade them at once with learning
on (the two tree families, retraining on their own recorded bars). While they run, each
daemon's RSS is read from /proc and its `ctl status` asked about twice a second; an RSS
sample is kept each time the daemon's bar count passes a multiple of 1,000. At the end:

* RSS growth after warm-up: the last sample against the first one taken after the first
  live day (its 2,880 bars; the predictor's windows, labels awaiting outcomes and the
  learner's first jobs are all in place by then) (target <= 5 %);
* bars lost: every candle the simulator served in the live window must be in each
  daemon's `bars` table exactly once (target 0 missing);
* the control socket: every status request answered from the first answer until the
  daemon began to stop (target: all), with its slowest answer.

Figures go to stdout, the work directory to stderr; a daemon that fails exits this script
non-zero with its log's tail. The whole 20 days at 1500x take about 20 minutes.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from _common import BAR_MS, PAIRS, REPO, SHARED, iso, prepare, simulator, work_dir, write_config

sys.path.insert(0, str(REPO))
from qtraderd.control.client import CtlError, request

FAULTS = ("drop=0.001,stall=0.0005:0.5s,garbage=0.002,dup=0.003,reorder=0.002,"
          "http429=0.05:0.2s,http418=0.01:0.3s,http5xx=0.05,slow=0.05:0.3s")
FIRST_MS = 1515560100000  # the shared 5m pairs' first open time (2018-01-10 05:35)
WARMUP_DAYS = 1.5
WARM_BARS = 288 * len(PAIRS)  # the first live day
STRAGGLE_S = 60.0  # a daemon still running this long after the simulator stopped is ended


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sim_exited(work: Path) -> bool:
    """The simulator logged its exit (data over and its linger past)."""
    log = work / "sim-soak.log"
    return log.exists() and "exchange-sim stopped" in log.read_text()[-5000:]


def stopping(proc: subprocess.Popen[bytes], log: Path) -> bool:
    """The daemon exited or logged its stop (its socket closes on the way out)."""
    return proc.poll() is not None or "feed finished" in log.read_text()[-20_000:]


def served(start_ms: int, end_ms: int) -> dict[str, set[int]]:
    """The candles the simulator serves in [start, end), per symbol (from the CSVs)."""
    out: dict[str, set[int]] = {}
    for p in PAIRS:
        with (SHARED / f"{p}-5m.csv").open() as f:
            next(f)
            out[p] = {t for t in (int(line.split(",", 1)[0]) for line in f)
                      if start_ms <= t < end_ms}
    return out


def stored(db: Path, start_ms: int, end_ms: int) -> dict[str, list[int]]:
    conn = sqlite3.connect(db)
    try:
        out: dict[str, list[int]] = {p: [] for p in PAIRS}
        for sym, t in conn.execute("SELECT symbol, open_time FROM bars WHERE interval='5m' "
                                   "AND open_time>=? AND open_time<?", (start_ms, end_ms)):
            out.setdefault(sym, []).append(t)
        return out
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--days", type=float, default=20.0, help="live days (after the warm-up)")
    ap.add_argument("--speed", type=float, default=1500.0)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    work = work_dir(args.keep)
    market, models = prepare(work)
    start = FIRST_MS + int(WARMUP_DAYS * 86_400_000) + BAR_MS
    start -= start % BAR_MS
    end = min(start + int(args.days * 86_400_000), 1517287800000 + BAR_MS)
    sim_args = ["--state-dir", str(market), "--symbols", ",".join(PAIRS), "--start",
                iso(start), "--end", iso(end), "--speed", f"{args.speed:g}", "--faults",
                FAULTS, "--seed", "7", "--hold", "--linger", "300"]
    learning = ('\n[learning]\nenabled = true\nfamilies = ["xgboost", "lightgbm"]\n'
                'eval_every_hours = 6\n')
    procs: list[tuple[str, subprocess.Popen[bytes], Path, Path]] = []
    t0 = time.monotonic()
    with simulator(work, "soak", sim_args) as url:
        for i in range(args.instances):
            name = f"acct{i + 1}"
            state, mdir = work / name / "state", work / name / "models"
            shutil.rmtree(work / name, ignore_errors=True)
            state.mkdir(parents=True)
            shutil.copytree(models, mdir)
            cfg = write_config(work / name / "soak.toml", url, args.speed, end - BAR_MS)
            text = cfg.read_text().replace("[learning]\nenabled = false\n", "")
            cfg.write_text(text.replace("warmup_days = 1.5", f"warmup_days = {WARMUP_DAYS}")
                           + learning)
            log = (work / name / "daemon.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "qtraderd", "run", "--config", str(cfg),
                 "--state-dir", str(state), "--models-dir", str(mdir)],
                cwd=work / name, stdout=log, stderr=subprocess.STDOUT)
            procs.append((name, proc, state, work / name / "daemon.log"))
        log_of = {n: log for n, _, _, log in procs}
        unfinished: set[str] = set()
        samples: dict[str, list[tuple[int, float]]] = {n: [] for n, *_ in procs}
        asked = {n: 0 for n, *_ in procs}
        answered = {n: 0 for n, *_ in procs}
        slowest = {n: 0.0 for n, *_ in procs}
        next_mark = {n: 1000 for n, *_ in procs}
        sim_gone: float | None = None
        while any(p.poll() is None for _, p, _, _ in procs):
            if sim_gone is None and sim_exited(work):
                sim_gone = time.monotonic()
            if sim_gone is not None and time.monotonic() - sim_gone > STRAGGLE_S:
                for name, proc, _, _ in procs:  # the data is over: no more bars will come
                    if proc.poll() is None:
                        print(f"{name}: still running {STRAGGLE_S:.0f} s after the "
                              "simulator stopped: SIGTERM", file=sys.stderr)
                        proc.terminate()
                        unfinished.add(name)
                for _, proc, _, _ in procs:
                    proc.wait()
                break
            for name, proc, state, _ in procs:
                if proc.poll() is not None:
                    continue
                up = answered[name] > 0  # once it has answered, every request counts
                asked[name] += up
                q = time.monotonic()
                try:
                    reply = request(state / "qtraderd.sock", "status", timeout_s=5)
                except CtlError:  # not listening yet (start-up), stopping, or no answer
                    if up and stopping(proc, log_of[name]):
                        asked[name] -= 1  # the socket closes as the daemon stops
                    continue
                answered[name] += 1
                asked[name] += not up
                slowest[name] = max(slowest[name], time.monotonic() - q)
                bars = (reply.get("result") or {}).get("bars") or 0
                rss = rss_mb(proc.pid)
                if rss is not None and bars >= next_mark[name]:
                    samples[name].append((bars, rss))
                    next_mark[name] = (bars // 1000 + 1) * 1000
            time.sleep(0.5)  # the sampling period, not a synchronisation
    wall = time.monotonic() - t0
    want = served(start, end)
    ok = True
    print(f"qtraderd soak: {args.instances} instances, {len(PAIRS)} pairs, "
          f"{iso(start)} .. {iso(end)} at {args.speed:g}x, faults {FAULTS}, learning on "
          f"(xgboost, lightgbm); {wall:.0f} s wall")
    for name, proc, state, log in procs:
        if name in unfinished:
            print(f"  {name}: did not reach the end of the data ({STRAGGLE_S:.0f} s after "
                  "the simulator stopped); figures below up to there")
            ok = False
        elif proc.returncode != 0:
            print(f"  {name}: exit {proc.returncode}\n{log.read_text()[-3000:]}")
            ok = False
            continue
        got = stored(state / "qtraderd.db", start, end)
        missing = sum(len(want[p] - set(got.get(p, []))) for p in PAIRS)
        twice = sum(len(v) - len(set(v)) for v in got.values())
        s = [x for x in samples[name] if x[0] >= WARM_BARS] or samples[name][-1:]
        base = s[0][1] if s else float("nan")
        growth = 100.0 * (s[-1][1] / base - 1.0) if s else float("nan")
        text = log.read_text()
        jobs = text.count("retrain started:")
        print(f"  {name}: {sum(len(v) for v in got.values()):,} live bars stored, "
              f"{missing} missing, {twice} twice; RSS {base:.0f} MB after the first day, "
              f"max {max(r for _, r in s):.0f}, last {s[-1][1]:.0f} MB: {growth:+.1f} % "
              f"(target <= 5 %; {len(s)} samples); ctl status answered {answered[name]} of "
              f"{asked[name]} asked, slowest {slowest[name] * 1000:.0f} ms; "
              f"{jobs} retraining jobs" if s else f"  {name}: no RSS samples")
        ok = (ok and missing == 0 and twice == 0 and bool(s) and growth <= 5.0
              and answered[name] == asked[name])
    print(f"  targets: {'all met' if ok else 'NOT all met'}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
