"""Ensemble inference per bar, batch 1, all four models (XGBoost, LightGBM, N-HiTS, PatchTST).

    .venv/bin/python benchmarks/inference.py [--cache DIR] [--rebuild] [--runs N]

Nothing is trained while timing. The models come from a cache directory (default
benchmarks/out/inference-cache, git-ignored): on the first run (or with --rebuild, or when
the cached models were built for another feature version) the ten shared 5m pairs and the
shared 1m series are imported into a store there and the four families are trained by the
learner CLI on the 1m series (Nov 2017), so every 5m bar of January 2018 is out of sample;
model quality is irrelevant, only the work per bar matters. Later runs reuse them.

Measured in a child process: one symbol's bar through the feature update, the candle-window
update, the four ONNX calls (two on a 17-feature row, two on a 64x5 window), the regime and
the weighted ensemble, in a tight loop over real bars (10 pairs x 600 bars after 200 bars
of warm-up each), best of `--runs`; one more pass times each part apart; and
PredictorActor.handle on one-bar steps (adds labels, outcome scoring and the messages).
Wall time and process CPU time are both reported (CPU time reads through other load on a
shared machine). benchmarks/learning.py prints the same measurement as its part 3.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _common import PAIRS, REPO, SHARED, run

FAMILIES = ("xgboost", "lightgbm", "nhits", "patchtst")
INFER_WARMUP, INFER_BARS = 200, 600  # per pair, untimed then timed
TARGET_US = 200.0


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def measure(state: str, models: str, runs: int = 3) -> dict[str, Any]:
    """Batch-1 inference per bar: the pieces in a tight loop, and PredictorActor.handle."""
    import numpy as np
    import trio

    from qtraderd.actors.predictor import PredictorActor
    from qtraderd.core.messages import Bar, Step
    from qtraderd.features.labels import Barriers
    from qtraderd.features.regime import RegimeDetector
    from qtraderd.features.spec import FeatureState
    from qtraderd.features.windows import WindowState, normalize_windows
    from qtraderd.models.ensemble import EnsembleManager
    from qtraderd.models.modelset import ModelSet
    from qtraderd.models.onnx_model import load_champions
    from qtraderd.store.db import connect

    loaded, errors = load_champions(Path(models))
    if errors or len(loaded) != len(FAMILIES):
        return {"error": f"models: {sorted(loaded)} {errors}"}
    members = sorted(loaded.items())
    conn = connect(state, readonly=True)
    series = {p: conn.execute(
        "SELECT open_time, open, high, low, close, volume FROM bars WHERE symbol=? AND "
        "interval='5m' ORDER BY open_time LIMIT ?", (p, INFER_WARMUP + INFER_BARS)).fetchall()
        for p in PAIRS}
    conn.close()

    def one_pass(parts: bool) -> dict[str, Any]:
        ens = EnsembleManager([f for f, _ in members])
        onnx: dict[str, list[float]] = {f: [] for f, _ in members}
        t_feat = t_win = t_ens = 0.0
        wall = cpu = 0.0
        n = 0
        pc = time.perf_counter
        for rows in series.values():
            fs, ws, det = FeatureState(), WindowState(), RegimeDetector()
            for t, o, h, lo, c, v in rows[:INFER_WARMUP]:  # warm-up: untimed
                fs.update(t, o, h, lo, c, v)
                ws.update(o, h, lo, c, v)
            t0, c0 = pc(), time.process_time()
            for t, o, h, lo, c, v in rows[INFER_WARMUP:]:
                a = pc() if parts else 0.0
                row = fs.update(t, o, h, lo, c, v)
                b = pc() if parts else 0.0
                ws.update(o, h, lo, c, v)
                x_row = np.asarray([row], dtype=np.float32)
                x_win = normalize_windows([ws.raw()])
                e = pc() if parts else 0.0
                probs = {}
                for f, m in members:
                    x = x_win if m.input_kind == "window" else x_row
                    if parts:
                        s = pc()
                        probs[f] = m.predict(x)
                        onnx[f].append(pc() - s)
                    else:
                        probs[f] = m.predict(x)
                g = pc() if parts else 0.0
                regime = det.update(row)
                w = ens.weights(regime, probs)
                pl = sum(w[f] * float(p[0, 1]) for f, p in probs.items())
                ps = sum(w[f] * float(p[0, 2]) for f, p in probs.items())
                assert 0.0 <= pl + ps <= 1.0 + 1e-6
                if parts:
                    t_feat += b - a
                    t_win += e - b
                    t_ens += pc() - g
                n += 1
            wall += pc() - t0
            cpu += time.process_time() - c0
        out: dict[str, Any] = {"bars": n, "us_per_bar": 1e6 * wall / n,
                               "cpu_us_per_bar": 1e6 * cpu / n}
        if parts:
            out["parts_us"] = {"features": 1e6 * t_feat / n, "window": 1e6 * t_win / n,
                               "regime_ensemble": 1e6 * t_ens / n}
            out["onnx_us"] = {f: {"mean": 1e6 * sum(v) / len(v), "p50": 1e6 * pct(v, 50)}
                              for f, v in onnx.items()}
        return out

    totals = [one_pass(False) for _ in range(runs)]
    parts = [one_pass(True)]

    # PredictorActor.handle on one-bar steps, bars interleaved in time order.
    bars = sorted(((r[0], p, r) for p, rows in series.items() for r in rows),
                  key=lambda x: (x[0], x[1]))
    handles = []
    for _ in range(2):
        tx, rx = trio.open_memory_channel[Any](1)
        actor = PredictorActor(Barriers(0.016, 0.008, 48), ModelSet(dict(loaded)), rx, tx)
        seen: dict[str, int] = {}
        wall, n, preds = 0.0, 0, 0
        for seq, (ts, sym, (_t, o, h, lo, c, v)) in enumerate(bars, 1):
            step = Step(seq=seq, ts=ts, close_ts=ts + 300_000,
                        bars=(Bar(sym, ts, o, h, lo, c, v),))
            seen[sym] = seen.get(sym, 0) + 1
            if seen[sym] <= INFER_WARMUP:
                actor.handle(step)
                continue
            t0 = time.perf_counter()
            out = actor.handle(step)
            wall += time.perf_counter() - t0
            n += 1
            preds += len(out.predictions)
        handles.append({"bars": n, "predictions": preds, "us_per_bar": 1e6 * wall / n})
    return {"totals": totals, "parts": parts, "handle": handles}


def report(infer: dict[str, Any], target: Any) -> None:
    """Print the measurement; `target(ok, what)` returns the MISSED marker (or '')."""
    best = min(infer["totals"], key=lambda r: r["us_per_bar"])
    parts = min(infer["parts"], key=lambda r: r["us_per_bar"])
    us = best["us_per_bar"]
    cpu = min(r.get("cpu_us_per_bar", math.nan) for r in infer["totals"])
    print(f"3. ensemble inference per bar, batch 1, 4 models ({best['bars']:,} bars of 10 "
          f"pairs): {us:.0f} us/bar (target <= {TARGET_US:.0f})"
          f"{target(us <= TARGET_US, 'inference per bar')}; CPU {cpu:.0f} us/bar; "
          f"runs {', '.join(format(r['us_per_bar'], '.0f') for r in infer['totals'])} us")
    p = parts["parts_us"]
    onnx = parts["onnx_us"]
    print(f"   parts: features {p['features']:.1f} us, window {p['window']:.1f} us, regime + "
          f"weighted ensemble {p['regime_ensemble']:.1f} us, ONNX "
          + ", ".join(f"{f} {v['mean']:.1f}" for f, v in onnx.items()) + " us (mean)")
    h = min(infer["handle"], key=lambda r: r["us_per_bar"])
    print(f"   PredictorActor.handle on one-bar steps (adds labels, scoring, messages): "
          f"{h['us_per_bar']:.0f} us/bar")


def _features_version() -> int:
    from qtraderd.features.spec import FEATURES_VERSION
    return int(FEATURES_VERSION)


def build_cache(cache: Path, rebuild: bool) -> tuple[Path, Path]:
    """The store and the four models, built once (import + train) and reused after."""
    state, models, stamp = cache / "state", cache / "models", cache / "built.json"
    want = {"features_version": _features_version(), "families": list(FAMILIES)}
    if not rebuild and stamp.exists() and json.loads(stamp.read_text()) == want:
        return state, models
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    py = sys.executable
    t = time.perf_counter()
    run([py, "-m", "qtraderd", "import", *(str(SHARED / f"{p}-5m.csv") for p in PAIRS),
         str(SHARED / "UNITTESTBTC-1m.csv"), "--state-dir", str(state)])
    cfg = cache / "train.toml"
    cfg.write_text('[feed]\ninterval = "1m"\n[train]\ntrain_fraction = 0.95\n')
    run([py, "-m", "qtraderd.training", "train", "--families", ",".join(FAMILIES),
         "--state-dir", str(state), "--models-dir", str(models), "--config", str(cfg),
         "--symbols", "UNITTESTBTC"])
    stamp.write_text(json.dumps(want))
    print(f"built the model cache in {time.perf_counter() - t:.1f} s: {cache}", file=sys.stderr)
    return state, models


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        state, models, runs = sys.argv[2:5]
        sys.stdout.write(json.dumps(measure(state, models, int(runs))) + "\n")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=REPO / "benchmarks" / "out" /
                    "inference-cache", help="where the store and models are kept")
    ap.add_argument("--rebuild", action="store_true", help="import and train again")
    ap.add_argument("--runs", type=int, default=3, help="timed passes (best is reported)")
    args = ap.parse_args()
    state, models = build_cache(args.cache.resolve(), args.rebuild)
    out = run([sys.executable, __file__, "--child", str(state), str(models), str(args.runs)])
    infer = json.loads(out.stdout.strip().splitlines()[-1])
    if "error" in infer:
        raise SystemExit(infer["error"])
    misses: list[str] = []

    def target(ok: bool, what: str) -> str:
        if not ok:
            misses.append(what)
        return "" if ok else "  MISSED"

    report(infer, target)
    print(f"  targets: {'all met' if not misses else 'missed: ' + ', '.join(misses)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
