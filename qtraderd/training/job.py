"""`python -m qtraderd.training job ...`: one retraining job for the daemon's learner.

    python -m qtraderd.training job --family F --state-dir S --models-dir M --now MS
        [--config FILE] [--champion VERSION] [--evaluate VERSION]
        [--notional-fraction W]

It trains family F on a sliding window that ends at --now (the daemon's clock: data time
in a replay — bars after it are never read), writes the challenger as an immutable
artifact, and scores challenger and champion on the same most recent held-out window
(the last `learning.eval_window_days` before --now, purged from the training data).
`--evaluate` scores an existing artifact (one an operator dropped into the models
directory) instead of training. The daemon decides what to do with the result; this
process never touches the registry.

Result: one JSON object on stdout: {"ok", "family", "version", "path", "meta_path",
"metrics", "dataset", "gate": {"challenger", "champion", "comparison"}, "seconds"}.
Exit 0 on success, 1 when training/export/scoring failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from qtraderd.core.config import INTERVAL_MS, Config, ConfigError, load
from qtraderd.learning import gate
from qtraderd.learning.registry import LINEAGE_FIELDS
from qtraderd.models.artifacts import ArtifactError
from qtraderd.models.onnx_model import LoadedModel, load_model
from qtraderd.store.db import StoreError, connect
from qtraderd.training import dataset as dataset_mod
from qtraderd.training import fit
from qtraderd.training.cli import UsageError, build_candidate, emit, setup_logging

log = logging.getLogger("qtraderd.training")

DAY_MS = 86_400_000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qtraderd.training job",
                                description="Retrain one family and score it against the "
                                            "champion (run by the daemon's learner).")
    p.add_argument("--family", required=True)
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--models-dir", required=True, type=Path)
    p.add_argument("--now", required=True, type=int, help="clock time (epoch ms)")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--champion", default=None, help="version to compare against")
    p.add_argument("--evaluate", default=None, help="score this existing version instead")
    p.add_argument("--notional-fraction", type=float, default=0.075,
                   help="notional per trade / account balance (for the equity multiple)")
    return p


def job_main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    setup_logging()
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        emit({"ok": False, "error": str(exc)})
        return 2
    try:
        conn = connect(args.state_dir, readonly=True)
    except StoreError as exc:
        emit({"ok": False, "error": str(exc)})
        return 2
    try:
        result = run_job(conn, cfg, args)
    except fit.ClusterSkipped as exc:  # learning.fallback = skip: the learner retries later
        emit({"ok": False, "family": args.family, "error": str(exc), "skipped": True})
        return 1
    except (dataset_mod.DatasetError, UsageError) as exc:
        emit({"ok": False, "family": args.family, "error": str(exc)})
        return 2
    except Exception as exc:  # the daemon records the failure and retries
        log.exception("job %s failed", args.family)
        emit({"ok": False, "family": args.family, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    finally:
        conn.close()
    emit(result)
    return 0


def window_bounds(cfg: Config, now: int) -> tuple[int, int]:
    """(first training bar, first evaluation bar) of the sliding window ending at now."""
    lc = cfg.learning
    valid_from = gate.eval_start(lc, now)
    since = valid_from - int(lc.train_window_days * DAY_MS)
    return since, valid_from


def run_job(conn: sqlite3.Connection, cfg: Config, args: argparse.Namespace
            ) -> dict[str, Any]:
    t0 = time.monotonic()
    since, valid_from = window_bounds(cfg, args.now)
    ds = dataset_mod.build(conn, cfg, train_until_ms=args.now, since_ms=since,
                           valid_from_ms=valid_from)
    log.info("job %s at %s: %s train / %s eval samples", args.family, _fmt(args.now),
             f"{ds.n_train:,}", f"{ds.n_valid:,}")
    cache: dict[str, Any] = {}
    horizon_ms = cfg.labels.horizon_bars * INTERVAL_MS[ds.interval]
    if args.evaluate:
        challenger = load_model(args.models_dir, args.family, args.evaluate)
        meta = challenger.meta
        out: dict[str, Any] = {
            "family": args.family, "version": args.evaluate,
            "path": str(args.models_dir / args.family / f"{args.evaluate}.onnx"),
            "meta_path": str(args.models_dir / args.family / f"{args.evaluate}.json"),
            "metrics": meta.metrics, "evaluated_only": True}
    else:
        out, proba = build_candidate(args.family, ds, cfg, conn, args.models_dir,
                                     clock_ms=args.now, cache=cache,
                                     trained=_train_on_cluster(args.family, ds, cfg, t0))
        meta = out.pop("meta")  # the daemon reads the metadata file itself
    # What this job knows produced the artifact: the daemon checks the file against it.
    out["lineage"] = {k: getattr(meta, k) for k in LINEAGE_FIELDS}
    refused = gate.window_conflict(meta.train_end, meta.data_end, horizon_ms, valid_from,
                                   own=not args.evaluate)
    if refused is not None:  # before any scoring: a model that saw the window is not judged
        log.warning("gate refused: %s %s: %s", args.family, out["version"], refused)
        out.update(ok=True, dataset=ds.summary(), gate={"refused": refused},
                   seconds=round(time.monotonic() - t0, 2))
        return out
    if args.evaluate:
        proba = predict(challenger, ds, cfg, cache)
    valid = ds.valid
    prior = np.bincount(ds.train.y, minlength=3) / max(1, ds.n_train)
    w = args.notional_fraction
    seed = cfg.seed
    # Labels overlap for `horizon` bars and the symbols' rows interleave: blocks must span
    # both, or the bootstrap's p-values come out too optimistic.
    block = max(1, min(cfg.labels.horizon_bars * len(ds.symbols), len(valid.y) // 4))

    def scores(p: np.ndarray) -> gate.GateScores:
        return gate.score(p, valid.y, valid.ret_long, valid.ret_short, valid.sym, valid.ts,
                          valid.label_end, prior, cfg, w, seed=seed, block=block)

    ch = scores(proba)
    result_gate: dict[str, Any] = {"challenger": ch.to_dict(), "champion": None,
                                   "comparison": None}
    if args.champion:
        try:
            champion = load_model(args.models_dir, args.family, args.champion)
        except ArtifactError as exc:
            log.warning("champion %s/%s cannot be scored (%s): judged without it",
                        args.family, args.champion, exc)
        else:
            cp = scores(predict(champion, ds, cfg, cache))
            cmp = gate.compare(cp.returns, ch.returns, w, seed=seed, block=block)
            result_gate["champion"] = cp.to_dict()
            result_gate["comparison"] = cmp.to_dict()
            result_gate["champion_in_sample"] = bool(champion.data_end >= ds.valid_start)
            log.info("gate scores %s: challenger %.4f vs champion %.4f (%+.2f %%, p=%.3f); "
                     "challenger %s", args.family, ch.value, cp.value,
                     cmp.improvement_pct, cmp.p_value, ch.line())
    else:
        log.info("gate scores %s: challenger %.4f; %s", args.family, ch.value, ch.line())
    out.update(ok=True, dataset=ds.summary(), gate=result_gate,
               seconds=round(time.monotonic() - t0, 2))
    return out


def _train_on_cluster(family: str, ds: dataset_mod.Dataset, cfg: Config,
                      t0: float) -> fit.Trained | None:
    """With `learning.executor = "ray"`: the family trained as a Ray task (None: train
    here). The task's timeout ends before the learner's `job_timeout_s` kills this
    process, so a job past its time is cancelled on the cluster, not orphaned there."""
    ex = fit.open_cluster(cfg)  # ClusterSkipped: learning.fallback = skip
    if ex is None:
        return None
    timeout = fit.task_timeout(cfg.learning.job_timeout_s, time.monotonic() - t0)
    with ex:
        for _, got in fit.run_families(ex, [family], ds, cfg, timeout_s=timeout):
            if isinstance(got, BaseException):
                raise got
            return got
    return None


def predict(model: LoadedModel, ds: dataset_mod.Dataset, cfg: Config,
            cache: dict[str, Any]) -> np.ndarray:
    """An ONNX model's probabilities on the dataset's validation rows."""
    valid = ds.valid
    if model.input_kind == "window":
        from qtraderd.training.nets_train import cached_window_data

        data = cached_window_data(ds, cfg, cache)
        x = data.X[data.is_valid]
    else:
        x = valid.X
    out = [model.predict(x[i:i + 8192]) for i in range(0, len(x), 8192)]
    return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.float32)


def _fmt(ms: int) -> str:
    from qtraderd.core.clock import iso

    return iso(ms)
