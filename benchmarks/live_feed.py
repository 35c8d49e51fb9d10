"""Live-feed benchmark: closed-kline frame received -> step decided, and CPU while idle.

    .venv/bin/python benchmarks/live_feed.py [--bars N] [--speed S] [--keep DIR]

1. Imports the ten shared 5m alt/BTC pairs into a fresh store (what the simulator serves)
   and trains XGBoost + LightGBM on the shared 1m series of Nov 2017, as replay.py does:
   every 5m bar of January 2018 is out of sample, so the daemon runs real ONNX inference
   (both models) on every live step.
2. Latency: `qtraderd exchange-sim` (a real subprocess, loopback TCP) serves the ten pairs
   from 2018-01-16 at --speed (default 2000: one 5m bar every 150 ms of wall time); the
   daemon runs in a child process (mode paper, feed.source binance, [exchange] custom at
   the simulator's URL, feed.speed = the simulator's, learning and plugins off, 1.5 days
   of warm-up over REST: more than the 400 bars the predictor warms up on). Inside that
   child only, wrappers take timestamps: websockets' socket read (the moment the frame's
   bytes reached the daemon's process), the stream client's closed-kline path (which read
   delivered which kline), the feed actor taking the step, the predictor's start and end,
   `LoadedModel.predict` (inference, per step), the actors' checkpoint packing and
   `RiskActor.handle` (step decided). Per step of ten symbols: from the read of the last
   of its ten closed klines to risk done, wall time and the event-loop thread's CPU time,
   minus that step's inference, and where the time goes. The product code is unchanged;
   the wrappers add a few microseconds per step.
3. Idle CPU: the same set-up at speed 120 (a bar every 2.5 s) with Binance's update
   cadence (an open-kline frame per symbol about every 250 ms of wall time). The daemon
   process's CPU time is sampled in the quiet middle of each gap between bars (from
   0.6 s after risk finished a step to 0.3 s before the next close): CPU per second while
   idle, and that times the bar spacing = CPU per bar while idle between bars (at 2.5 s
   spacing, and at a real 5m bar, 300 s); plus the all-in CPU per bar over the run.

The simulator runs in its own process, not the daemon's: its work (encoding and sending
~270 frames/s at speed 2000) would otherwise sit on the daemon's event loop and CPU and
inflate both figures; every timestamp is taken inside the daemon's process, so no clock
has to be correlated across processes. Prints the figures with their targets and the run
parameters; exits 0 (the targets are reported, not enforced).
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
import sys
import textwrap
import time
from pathlib import Path

from _common import (
    BAR_MS,
    FRAME_HOOKS,
    INFER_HOOKS,
    PAIRS,
    START,
    iso,
    pct,
    prepare,
    run_child,
    simulator,
    start_ms,
    work_dir,
    write_config,
)

SKIP_STEPS = 5  # the first steps carry the predictor's warm-up (400 bars x 10 symbols)

CHILD = textwrap.dedent("""
    import collections, json, os, sys, time
    t_start = time.perf_counter()
    import trio
    from qtraderd.actors.feed import FeedActor
    from qtraderd.actors.risk import RiskActor
    from qtraderd.core.config import load
    from qtraderd.runtime import logs
    from qtraderd.runtime.daemon import Daemon
    from qtraderd.runtime.supervisor import Actor
    cfg_path, state, models, sock, phase = sys.argv[1:6]
    idle_from, idle_to = float(sys.argv[6]), float(sys.argv[7])
    cfg = load(cfg_path, env={})
    logs.setup(cfg.runtime.log_level)
    perf, tcpu, pcpu = time.perf_counter, time.thread_time, time.process_time
