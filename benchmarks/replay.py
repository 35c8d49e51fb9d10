"""Replay benchmark: the whole daemon vs the same feature + inference work in a tight loop.

    .venv/bin/python benchmarks/replay.py [--pairs N] [--keep DIR]

1. Imports the ten shared 5m alt/BTC pairs (57.5k bars) into a fresh store.
2. Trains XGBoost + LightGBM (learner subprocess) on the shared 1m series (Nov 2017), so
   every 5m bar of January 2018 is out of sample and the daemon runs inference on all of
   them. Model quality is irrelevant here; only the work per bar matters.
3. In a child process: runs the full daemon, learning off (feed, execution, monitor, predictor with
   features/labels/regimes/ONNX ensemble, sizer, risk, recorder writing every row to
   SQLite) over the data, twice, reporting wall time, bars/s, RSS after each replay and
   the peak RSS (VmHWM).
4. In another child process: the tight loop — the same bars, the same incremental
   features, the same two ONNX sessions on the same per-timestamp batches and the same
   ensemble average — with no actors, channels, risk or recording. Its clock starts after
   the bars and models are loaded, so the daemon's throughput is likewise timed from the
   first bar sent to the last bar finished; start-up and shutdown are reported apart.
Prints both throughputs and their ratio (target <= 2.0), peak RSS (target <= 150 MB) and
the RSS growth of a second replay in the same process, i.e. replaying twice vs once
(target <= 5 %). Besides wall time, both sides' process CPU time is printed (the daemon's
with start-up and shutdown, plus the store writer subprocess's apart): on a shared machine
it reads through other load. All figures come from this run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import PAIRS, SHARED, run

DAEMON_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    t_start = time.perf_counter()

    def cpu_children():  # the store writer subprocess, once it has exited
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    import trio
    from qtraderd.core.config import load, with_changes
    from qtraderd.runtime.daemon import Daemon
    t_imported = time.perf_counter()
    state, models, sock = sys.argv[1:4]

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    def hwm_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    out = {"import_s": t_imported - t_start, "runs": []}
    for i in range(2):
        # the trading core alone: retraining beside a replay is benchmarks/learning.py
        cfg = with_changes(load(env={}), learning={"enabled": False},
                           plugins={"enabled": False})  # none installed by default
        d = Daemon(cfg, state, models, socket_path=sock, progress_every_s=0)
        t0, c0, k0 = time.perf_counter(), time.process_time(), cpu_children()
        code = trio.run(d.run)
        wall = time.perf_counter() - t0
        cpu, cpu_writer = time.process_time() - c0, cpu_children() - k0
        out["runs"].append({"code": code, "wall_s": wall, "bars": d.feed.bars,
                            "replay_s": d.execution.last_done - d.feed.first_sent,
                            "replay_cpu_s": d.execution.last_done_cpu - d.feed.first_sent_cpu,
                            "predictions": d.predictor.predictions,
                            "steps_written": d.recorder.steps_written,
                            "batches": d.recorder.batches_acked, "trades": d.execution.trades,
                            "rss_mb": rss_mb(), "cpu_s": cpu, "cpu_writer_s": cpu_writer})
    out["peak_rss_mb"] = hwm_mb()
    out["process_wall_s"] = time.perf_counter() - t_start
    sys.stdout.write(json.dumps(out))
""")

