"""Learning-loop benchmark: retraining beside a replaying daemon, hot swaps, and ensemble
inference per bar, all measured in one run.

    .venv/bin/python benchmarks/learning.py [--keep DIR] [--families F,...] [--no-nice]
                                            [--omp-wait-policy POLICY]

Setup: a fresh store with the ten shared 5m alt/BTC pairs (57.5k bars) and the shared 1m
series; four models (XGBoost, LightGBM, N-HiTS, PatchTST) trained by the learner CLI on the
1m series (Nov 2017), so every 5m bar of January 2018 is out of sample and all four models
predict on every bar. Model quality is irrelevant here; only the work matters.

1. Retraining at the seed's scale while the daemon replays. The ten pairs are imported
   again under renamed symbols (ADA1BTC, DASH1BTC, ... ADA7BTC: the same candles, quote
   BTC) and the fewest symbols are picked whose training dataset holds >= 316,767
   training samples (the seed's count). A child process replays the ten original pairs at
   full speed with the four models served and learning disabled, replay after replay
   (one replay lasts seconds, training minutes), while a probe task in its Trio loop
   sleeps 5 ms over and over and records how late it wakes. After three replays on an
   otherwise idle daemon, `python -m qtraderd.training train` trains the four families on
   the stacked symbols in a subprocess started as the learner actor starts its jobs (nice
   10, OMP_WAIT_POLICY=PASSIVE; the default `learning.nets_epochs`). Replays that ran
   entirely inside the training are compared with the three before it: bars/s, and the
   loop lag p50/p99/max over the replays' first-to-last-bar spans.
2. Hot swaps under full-speed replay, four models served. Four replays in one child:
   no swap; a new version of each family deployed the way the learner does it
   (write_artifact, then write_champion; the predictor's models-dir watcher picks the
   pointer up) at steps 1200, 2400, 3600 and 4800, the artifact written 300 steps before
   the pointer; the same four versions sent as `set_models` on the predictor's command
   channel (watcher off in that replay, so the command path is measured alone); no swap
   again. A new version is its champion's ONNX bytes under a new version name: loading it
   is the same work (file read, sha256, session, parity probes) as a retrained model of
   that family. Measured: pointer rename (or command send) to the first ModelOutput with
   the new version; bars the feed sent vs bars in the runs table and equity rows; per-step
   latency (feed send -> execution done; a step carries one bar of each of the ten pairs)
   p99 over the 900 steps around each swap vs the same steps without a swap. The stamps
   come from subclasses of the feed, predictor and execution actors made here; the actors
   themselves are unchanged.
3. Ensemble inference per bar, batch 1: one symbol's bar through the feature update, the
   window update, the four ONNX calls (two on a 17-feature row, two on a 64x5 window), the
   regime and the weighted ensemble, in a tight loop over real bars (10 pairs x 600 bars
   after warm-up), each ONNX call also timed apart; and PredictorActor.handle on one-bar
   steps (adds labels, outcome scoring and the messages).

Every figure comes from this run; the machine's other load (if any) shows in them. Timing
best-of-n where a figure is read against a target, as in benchmarks/replay.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import inference
from _common import PAIRS, REPO, SHARED, run

TARGET_SAMPLES = 316_767  # training samples of the seed's full retrain
COPIES = 7  # renamed copies of each pair imported on top of the originals
FAMILIES = ("xgboost", "lightgbm", "nhits", "patchtst")
BASELINE_RUNS = 3  # replays before the training starts
PROBE_S = 0.005
SWAP_AT = (1200, 2400, 3600, 4800)  # steps at which a family's pointer / command goes out
ARTIFACT_LEAD = 300  # the artifact is written this many steps before the pointer
SWAP_AFTER = 600  # steps after the trigger in the latency window


def machine_busy(seconds: float = 1.0) -> float:
    """Share (%) of all cores busy over `seconds`, from /proc/stat (NaN elsewhere)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v) - idle, sum(v)

    try:
        b0, t0 = sample()
        time.sleep(seconds)
        b1, t1 = sample()
    except OSError:
        return math.nan
    return 100.0 * (b1 - b0) / max(1, t1 - t0)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def copy_symbol(pair: str, k: int) -> str:
    return f"{pair[:-3]}{k}BTC"


