"""Scale: what Ray adds on one box, and what each task ships (for estimates on N nodes).

    .venv/bin/python benchmarks/scale.py [--pairs 10] [--keep DIR]

1. The shared 5m pairs imported into a fresh store.
2. A training job (`python -m qtraderd.training train`, the two tree families, the whole
   store) with `learning.executor = "local"`, then `"ray"` against a real local head
   (`ray start --head`, 2 CPUs, started here): wall time of each, the dataset shipped
   once to the object store (its size and the time it took), where the models came from.
3. A sweep (`qtraderd sweep`: 2 folds x the pairs x 2 settings), local then on the same
   head, the fold models trained before either (the same for both): wall time, cells,
   seconds per cell, the bytes the folds ship.
Both executors must give the same models (sha256 of the ONNX files) and the same cells;
the script says so. Figures go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PAIRS, REPO, SHARED, run

sys.path.insert(0, str(REPO))
from tests.ray_head import start_head, stop_head


def timed(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {done.returncode}):\n"
                         f"{log.read_text()[-3000:]}")
    return time.perf_counter() - t


def onnx_hashes(models: Path) -> dict[str, str]:
    return {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(models.glob("*/*.onnx"))}


def cells(out: Path) -> list[tuple]:
    conn = sqlite3.connect(out / "sweep.db")
    try:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(cells)")]
        keep = [c for c in cols if c not in ("wall_s", "host", "at", "finished_at")]
        return conn.execute(f"SELECT {', '.join(keep)} FROM cells ORDER BY 1, 2, 3").fetchall()
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=len(PAIRS))
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="qtscale"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}", file=sys.stderr)
    py = sys.executable
    pairs = PAIRS[: args.pairs]
    state = work / "state"
    if not (state / "qtraderd.db").exists():
        run([py, "-m", "qtraderd", "import", *(str(SHARED / f"{p}-5m.csv") for p in pairs),
             "--state-dir", str(state)])
    head, address = start_head(work)
    try:
        figures: dict[str, dict] = {}
        for kind in ("local", "ray"):
            cfg = work / f"train-{kind}.toml"
            cfg.write_text('[learning]\nfamilies = ["xgboost", "lightgbm"]\n'
                           f'executor = "{kind}"\nray_address = "{address}"\n')
            models = work / f"models-{kind}"
            shutil.rmtree(models, ignore_errors=True)
            log = work / f"train-{kind}.log"
            wall = timed([py, "-m", "qtraderd.training", "train", "--state-dir", str(state),
                          "--models-dir", str(models), "--config", str(cfg)], log)
            text = log.read_text()
            ship = re.search(r"dataset shipped to \S+ in ([\d.]+) s \(([\d.]+) MB\)", text)
            figures[kind] = {"wall_s": wall, "models": onnx_hashes(models),
                             "ship": ship.groups() if ship else None}
            print(f"train {kind}: {wall:.1f} s", file=sys.stderr)
        same_models = figures["local"]["models"] == figures["ray"]["models"]

        sweep: dict[str, dict] = {}
        base = ["--state-dir", str(state), "--folds", "2", "--train-days", "6",
                "--symbols", ",".join(pairs), "--set", "sizing.take_profit_pct=1.2,1.6",
                "--seed", "7"]
        # first the fold models (trained once, here, whatever the executor), then the
        # cells alone on each executor from the same trained folds
        prep = work / "sweep-prep"
        shutil.rmtree(prep, ignore_errors=True)
        train_s = timed([py, "-m", "qtraderd", "sweep", "--out", str(prep), *base],
                        work / "sweep-prep.log")
        for kind in ("local", "ray"):
            out = work / f"sweep-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(prep / "work", out / "work")
            extra = ["--executor", kind] + (["--ray-address", address] if kind == "ray" else [])
            log = work / f"sweep-{kind}.log"
            wall = timed([py, "-m", "qtraderd", "sweep", "--out", str(out), *base, *extra,
                          "--json"], log)
            text = log.read_text()
            shipped = re.search(r"shipped once: ([\d.]+) MB", text)
            rows = cells(out)
            per = [float(x) for x in re.findall(r"\(([\d.]+) s on ", text)]
            sweep[kind] = {"wall_s": wall, "cells": rows, "shipped_mb": shipped and
                           float(shipped.group(1)), "cell_s": sum(per) / max(1, len(per))}
            print(f"sweep {kind}: {wall:.1f} s", file=sys.stderr)
        same_cells = sweep["local"]["cells"] == sweep["ray"]["cells"]
    finally:
        stop_head(head)

    n_cells = len(sweep["local"]["cells"])
    lt, rt = figures["local"], figures["ray"]
    print(f"qtraderd scale benchmark: {len(pairs)} pairs (5m), a local Ray head with 2 CPUs")
    print(f"  training job, xgboost + lightgbm on the whole store: local {lt['wall_s']:.1f} s,"
          f" ray {rt['wall_s']:.1f} s (+{rt['wall_s'] - lt['wall_s']:.1f} s on one box); "
          f"dataset shipped once: {rt['ship'][1] if rt['ship'] else '?'} MB in "
          f"{rt['ship'][0] if rt['ship'] else '?'} s; same ONNX bytes: {same_models}")
    ls, rs = sweep["local"], sweep["ray"]
    print(f"  sweep, 2 folds x {len(pairs)} pairs x 2 settings = {n_cells} cells (fold "
          f"models trained first: {train_s:.1f} s with a first run's cells): local "
          f"{ls['wall_s']:.1f} s, ray {rs['wall_s']:.1f} s; a cell {ls['cell_s']:.2f} s "
          f"local, {rs['cell_s']:.2f} s on a Ray worker; shipped once: "
          f"{rs['shipped_mb']} MB; same cells: {same_cells}")
    print("  " + json.dumps({"train": {k: {"wall_s": round(v["wall_s"], 2), "ship": v["ship"]}
                                       for k, v in figures.items()},
                             "sweep": {k: {"wall_s": round(v["wall_s"], 2),
                                           "cell_s": round(v["cell_s"], 3),
                                           "shipped_mb": v["shipped_mb"]}
                                       for k, v in sweep.items()}}))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if same_models and same_cells else 1


if __name__ == "__main__":
    raise SystemExit(main())