TIGHT_CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from qtraderd.features.spec import FeatureState
    from qtraderd.models.onnx_model import load_champions
    from qtraderd.store.db import connect
    from qtraderd.venues.replay import stored_symbols
    state, models = sys.argv[1:3]
    conn = connect(state, readonly=True)
    symbols = stored_symbols(conn, "5m")
    loaded, errors = load_champions(models)
    assert loaded and not errors, errors
    sessions = list(loaded.values())
    t0 = time.perf_counter()
    rows = conn.execute(
        "SELECT symbol, open_time, open, high, low, close, volume FROM bars "
        "WHERE interval='5m' ORDER BY open_time, symbol").fetchall()
    t_load = time.perf_counter() - t0
    feats = {s: FeatureState() for s in symbols}
    n = preds = 0
    i = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while i < len(rows):
        ts = rows[i][1]
        batch = []
        while i < len(rows) and rows[i][1] == ts:
            s, t, o, h, l, c, v = rows[i]
            r = feats[s].update(t, o, h, l, c, v)
            if r is not None:
                batch.append(r)
            i += 1
            n += 1
        if batch:
            x = np.asarray(batch, dtype=np.float32)
            probs = [m.predict(x).tolist() for m in sessions if ts > m.data_end]
            if probs:
                ens = [[sum(p[k][j] for p in probs) / len(probs) for j in (1, 2)]
                       for k in range(len(batch))]
                preds += len(ens)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sys.stdout.write(json.dumps({"bars": n, "predictions": preds, "wall_s": wall,
                                 "cpu_s": cpu, "load_s": t_load}))
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=len(PAIRS), help="how many of the 10 pairs")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work dir here")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="qtbench"))
    state, models = work / "state", work / "models"
    py = sys.executable
    files = [SHARED / f"{p}-5m.csv" for p in PAIRS[: args.pairs]]

    print(f"work dir {work}", file=sys.stderr)
    t = time.perf_counter()
    run([py, "-m", "qtraderd", "import", *map(str, files), "--state-dir", str(state)])
    run([py, "-m", "qtraderd", "import", str(SHARED / "UNITTESTBTC-1m.csv"),
         "--state-dir", str(state)])
    print(f"imported in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    cfg = work / "train.toml"
    cfg.write_text('[feed]\ninterval = "1m"\n[train]\ntrain_fraction = 0.95\n')
    t = time.perf_counter()
    run([py, "-m", "qtraderd.training", "train", "--state-dir", str(state), "--models-dir",
         str(models), "--config", str(cfg), "--symbols", "UNITTESTBTC"])
    print(f"trained in {time.perf_counter() - t:.1f} s (on the 1m series: every 5m bar is "
          "out of sample)", file=sys.stderr)

    sock = Path(tempfile.mkdtemp(prefix="qtb", dir="/tmp")) / "s.sock"
    daemon = json.loads(run([py, "-c", DAEMON_CHILD, str(state), str(models),
                             str(sock)]).stdout)
    tights = [json.loads(run([py, "-c", TIGHT_CHILD, str(state), str(models)]).stdout)
              for _ in range(3)]

    # Both sides run two or three times; each side's faster run is compared (this VM's timing jitter
    # is ~10 %, and best-of-n is the usual way to read through it).
    first, second = daemon["runs"]
    bars = first["bars"]
    best_replay = min(first["replay_s"], second["replay_s"])
    tight = min(tights, key=lambda t: t["wall_s"])
    d_rate = bars / best_replay
    t_rate = tight["bars"] / tight["wall_s"]
    growth = 100.0 * (second["rss_mb"] / first["rss_mb"] - 1.0)
    # CPU time reads through other load on the machine: the daemon process's first to last
    # bar (as its wall time) and its whole replay, vs the tight loop's
    d_cpu = min(first["replay_cpu_s"], second["replay_cpu_s"])
    d_cpu_all = min(first["cpu_s"], second["cpu_s"])
    t_cpu = min(t["cpu_s"] for t in tights)
    w_cpu = min(first["cpu_writer_s"], second["cpu_writer_s"])
    print()
    print(f"qtraderd replay benchmark: {args.pairs} pairs, {bars:,} bars (5m), 2 models")
    print(f"  daemon (all actors, ONNX ensemble, SQLite recording): {best_replay:.2f} s "
          f"first to last bar = {d_rate:,.0f} bars/s; {first['wall_s']:.2f} s with start-up "
          f"and shutdown ({first['predictions']:,} predictions, "
          f"{first['steps_written']:,} steps recorded in {first['batches']} batches, "
          f"{first['trades']} trades)")
    print(f"  same work in a tight loop (features + ONNX ensemble):  {tight['wall_s']:.2f} s "
          f"= {t_rate:,.0f} bars/s ({tight['predictions']:,} predictions; runs "
          f"{', '.join(format(t['wall_s'], '.2f') for t in tights)} s)")
    print(f"  ratio tight/daemon throughput: {t_rate / d_rate:.2f}  (target <= 2.0)")
    print(f"  CPU time: daemon process {d_cpu:.2f} s first to last bar ({d_cpu_all:.2f} s with "
          f"start-up and shutdown; the store writer process {w_cpu:.2f} s more, on the other "
          f"core), tight loop {t_cpu:.2f} s: ratio {d_cpu / t_cpu:.2f}")
    print(f"  daemon process: imports {daemon['import_s']:.2f} s, whole process "
          f"(2 replays) {daemon['process_wall_s']:.2f} s")
    print(f"  peak RSS {daemon['peak_rss_mb']:.0f} MB (target <= 150); RSS after replay 1 "
          f"{first['rss_mb']:.0f} MB, after replay 2 {second['rss_mb']:.0f} MB: "
          f"{growth:+.1f} % (target <= 5 %)")
    print(f"  replays first to last bar: {first['replay_s']:.2f} s and {second['replay_s']:.2f} s"
          f" ({first['wall_s']:.2f} s and {second['wall_s']:.2f} s with start-up and shutdown)")
    print("  reference (DEVELOPERS.md, measured elsewhere on this kind of machine, not in this "
          "run): freqtrade EMA-cross backtest 4.3 s / 426 MB, NautilusTrader 5.4 s / 471 MB")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(sock.parent, ignore_errors=True)
    ok = t_rate / d_rate <= 2.0 and daemon["peak_rss_mb"] <= 150 and growth <= 5
    print(f"  targets: {'all met' if ok else 'NOT all met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