def stacked_symbols() -> list[str]:
    """Originals first, then the first copy of every pair, and so on."""
    return PAIRS + [copy_symbol(p, k) for k in range(1, COPIES + 1) for p in PAIRS]


# ----------------------------------------------------------------------------- children
# Each runs as `python benchmarks/learning.py --child NAME ...` and prints one JSON object.


def child_count(state: str, config: str, target: str) -> dict[str, Any]:
    """The fewest stacked symbols (in stacked_symbols() order) with >= target train rows."""
    from qtraderd.core.config import load
    from qtraderd.store.db import connect
    from qtraderd.training.dataset import build

    conn = connect(state, readonly=True)
    cfg = load(config, env={})
    order = stacked_symbols()
    need = int(target)
    sizes: dict[int, tuple[int, int]] = {}

    def size(k: int) -> tuple[int, int]:
        if k not in sizes:
            ds = build(conn, cfg, symbols=order[:k])
            sizes[k] = (ds.n_train, ds.n_valid)
        return sizes[k]

    n_all = size(len(order))[0]
    if n_all < need:
        return {"error": f"{len(order)} symbols give {n_all} training samples < {need}"}
    k = min(len(order), max(1, math.ceil(need / (n_all / len(order)))))
    while size(k)[0] < need:
        k += 1
    while k > 1 and size(k - 1)[0] >= need:
        k -= 1
    return {"symbols": order[:k], "n_train": size(k)[0], "n_valid": size(k)[1]}


def _daemon_config(symbols: list[str]) -> Any:
    from qtraderd.core.config import load, with_changes

    return with_changes(load(env={}), learning={"enabled": False}, plugins={"enabled": False},
                        feed={"symbols": tuple(symbols)})