""") + FRAME_HOOKS + INFER_HOOKS + textwrap.dedent("""
    t_imported = time.perf_counter()

    # the feed actor has the step from the bar source (the predictor's start and end:
    # INFER_HOOKS)
    orig_pace = FeedActor._pace
    async def pace(self, ts):  # called as the feed actor takes each step from the source
        marks[ts]["feed"] = perf()
        return await orig_pace(self, ts)
    FeedActor._pace = pace
    # every live step is a checkpoint: the actors' state rides in a bar-less step (seal)
    # sent behind it, after risk; packing inside the measured span should be 0
    packing = collections.defaultdict(float)
    packing_after = collections.defaultdict(float)
    orig_with_state = Actor.with_state
    def with_state(self, step):
        t0 = perf()
        out = orig_with_state(self, step)
        (packing_after if step.seal else packing)[step.ts] += perf() - t0
        return out
    Actor.with_state = with_state

    # (4) the step decided: risk has handled it
    done = {}
    step_done = [None]
    writer = []
    def writer_cpu():  # the store writer subprocess (/proc ticks): the daemon's children
        if not writer:
            me = os.getpid()
            for task in os.listdir(f"/proc/{me}/task"):
                with open(f"/proc/{me}/task/{task}/children") as f:
                    writer.extend(int(p) for p in f.read().split())
        total = 0
        for pid in writer:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total / os.sysconf("SC_CLK_TCK")
    orig_risk = RiskActor.handle
    def risk_handle(self, step):
        out = orig_risk(self, step)
        done[step.ts] = (perf(), tcpu(), pcpu(), len(step.bars),
                         writer_cpu() if phase == "idle" else 0.0)
        ev, step_done[0] = step_done[0], trio.Event()
        ev.set()
        return out
    RiskActor.handle = risk_handle

    idle = []
    async def sampler():  # the quiet middle of every gap between two bars
        while True:
            await step_done[0].wait()
            n0 = len(done)
            await trio.sleep(idle_from)
            a = (perf(), pcpu(), writer_cpu(), tcpu())
            await trio.sleep(idle_to - idle_from)
            b = (perf(), pcpu(), writer_cpu(), tcpu())
            if len(done) == n0:  # no step inside the window
                idle.append([b[i] - a[i] for i in range(4)])

    async def main():
        step_done[0] = trio.Event()
        d = Daemon(cfg, state, models, socket_path=sock, progress_every_s=60.0)
        async with trio.open_nursery() as n:
            if phase == "idle":
                n.start_soon(sampler)
            code = await d.run()
            n.cancel_scope.cancel()
        return code, d, d.feed.status(), d.source.stream.status()

    code, d, st, stream = trio.run(main)
    symbols = list(cfg.feed.symbols)
    steps = []
    for ts in sorted(done):
        end_wall, end_cpu, end_pcpu, nbars, wcpu = done[ts]
        frames = [frame_at.get((s, ts)) for s in symbols]
        # a step counts when a stream frame completed it: all its bars came on the stream
        # and the last of them before risk was done (not a backfilled bar seen again)
        complete = (nbars == len(symbols) and all(f is not None for f in frames)
                    and max(frames)[0] < end_wall)
        first = min(f[0] for f in frames) if complete else None
        lastf = max(frames) if complete else None
        steps.append({"ts": ts, "bars": nbars, "from_stream": complete,
                      "read": lastf[0] if complete else None,
                      "first_read": first,
                      "lat": end_wall - lastf[0] if complete else None,
                      "cpu": end_cpu - lastf[1] if complete else None,
                      "inf": infer[ts][0] if ts in infer else 0.0,
                      "inf_cpu": infer[ts][1] if ts in infer else 0.0,
                      "done": end_wall, "pcpu": end_pcpu, "wcpu": wcpu,
                      "marks": marks.get(ts, {}), "pack": packing.get(ts, 0.0),
                      "pack_after": packing_after.get(ts, 0.0)})
    out = {"code": code, "import_s": t_imported - t_start, "steps": steps, "idle": idle,
           "feed": {k: st.get(k) for k in ("steps", "bars", "late_bars", "skipped_steps",
                                           "reconnects", "malformed_frames", "warmup_bars",
                                           "backfilled_bars", "history_bars",
                                           "stream_bars")},
           "stream": stream, "predictions": d.predictor.predictions,
           "cpu_s": pcpu(), "writer_pids": writer}
    sys.stdout.write(json.dumps(out))