def fresh_store(template: str, dest: Path) -> Path:
    """A copy of the template store for one replay (each replay writes ~75 MB of rows;
    back to back they would pile up gigabytes)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(template, dest)
    return dest


def child_loop(state: str, models: str, work: str, sock: str, stop_file: str,
               out_file: str) -> dict[str, Any]:
    """Replays back to back until stop_file exists, with a loop-lag probe in each."""
    import trio

    from qtraderd.models.onnx_model import load_champions
    from qtraderd.runtime.daemon import Daemon

    cfg = _daemon_config(PAIRS)
    loaded, errors = load_champions(Path(models))
    if errors or len(loaded) != len(FAMILIES):
        return {"error": f"models: {sorted(loaded)} {errors}"}
    runs: list[dict[str, Any]] = []
    lags: list[list[tuple[float, float]]] = []
    while True:
        store = fresh_store(state, Path(work) / "replay-state")
        d = Daemon(cfg, store, Path(models), socket_path=Path(sock), progress_every_s=0,
                   models=dict(loaded))
        samples: list[tuple[float, float]] = []

        async def probe(out: list[tuple[float, float]]) -> None:
            while True:
                t = time.perf_counter()
                await trio.sleep(PROBE_S)
                now = time.perf_counter()
                out.append((now, now - t - PROBE_S))

        async def main(d: Any = d, samples: list[tuple[float, float]] = samples) -> int:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(probe, samples)
                code = await d.run()
                nursery.cancel_scope.cancel()
            return code

        t0 = time.perf_counter()
        code = trio.run(main)
        rec = {"code": code, "start": t0, "end": time.perf_counter(), "bars": d.feed.bars,
               "first": d.feed.first_sent, "last": d.execution.last_done,
               "predictions": d.predictor.predictions}
        shutil.rmtree(store, ignore_errors=True)
        runs.append(rec)
        lags.append(samples)
        print(json.dumps(rec), flush=True)  # progress for the parent
        if os.path.exists(stop_file):
            break
    Path(out_file).write_text(json.dumps({"runs": runs, "lags": lags}))
    return {"runs": len(runs)}


class StepProbe:
    """Per-step stamps and swap events, filled in by the instrumented actors."""

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.done: dict[int, float] = {}
        self.actions: dict[int, Any] = {}  # step seq -> callable(predictor), run in handle
        self.waiting: set[tuple[str, str]] = set()
        self.first_seen: dict[tuple[str, str], tuple[float, int]] = {}
        self.applied: list[tuple[float, int]] = []  # a staged set swapped in: (t, seq)
        self.staged: list[float] = []  # set_models answered (model loaded and staged)
        self.watch = True
        self.daemon: Any = None

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def _instrument() -> StepProbe:
    """Make the daemon build stamping subclasses of the feed, execution and predictor."""
    import qtraderd.runtime.daemon as daemon_mod
    from qtraderd.actors.execution import ExecutionActor
    from qtraderd.actors.feed import FeedActor
    from qtraderd.actors.predictor import PredictorActor

    probe = StepProbe()

    class StampedOutbox:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def send(self, step: Any) -> None:
            await self.inner.send(step)
            probe.sent[step.seq] = time.perf_counter()

        async def aclose(self) -> None:
            await self.inner.aclose()

    class Feed(FeedActor):
        def __init__(self, source: Any, outbox: Any, *args: Any, **kw: Any) -> None:
            super().__init__(source, StampedOutbox(outbox), *args, **kw)

    class Execution(ExecutionActor):
        async def _phase_b(self) -> None:
            before = self.last_done
            await super()._phase_b()
            if self.last_done != before and self._finished:
                probe.done[self._finished[-1].seq] = self.last_done

    class Predictor(PredictorActor):
        def handle(self, step: Any) -> Any:
            if self._staged is not None:
                probe.applied.append((time.perf_counter(), step.seq))
            action = probe.actions.pop(step.seq, None)
            if action is not None:
                action(self)
            out = super().handle(step)
            if probe.waiting:
                for o in out.model_outputs:
                    key = (o.model, o.version)
                    if key in probe.waiting:
                        probe.waiting.discard(key)
                        probe.first_seen[key] = (time.perf_counter(), step.seq)
            return out

        def stage(self, models: Any) -> None:
            probe.staged.append(time.perf_counter())
            super().stage(models)

        async def _watch(self) -> None:
            if probe.watch:
                await super()._watch()

    daemon_mod.FeedActor = Feed  # type: ignore[misc]
    daemon_mod.ExecutionActor = Execution  # type: ignore[misc]
    daemon_mod.PredictorActor = Predictor  # type: ignore[misc]
    return probe


def child_swap(state: str, models: str, work: str, sock: str) -> dict[str, Any]:
    """Four replays: none, pointer swaps, set_models swaps, none."""
    import dataclasses
    import queue
    import sqlite3

    import trio

    import qtraderd.models.artifacts as artifacts
    from qtraderd.core.messages import Command
    from qtraderd.models.artifacts import read_artifact, read_champion, write_artifact
    from qtraderd.models.onnx_model import load_champions
    from qtraderd.runtime.daemon import Daemon

    probe = _instrument()
    renamed: dict[str, float] = {}

    class OsShim:  # stamps the champion pointer's rename, the moment a deploy happens
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def replace(src: Any, dst: Any) -> None:
            os.replace(src, dst)
            if Path(dst).name == "champion":
                renamed[Path(dst).parent.name] = time.perf_counter()

    artifacts.os = OsShim()  # type: ignore[assignment]
    cfg = _daemon_config(PAIRS)
    src = Path(models)
    loaded, errors = load_champions(src)
    if errors or len(loaded) != len(FAMILIES):
        return {"error": f"models: {sorted(loaded)} {errors}"}
    new: dict[str, tuple[Any, bytes]] = {}
    for fam in FAMILIES:
        version = read_champion(src, fam)
        assert version is not None
        meta, data = read_artifact(src, fam, version)
        new[fam] = (dataclasses.replace(meta, version=f"{version}-v2"), data)
    schedule = dict(zip(SWAP_AT, FAMILIES, strict=True))
    results: dict[str, Any] = {}
    for name in ("baseline", "pointer", "set_models", "baseline2"):
        probe.reset()
        mdir = Path(work) / f"models-{name}"
        shutil.copytree(src, mdir)
        writes: queue.Queue[tuple[str, str] | None] = queue.Queue()
        log: dict[str, dict[str, float]] = {f: {} for f in FAMILIES}
        replies: list[Any] = []  # reply channels of the commands, kept open

        def writer(mdir: Path = mdir, writes: Any = writes, log: Any = log,
                   pointer: bool = name == "pointer") -> None:
            while (item := writes.get()) is not None:
                what, fam = item
                meta, data = new[fam]
                t0 = time.perf_counter()
                if what == "artifact":
                    write_artifact(mdir, meta, data)
                    log[fam]["artifact_s"] = time.perf_counter() - t0
                elif pointer:
                    artifacts.write_champion(mdir, fam, meta.version)
                    log[fam]["write_champion_s"] = time.perf_counter() - t0

        def trigger(what: str, fam: str, log: Any = log, writes: Any = writes) -> Any:
            def action(_predictor: Any) -> None:
                log[fam][f"{what}_trigger"] = time.perf_counter()
                writes.put((what, fam))
            return action

        def command(fam: str, log: Any = log, replies: Any = replies) -> Any:
            def action(predictor: Any) -> None:
                serving = {f: m.version for f, m in predictor.models.serving.items()}
                serving[fam] = new[fam][0].version
                reply_tx, reply_rx = trio.open_memory_channel[Any](1)
                replies.append(reply_rx)
                log[fam]["sent"] = time.perf_counter()
                probe.daemon.channels["predictor_commands"].send_nowait(
                    Command("set_models", {"serving": serving, "shadow": []}, reply_tx))
            return action

        if name in ("pointer", "set_models"):
            for at, fam in schedule.items():
                probe.actions[at - ARTIFACT_LEAD] = trigger("artifact", fam)
                probe.actions[at] = (trigger("pointer", fam) if name == "pointer"
                                     else command(fam))
                probe.waiting.add((fam, new[fam][0].version))
        probe.watch = name != "set_models"
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        renamed.clear()
        store = fresh_store(state, Path(work) / "replay-state")
        d = Daemon(cfg, store, mdir, socket_path=Path(sock), progress_every_s=0,
                   models=dict(loaded))
        probe.daemon = d
        code = trio.run(d.run)
        writes.put(None)
        thread.join()
        conn = sqlite3.connect(store / "qtraderd.db")
        rec_bars = conn.execute("SELECT bars FROM runs WHERE id=?", (d.run_id,)).fetchone()[0]
        equity = conn.execute("SELECT count(DISTINCT seq) FROM equity WHERE run_id=?",
                              (d.run_id,)).fetchone()[0]
        conn.close()
        shutil.rmtree(store, ignore_errors=True)
        swaps = {}
        for fam in FAMILIES:
            key = (fam, new[fam][0].version)
            entry = dict(log[fam])
            if fam in renamed:
                entry["renamed"] = renamed[fam]
            if key in probe.first_seen:
                entry["first_seen"], entry["first_seq"] = probe.first_seen[key]
            swaps[fam] = entry
        results[name] = {
            "code": code, "bars": d.feed.bars, "steps": d.feed.seq, "recorded_bars": rec_bars,
            "equity_steps": equity, "predictions": d.predictor.predictions,
            "replay_s": d.execution.last_done - d.feed.first_sent,
            "latency": {s: probe.done[s] - probe.sent[s] for s in probe.sent
                        if s in probe.done},
            "swaps": swaps, "applied": probe.applied, "staged": probe.staged,
            "swap_count": d.predictor.swaps,
        }
    return results


def child_infer(state: str, models: str) -> dict[str, Any]:
    """Batch-1 inference per bar (benchmarks/inference.py measures it)."""
    return inference.measure(state, models)


CHILDREN = {"count": child_count, "loop": child_loop, "swap": child_swap, "infer": child_infer}


def child_main(argv: list[str]) -> int:
    name, *args = argv
    sys.stdout.write(json.dumps(CHILDREN[name](*args)) + "\n")
    return 0


# ------------------------------------------------------------------------------- parent


def child(name: str, *args: object) -> dict[str, Any]:
    out = run([sys.executable, __file__, "--child", name, *map(str, args)])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if isinstance(result, dict) and "error" in result:
        raise SystemExit(f"{name}: {result['error']}")
    return result


def train_cmd(state: Path, models: Path, config: Path, families: str, symbols: str
              ) -> list[str]:
    return [sys.executable, "-m", "qtraderd.training", "train", "--families", families,
            "--state-dir", str(state), "--models-dir", str(models), "--config", str(config),
            "--symbols", symbols]


def measure_training(args: argparse.Namespace, work: Path, state: Path, models: Path,
                     sock: Path, train_state: Path, symbols: list[str]) -> dict[str, Any]:
    """Measurement 1: the replay loop child, three quiet replays, then the training job."""
    stop, out_file = work / "stop", work / "loop.json"
    stop.unlink(missing_ok=True)
    cfg = work / "big.toml"
    cfg.write_text("[train]\ntrain_fraction = 0.95\n")
    with open(work / "loop.log", "w") as log:  # the daemon's warnings (symbol paused, ...)
        loop = subprocess.Popen([sys.executable, __file__, "--child", "loop", str(state),
                                 str(models), str(work), str(sock), str(stop), str(out_file)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    assert loop.stdout is not None
    for _ in range(BASELINE_RUNS):
        line = loop.stdout.readline()
        if not line:
            raise SystemExit("the replay loop child ended early")
    env = dict(os.environ)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    else:
        env.pop("OMP_WAIT_POLICY", None)
    stderr_lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        train_cmd(train_state, work / "big-models", cfg, args.families, ",".join(symbols)),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=None if args.no_nice else (lambda: os.nice(10)))
    assert proc.stdout is not None and proc.stderr is not None

    def read_stderr(stream: Any = proc.stderr) -> None:
        for line in stream:
            stderr_lines.append((time.perf_counter() - t0, line.rstrip()))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    t1 = time.perf_counter()
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.touch()
    loop.stdout.read()
    loop.wait()
    if proc.returncode != 0:
        tail = "\n".join(line for _, line in stderr_lines[-15:])
        raise SystemExit(f"training failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(stdout.strip().splitlines()[-1])
    data = json.loads(out_file.read_text())
    return {"t0": t0, "t1": t1, "result": result, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_mb": usage.ru_maxrss / 1024, "stderr": stderr_lines, **data}


def loop_figures(runs: list[dict[str, Any]], lags: list[list[list[float]]],
                 window: tuple[float, float] | None) -> dict[str, Any]:
    """bars/s and lag over the replays inside `window` (None: the baseline replays)."""
    if window is None:
        chosen = list(range(min(BASELINE_RUNS, len(runs))))
    else:
        chosen = [i for i, r in enumerate(runs) if r["start"] >= window[0]
                  and r["end"] <= window[1]]
    bars = sum(runs[i]["bars"] for i in chosen)
    secs = sum(runs[i]["last"] - runs[i]["first"] for i in chosen)
    lag = [v for i in chosen for t, v in lags[i] if runs[i]["first"] <= t <= runs[i]["last"]]
    rates = [runs[i]["bars"] / (runs[i]["last"] - runs[i]["first"]) for i in chosen]
    return {"runs": len(chosen), "bars": bars, "rate": bars / secs if secs else math.nan,
            "rates": rates, "lag": lag}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="keep the work dir here")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="families the big training job trains (default: all four)")
    ap.add_argument("--no-nice", action="store_true",
                    help="start the training job un-niced (the learner nices its jobs)")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY of the training job ('' leaves it unset; the "
                         "learner sets PASSIVE)")
    args = ap.parse_args()
    t_all = time.perf_counter()
    busy = machine_busy()
    work = args.keep or Path(tempfile.mkdtemp(prefix="qtlearn"))
    work.mkdir(parents=True, exist_ok=True)
    sock_dir = Path(tempfile.mkdtemp(prefix="qtl", dir="/tmp"))
    sock = sock_dir / "s.sock"
    state, models = work / "state", work / "models"
    py = sys.executable
    try:
        return report(args, work, state, models, sock, py, t_all, busy)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)


def report(args: argparse.Namespace, work: Path, state: Path, models: Path, sock: Path,
           py: str, t_all: float, busy_before: float) -> int:
    print(f"work dir {work}", file=sys.stderr)
    t = time.perf_counter()
    run([py, "-m", "qtraderd", "import", *(str(SHARED / f"{p}-5m.csv") for p in PAIRS),
         str(SHARED / "UNITTESTBTC-1m.csv"), "--state-dir", str(state)])
    train_state = work / "train-state"  # the daemon's bars plus the renamed copies
    shutil.copytree(state, train_state)
    links = work / "stacked"
    links.mkdir()
    for k in range(1, COPIES + 1):
        for p in PAIRS:
            (links / f"{copy_symbol(p, k)}-5m.csv").symlink_to(SHARED / f"{p}-5m.csv")
    run([py, "-m", "qtraderd", "import", *map(str, sorted(links.iterdir())),
         "--state-dir", str(train_state)])
    # the copies are made-up symbols: define them explicitly (same base and quote + k)
    from qtraderd.core import instruments
    instruments.write_file(train_state / instruments.FILE_NAME, [
        instruments.Instrument(copy_symbol(p, k), f"{instruments.instrument(p).base}{k}",
                               instruments.instrument(p).quote)
        for k in range(1, COPIES + 1) for p in PAIRS])
    big_cfg = work / "big.toml"
    big_cfg.write_text("[train]\ntrain_fraction = 0.95\n")
    picked = child("count", train_state, big_cfg, TARGET_SAMPLES)
    print(f"imported in {time.perf_counter() - t:.1f} s; {len(picked['symbols'])} symbols "
          f"give {picked['n_train']:,} training samples", file=sys.stderr)

    small_cfg = work / "small.toml"
    small_cfg.write_text('[feed]\ninterval = "1m"\n[train]\ntrain_fraction = 0.95\n')
    t = time.perf_counter()
    run(train_cmd(state, models, small_cfg, ",".join(FAMILIES), "UNITTESTBTC"))
    small_s = time.perf_counter() - t
    print(f"trained the four serving models in {small_s:.1f} s (on the 1m series: every 5m "
          "bar is out of sample)", file=sys.stderr)

    t = time.perf_counter()
    infer = child("infer", state, models)
    print(f"inference measured in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    t = time.perf_counter()
    swap = child("swap", state, models, work, sock)
    print(f"hot swaps measured in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    t = time.perf_counter()
    train = measure_training(args, work, state, models, sock, train_state, picked["symbols"])
    print(f"training beside the replay measured in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)
    raw = {"infer": infer, "swap": swap, "train": train, "small_s": small_s,
           "busy_before": busy_before, "nets_epochs": _nets_epochs(),
           "families": args.families, "no_nice": args.no_nice,
           "omp_wait_policy": args.omp_wait_policy}
    (work / "results.json").write_text(json.dumps(raw))
    return render(raw, t_all)


def render(raw: dict[str, Any], t_all: float) -> int:
    infer, swap, train = raw["infer"], raw["swap"], raw["train"]
    busy_before, small_s, families = raw["busy_before"], raw["small_s"], raw["families"]
    misses: list[str] = []

    def target(ok: bool, what: str) -> str:
        if not ok:
            misses.append(what)
        return "" if ok else "  MISSED"

    nets_epochs = raw["nets_epochs"]
    res = train["result"]
    ds = res["dataset"]
    wall = train["t1"] - train["t0"]
    print()
    print(f"qtraderd learning-loop benchmark: {len(PAIRS)} pairs replayed, 4 models served "
          f"({os.cpu_count()} cores; before it started the machine was {busy_before:.0f} % "
          f"busy with other work)")
    print(f"1. retraining {families} on {ds['n_train']:,} training + {ds['n_valid']:,} "
          f"validation samples ({len(ds['symbols'])} symbols: the 10 pairs stacked under "
          f"renamed copies; target >= {TARGET_SAMPLES:,}), nets_epochs {nets_epochs} "
          f"(default), job {'un-niced' if raw['no_nice'] else 'nice 10'}, OMP_WAIT_POLICY="
          f"{raw['omp_wait_policy'] or 'unset'}")
    per = {m["family"]: m for m in res["models"]}
    for fam in families.split(","):
        m = per[fam]
        print(f"   {fam:9s} {m['train_seconds'] + m['export_seconds']:6.1f} s "
              f"(train {m['train_seconds']:.1f} + export/parity {m['export_seconds']:.1f})")
    fam_sum = sum(m["train_seconds"] + m["export_seconds"] for m in res["models"])
    print(f"   total     {wall:6.1f} s wall (target <= 120){target(wall <= 120, 'training')}; "
          f"{fam_sum:.1f} s in the families, {wall - fam_sum:.1f} s start-up, dataset, "
          f"windows, metrics and registry; {train['cpu_s']:.0f} s CPU (user+sys: "
          f"{train['cpu_s'] / wall:.2f} cores on average), peak RSS {train['peak_mb']:.0f} MB")
    quiet = loop_figures(train["runs"], train["lags"], None)
    busy = loop_figures(train["runs"], train["lags"], (train["t0"], train["t1"]))
    ms = [1e3 * v for v in busy["lag"]]
    qms = [1e3 * v for v in quiet["lag"]]
    print(f"   daemon replay (back to back, full speed): {quiet['rate']:,.0f} bars/s without "
          f"training ({quiet['runs']} replays: "
          f"{', '.join(f'{r:,.0f}' for r in quiet['rates'])}), {busy['rate']:,.0f} bars/s "
          f"during it ({busy['runs']} replays entirely inside the training): "
          f"{busy['rate'] / quiet['rate']:.2f}x")
    p99 = pct(ms, 99)
    print(f"   event-loop lag during training (5 ms sleeps, {len(ms):,} samples): p50 "
          f"{pct(ms, 50):.2f} ms, p99 {p99:.2f} ms (target <= 50)"
          f"{target(p99 <= 50, 'loop lag p99')}, max {max(ms, default=math.nan):.1f} ms")
    print(f"   event-loop lag without training ({len(qms):,} samples): p50 {pct(qms, 50):.2f} "
          f"ms, p99 {pct(qms, 99):.2f} ms, max {max(qms, default=math.nan):.1f} ms")
    swap_report(swap, target)
    inference.report(infer, target)
    print(f"   (serving models trained in {small_s:.1f} s; whole benchmark "
          f"{time.perf_counter() - t_all:.0f} s; load average at the end "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})")
    print(f"  targets: {'all met' if not misses else 'NOT all met (' + ', '.join(misses) + ')'}")
    return 0


def swap_report(swap: dict[str, Any], target: Any) -> None:
    def latency(run: dict[str, Any]) -> dict[int, float]:  # JSON made the keys strings
        return {int(k): v for k, v in run["latency"].items()}

    base = [latency(swap["baseline"]), latency(swap["baseline2"])]
    print(f"2. hot swap under full-speed replay ({swap['baseline']['steps']:,} steps of 10 "
          f"bars; new versions at steps {', '.join(map(str, SWAP_AT))})")
    for name, label, start in (("pointer", "write_artifact + write_champion -> watcher",
                                "renamed"),
                               ("set_models", "set_models command", "sent")):
        r = swap[name]
        delays = []
        for fam in FAMILIES:
            s = r["swaps"][fam]
            if "first_seen" in s and start in s:
                delays.append((fam, 1e3 * (s["first_seen"] - s[start])))
        worst = max((d for _, d in delays), default=math.nan)
        ok = len(delays) == len(FAMILIES) and worst <= 100
        print(f"   {label}: first prediction with the new version "
              + ", ".join(f"{f} {d:.0f} ms" for f, d in delays)
              + f" (target <= 100){target(ok, f'swap delay ({name})')}")
        if name == "pointer":
            w = [1e3 * r["swaps"][f].get("write_champion_s", math.nan) for f in FAMILIES]
            a = [1e3 * r["swaps"][f].get("artifact_s", math.nan) for f in FAMILIES]
            print(f"     (write_artifact {min(a):.1f}-{max(a):.1f} ms, write_champion "
                  f"{min(w):.1f}-{max(w):.1f} ms, both in a thread of the daemon process)")
        else:
            staged = [1e3 * (t - r["swaps"][f]["sent"])
                      for f, t in zip(FAMILIES, r["staged"], strict=False)
                      if "sent" in r["swaps"][f]]
            print("     (command sent -> model loaded and staged: "
                  + ", ".join(f"{f} {d:.0f} ms" for f, d in zip(FAMILIES, staged, strict=False))
                  + ")")
        dropped = r["bars"] - r["recorded_bars"]
        eq_missing = r["steps"] - r["equity_steps"]
        print(f"     bars: feed sent {r['bars']:,}, runs table {r['recorded_bars']:,}, steps "
              f"with equity rows {r['equity_steps']:,} of {r['steps']:,}: {dropped} dropped "
              f"(target 0){target(dropped == 0 and eq_missing == 0, f'bars dropped ({name})')}"
              f"; {r['swap_count']} swaps applied")
        steps = sorted({s for at in SWAP_AT
                        for s in range(at - ARTIFACT_LEAD, at + SWAP_AFTER)})
        lat = latency(r)
        with_swap = [1e3 * lat[s] for s in steps if s in lat]
        without = [1e3 * b[s] for b in base for s in steps if s in b]
        p_with, p_without = pct(with_swap, 99), pct(without, 99)
        ratio = p_with / p_without
        print(f"     per-step latency p99 over the {len(with_swap):,} steps around the swaps: "
              f"{p_with:.2f} ms vs {p_without:.2f} ms without a swap (same steps, 2 replays) "
              f"= {ratio:.2f}x (target <= 2){target(ratio <= 2, f'latency p99 ({name})')}; "
              f"p50 {pct(with_swap, 50):.2f} vs {pct(without, 50):.2f} ms, max "
              f"{max(with_swap):.1f} vs {max(without):.1f} ms")
    rates = {n: swap[n]["bars"] / swap[n]["replay_s"] for n in swap}
    print("   replays: " + ", ".join(f"{n} {v:,.0f} bars/s" for n, v in rates.items()))


def _nets_epochs() -> int:
    out = run([sys.executable, "-c", "from qtraderd.core.config import load; "
               "print(load(env={}).learning.nets_epochs)"])
    return int(out.stdout.strip())


if __name__ == "__main__":
    raise SystemExit(main())