""")


def phase(work: Path, name: str, models: Path, speed: float, bars: int, updates: int,
          idle_window: tuple[float, float] = (0.0, 0.0)) -> dict:
    """One simulator subprocess and one daemon child over `bars` live 5m bars."""
    end_ms = start_ms() + bars * BAR_MS  # exclusive for the simulator
    shutil.rmtree(work / f"state-{name}", ignore_errors=True)  # a fresh run, not a resume
    with simulator(work, name, [
            "--state-dir", str(work / "market"), "--symbols", ",".join(PAIRS), "--interval",
            "5m", "--start", START, "--end", iso(end_ms), "--speed", f"{speed:g}",
            "--updates", str(updates), "--linger", "30"]) as url:
        cfg = write_config(work / f"{name}.toml", url, speed, end_ms - BAR_MS)
        return run_child(CHILD, work, name, [str(cfg), str(work / f"state-{name}"),
                                             str(models), name, *map(str, idle_window)])


def report_latency(lat: dict, speed: float, bars: int) -> bool:
    """Print the latency figures; True if the target is met."""
    steps = lat["steps"]
    measured = [s for s in steps[SKIP_STEPS:] if s["from_stream"]]
    if not measured:
        raise SystemExit("no step was completed by a stream frame")
    not_stream = len(steps[SKIP_STEPS:]) - len(measured)
    # a step whose last frame came before the previous step was done would measure queueing
    queued = sum(1 for prev, s in itertools.pairwise(steps)
                 if s["from_stream"] and s["ts"] >= measured[0]["ts"]
                 and s["read"] < prev["done"])
    ms = 1000.0
    lat_ms = [s["lat"] * ms for s in measured]
    inf_ms = [s["inf"] * ms for s in measured]
    beyond = [(s["lat"] - s["inf"]) * ms for s in measured]
    cpu_ms = [s["cpu"] * ms for s in measured]
    cpu_beyond = [(s["cpu"] - s["inf_cpu"]) * ms for s in measured]
    pack = [s["pack"] * ms for s in measured]
    pack_after = [s["pack_after"] * ms for s in measured]
    spread = [(s["read"] - s["first_read"]) * ms for s in measured]
    gaps = [(b["done"] - a["done"]) * ms for a, b in itertools.pairwise(measured)]
    legs = {  # (from, to) marks
        "frames read -> step out of the bar source (stream client parses the 10 frames, "
        "feed groups them)": ("read", "feed"),
        "-> predictor (feed, execution and monitor actors)": ("feed", "predictor"),
        "predictor (features, inference, ensemble)": ("predictor", "predicted"),
        "-> risk done (sizer, risk)":
            ("predicted", "done")}

    def at(s: dict, key: str) -> float:
        return s[key] if key in ("read", "done") else s["marks"][key]

    f = lat["feed"]
    p99_beyond = pct(beyond, 99)
    print(f"  latency run: simulator speed {speed:g}: a 5m bar every "
          f"{BAR_MS / speed:.0f} ms of wall time, 3 open updates + the closed kline per "
          f"symbol per bar; {bars} bars served, {len(steps)} steps taken, {len(measured)} "
          f"measured (first {SKIP_STEPS} skipped: the predictor's warm-up; {not_stream} not "
          f"completed by a stream frame); {f['late_bars']} late bars, {f['reconnects']} "
          f"reconnects, {lat['predictions']:,} predictions")
    print(f"    steps {pct(gaps, 50):.0f} ms apart (median) and a few ms long: {queued} of "
          f"{len(measured)} found the previous step still in the chain (no queueing)")
    print("  closed-kline frame read (the last of the step's 10, at the socket read) -> risk "
          "done, wall time:")
    print(f"    p50 {pct(lat_ms, 50):.2f} ms, p99 {pct(lat_ms, 99):.2f} ms, max "
          f"{max(lat_ms):.2f} ms")
    print(f"    model inference (2 models x 10 rows) per step: p50 {pct(inf_ms, 50):.2f} ms, "
          f"p99 {pct(inf_ms, 99):.2f} ms")
    print(f"    beyond inference (each step's latency - its inference): p50 "
          f"{pct(beyond, 50):.2f} ms, p99 {p99_beyond:.2f} ms (target <= 2 ms), max "
          f"{max(beyond):.2f} ms")
    print(f"    the event-loop thread's CPU time over the same span: p50 {pct(cpu_ms, 50):.2f}"
          f" ms, p99 {pct(cpu_ms, 99):.2f} ms; beyond inference p50 "
          f"{pct(cpu_beyond, 50):.2f} ms, p99 {pct(cpu_beyond, 99):.2f} ms")
    print("    where it goes, p50 / p99 ms:")
    for name, (a, b) in legs.items():
        v = [(at(s, b) - at(s, a)) * ms for s in measured]
        print(f"      {name}: {pct(v, 50):.2f} / {pct(v, 99):.2f}")
    print(f"      checkpoint packing inside the span: {pct(pack, 50):.2f} / "
          f"{pct(pack, 99):.2f}; after risk, in the state step behind each live step (every "
          f"live step is a checkpoint): {pct(pack_after, 50):.2f} / {pct(pack_after, 99):.2f}")
    print(f"    (a bar's 10 closed klines reach the daemon within {pct(spread, 50):.2f} ms of "
          "each other, median; the span starts at the last)")
    return len(measured) >= 200 and p99_beyond <= 2.0


def report_idle(idl: dict, speed: float, updates: int) -> None:
    """Print CPU while idle between bars, per second and per bar."""
    ms = 1000.0
    bar_s = BAR_MS / 1000 / speed
    win = idl["idle"]
    if not win:
        raise SystemExit("the idle run sampled no gap between bars")
    wall, cpu, writer, loop = (sum(w[i] for w in win) for i in range(4))
    per_s = cpu / wall
    steps = idl["steps"][2:]  # from the third step: the first carries the warm-up
    n = len(steps) - 1
    all_in = (steps[-1]["pcpu"] - steps[0]["pcpu"]) / n if n > 0 else math.nan
    all_in_w = (steps[-1]["wcpu"] - steps[0]["wcpu"]) / n if n > 0 else math.nan
    print(f"  idle run: simulator speed {speed:g}: a bar every {bar_s:g} s, {updates} open "
          "updates + the closed kline per symbol per bar (a frame per symbol every 250 ms of "
          f"wall time, Binance's kline cadence); {len(idl['steps'])} steps, {len(win)} gaps "
          f"sampled from 0.6 s after risk to 0.3 s before the next close ({wall:.1f} s)")
    print(f"    daemon process CPU while idle: {per_s * ms:.2f} ms per second "
          f"({per_s * 100:.2f} % of a core): event-loop thread {loop / wall * ms:.2f} ms/s "
          f"(open-kline frames, timers), other threads {(cpu - loop) / wall * ms:.2f} ms/s "
          f"(the models-directory watcher); store writer process {writer / wall * ms:.1f} "
          "ms/s (10 ms ticks)")
    print(f"    CPU per bar while idle between bars: {per_s * bar_s * ms:.1f} ms at this "
          f"{bar_s:g} s spacing; {per_s * 300 * ms:.0f} ms at a real 5m bar (300 s at the "
          "rate above; the issue sets no target)")
    print(f"    all-in CPU per bar over {n} bars (the step's work + idle): daemon process "
          f"{all_in * ms:.1f} ms, store writer process {all_in_w * ms:.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=300,
                    help="live 5m bars the simulator serves in the latency run (default 300)")
    ap.add_argument("--speed", type=float, default=2000.0,
                    help="simulator speed of the latency run (default 2000: a bar every "
                         "150 ms)")
    ap.add_argument("--idle-bars", type=int, default=12,
                    help="live bars of the idle run at speed 120 (default 12: 30 s)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work dir here")
    args = ap.parse_args()
    work = work_dir(args.keep)
    t0 = time.perf_counter()
    _, models = prepare(work)
    print(f"imported and trained in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    t = time.perf_counter()
    lat = phase(work, "latency", models, args.speed, args.bars, updates=3)
    print(f"latency run in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    idle_speed, idle_updates = 120.0, 9  # 10 frames per symbol per 2.5 s bar: every 250 ms
    bar_s = BAR_MS / 1000 / idle_speed
    t = time.perf_counter()
    idl = phase(work, "idle", models, idle_speed, args.idle_bars, updates=idle_updates,
                idle_window=(0.6, bar_s - 0.3))
    print(f"idle run in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    print()
    print(f"qtraderd live-feed benchmark: {len(PAIRS)} pairs (5m) from {START}, the daemon "
          "(mode paper, feed.source binance, learning and plugins off, checkpoint every live "
          "step) against `qtraderd exchange-sim` (its own process) on loopback; XGBoost + "
          "LightGBM ONNX on every step")
    ok = report_latency(lat, args.speed, args.bars)
    report_idle(idl, idle_speed, idle_updates)
    print(f"  daemon child imports {lat['import_s']:.2f} s; daemon process CPU "
          f"{lat['cpu_s']:.1f} s (latency run), {idl['cpu_s']:.1f} s (idle run); whole "
          f"benchmark {time.perf_counter() - t0:.0f} s")
    print(f"  targets: {'met' if ok else 'NOT met'} (p99 beyond inference <= 2 ms over "
          ">= 200 steps)")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
