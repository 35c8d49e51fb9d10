"""`python -m qtraderd.training train ...`: one training job, start to finish, in its own process.

The learner is a separate process so the daemon never imports the ML libraries and a
crashing or runaway job cannot take the event loop with it. Its contract with whoever
started it (the daemon's learner actor, `qtraderd train`, or an operator):

* progress: one readable line per step on stderr (logger "qtraderd.training");
* result: exactly one JSON object on stdout, `{"ok": true, "models": [...], "dataset":
  {...}}`, or `{"ok": false, "error": "...", ...}`;
* exit status: 0 success, 1 a family failed to train/export/register (the message names
  the family and the reason; other families still complete), 2 bad input (arguments,
  config, store, no bars).

Every successful model is written as an immutable artifact, registered as a candidate and
promoted to champion (for now every successful train deploys; a deploy gate comes later).
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import qtraderd
from qtraderd.core.config import Config, ConfigError, load
from qtraderd.features.spec import FEATURE_NAMES, FEATURES_VERSION
from qtraderd.learning import registry
from qtraderd.models.artifacts import (
    ModelMeta,
    onnx_path,
    read_artifact,
    sha256_bytes,
    write_artifact,
)
from qtraderd.store.db import StoreError, connect, db_path
from qtraderd.training import dataset as dataset_mod
from qtraderd.training import fit, nets_train, trees
from qtraderd.training import metrics as metrics_mod

log = logging.getLogger("qtraderd.training")

# Out-of-sample AUC above this on 5m bars is far more likely a leak than an edge.
SUSPICIOUS_AUC = 0.65
# Tree families read feature rows; network families (torch, imported only when one of
# them trains) read candle windows.
ALL_FAMILIES = (*trees.FAMILIES, *nets_train.FAMILIES)


class UsageError(ValueError):
    """Bad command-line input (exit 2)."""


class JobSkipped(RuntimeError):
    """The Ray cluster was unreachable and `learning.fallback = "skip"` (exit 1)."""


def parse_time(text: str) -> int:
    """Epoch milliseconds from digits, or from an ISO date/time (UTC when no offset given)."""
    t = text.strip()
    if t.lstrip("-").isdigit():
        return int(t)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"--train-until: expected epoch ms or an ISO date/time, got {text!r}"
                         ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _fmt_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", required=True, type=Path, help="directory of qtraderd.db")
    p.add_argument("--models-dir", required=True, type=Path, help="where artifacts go")
    p.add_argument("--config", type=Path, default=None, help="TOML config file")
    p.add_argument("--families", default=None,
                   help=f"comma-separated, of {','.join(ALL_FAMILIES)} "
                        "(default: train.families)")
    p.add_argument("--train-until", default=None,
                   help="end of the training span (epoch ms or ISO, UTC); default: the "
                        "first train.train_fraction of the stored data")
    p.add_argument("--symbols", default=None,
                   help="comma-separated (default: feed.symbols, else every stored symbol)")


def setup_logging() -> None:
    """Readable progress on stderr, unless the embedding program configured logging.

    A job inherits the daemon's stderr (the journal, under systemd), so it uses the
    daemon's format (qtraderd.runtime.logs: `<N>` priorities under journald, timestamps elsewhere).
    Only our own lines at INFO: the ML libraries' loggers stay at WARNING.
    """
    if log.handlers or logging.getLogger().handlers:
        return
    from qtraderd.runtime import logs as logsetup
    logsetup.setup(logging.WARNING)
    logging.getLogger("qtraderd").setLevel(logging.INFO)


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


def train_main(argv: list[str] | None = None, *, json_errors: bool = True) -> int:
    """The `train` job; also what `qtraderd train` calls in-process. Returns the exit code.

    A job's starter reads its failures as JSON (`json_errors`); the operator's `qtraderd
    train` passes False: a failure is then one error line on stderr and nothing on stdout,
    so a script piping stdout never mistakes an error object for a result.
    """
    parser = argparse.ArgumentParser(prog="python -m qtraderd.training train",
                                     description="Train, export and deploy models.")
    add_train_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    setup_logging()
    try:
        result = _run(args)
    except UsageError as exc:
        return _fail(str(exc), 2, json_errors)
    except Exception as exc:  # still one JSON answer for whoever started the job
        if json_errors:
            log.exception("learner job failed")
        return _fail(f"{type(exc).__name__}: {exc}", 1, json_errors)
    if result["ok"] or json_errors:
        emit(result)
        return 0 if result["ok"] else 1
    deployed = ", ".join(f"{m.get('family')}/{m.get('version')}" for m in result["models"])
    return _fail(f"training failed: {result['error']}"
                 + (f" (deployed anyway: {deployed})" if deployed else ""), 1, False)


def _fail(msg: str, code: int, json_errors: bool) -> int:
    from qtraderd.runtime.logs import prefix

    print(f"{prefix()}{'error' if json_errors else 'qtraderd: error'}: {msg}",
          file=sys.stderr)
    if json_errors:
        emit({"ok": False, "error": msg})
    return code


def _run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    families = ([f.strip() for f in args.families.split(",") if f.strip()]
                if args.families else list(cfg.train.families))
    families = list(dict.fromkeys(families))  # "xgboost,xgboost" trains once
    unknown = [f for f in families if f not in ALL_FAMILIES]
    if unknown or not families:
        raise UsageError(f"--families: unknown {unknown or 'empty list'} "
                         f"(known: {', '.join(ALL_FAMILIES)})")
    symbols = ([s.strip().upper() for s in args.symbols.split(",") if s.strip()]
               if args.symbols else None)
    until = parse_time(args.train_until) if args.train_until else None
    if not db_path(args.state_dir).exists():  # a learner never creates an empty store
        raise UsageError(f"no store at {db_path(args.state_dir)} (state dir "
                         f"{args.state_dir}); import bars first (`qtraderd import`)")
    try:
        conn = connect(args.state_dir)
    except StoreError as exc:
        raise UsageError(str(exc)) from exc
    t0 = time.monotonic()
    try:
        try:
            ds = dataset_mod.build(conn, cfg, symbols=symbols, train_until_ms=until)
        except dataset_mod.DatasetError as exc:
            raise UsageError(f"{exc} (state dir {args.state_dir})") from exc
        log.info("dataset: %d symbols, %s train / %s valid samples, window %s..%s "
                 "(validation from %s), data sha256 %s", len(ds.symbols), f"{ds.n_train:,}",
                 f"{ds.n_valid:,}", _fmt_ms(ds.span_start), _fmt_ms(ds.span_end),
                 _fmt_ms(ds.valid_cutoff), ds.data_sha256[:8])
        models: list[dict[str, Any]] = []
        errors: list[str] = []
        cache: dict[str, Any] = {}  # the networks' windows, built once for both families

        def done(family: str, trained: fit.Trained | BaseException | None) -> None:
            try:
                if isinstance(trained, BaseException):
                    raise trained
                models.append(train_family(family, ds, cfg, conn, args.models_dir, cache,
                                           trained))
            except Exception as exc:  # one family failing must not stop the others
                msg = f"{family}: {type(exc).__name__}: {exc}"
                log.error("failed %s", msg)
                errors.append(msg)

        try:
            ex = fit.open_cluster(cfg)
        except fit.ClusterSkipped as exc:
            raise JobSkipped(str(exc)) from None
        if ex is None:
            for family in families:
                done(family, None)
        else:
            with ex:  # every family a Ray task at once; each written here as it returns
                timeout = fit.task_timeout(cfg.train.timeout_s, time.monotonic() - t0)
                for family, got in fit.run_families(ex, families, ds, cfg, timeout_s=timeout):
                    done(family, got)
    finally:
        conn.close()
    result: dict[str, Any] = {"ok": not errors, "models": models, "dataset": ds.summary()}
    if errors:
        result["error"] = "; ".join(errors)
    return result


def train_family(family: str, ds: dataset_mod.Dataset, cfg: Config,
                 conn: sqlite3.Connection, models_dir: Path,
                 cache: dict[str, Any] | None = None,
                 trained: fit.Trained | None = None) -> dict[str, Any]:
    """`qtraderd train`: build a candidate, then register and promote it straight away.

    (The daemon's learner never does this: its jobs go through the deploy gate.)
    """
    out, _ = build_candidate(family, ds, cfg, conn, models_dir, cache=cache, trained=trained)
    registry.register(conn, out["meta"], Path(out["path"]), status="candidate",
                      reason="trained by qtraderd train")
    registry.promote(conn, models_dir, family, out["version"],
                     reason="qtraderd train deploys what it trains (the learner gates)")
    del out["meta"]
    return out


def build_candidate(family: str, ds: dataset_mod.Dataset, cfg: Config,
                    conn: sqlite3.Connection, models_dir: Path, *,
                    clock_ms: int | None = None, cache: dict[str, Any] | None = None,
                    trained: fit.Trained | None = None
                    ) -> tuple[dict[str, Any], np.ndarray]:
    """Train, export (parity-gated), evaluate and write one family's artifact.

    `trained`: the family already trained and exported (on a Ray cluster): only written,
    evaluated and checked here, exactly as a local model is.

    Returns the result (with "meta") and the ONNX probabilities on the validation rows.
    The version is named after `clock_ms` when given (the daemon's clock: a replay names
    its models the same way every time), else after the wall clock.
    """
    valid = ds.valid
    if trained is None:
        trained = fit.train_export(family, ds, cfg, cache)
    exp = trained
    proba, train_s, export_s = trained.proba, trained.train_seconds, trained.export_seconds
    input_kind, input_name = trained.input_kind, trained.input_name
    output_name, data_end = trained.output_name, trained.data_end
    params, extra = trained.params, trained.extra_metrics
    prior = np.bincount(ds.train.y, minlength=3) / ds.n_train
    m = metrics_mod.evaluate(proba, valid, cfg, train_prior=prior)
    m["parity_rows"] = exp.parity_rows
    m.update(extra)
    created = datetime.now(UTC)
    named = datetime.fromtimestamp(clock_ms / 1000, UTC) if clock_ms is not None else created
    sha = sha256_bytes(exp.onnx_bytes)
    version = f"{named:%Y%m%dT%H%M%SZ}-{sha[:8]}"
    b = ds.barriers
    meta = ModelMeta(
        family=family, version=version, sha256=sha,
        features=list(FEATURE_NAMES), features_version=FEATURES_VERSION,
        input_name=input_name, output_name=output_name, input_kind=input_kind,
        created_at=created.isoformat(timespec="seconds"),
        code_version=qtraderd.__version__,
        symbols=list(ds.symbols), interval=ds.interval,
        barriers={"tp": b.tp, "sl": b.sl, "horizon": b.horizon},
        train_start=ds.train_start, train_end=ds.train_end, data_end=data_end,
        valid_start=ds.valid_start, valid_end=ds.valid_end,
        n_train=ds.n_train, n_valid=ds.n_valid, data_sha256=ds.data_sha256,
        params=params, metrics=m,
        parity_max_abs_diff=exp.parity_max_abs_diff,
        probe_inputs=exp.probe_inputs, probe_outputs=exp.probe_outputs,
        trained_on=trained.trained_on,
    )
    path = onnx_path(models_dir, family, version)
    if path.exists() and read_artifact(models_dir, family, version)[0].sha256 == sha:
        log.info("%s %s already exists with the same bytes: reused", family, version)
    else:
        path = write_artifact(models_dir, meta, exp.onnx_bytes)
    log.info("exported %s %s in %.1f s (parity max abs diff %.1e over %d rows)", family,
             version, export_s, exp.parity_max_abs_diff, exp.parity_rows)
    log.info("%s", metrics_mod.headline(family, m))
    high = {k: m[k] for k in ("auc_long", "auc_short", "auc_direction")
            if m[k] is not None and m[k] > SUSPICIOUS_AUC}
    if high:  # honest 5m models sit near 0.5-0.6; this is what leakage looks like
        log.warning("%s: suspiciously high out-of-sample %s (> %.2f): check for leakage",
                    family, high, SUSPICIOUS_AUC)
    return {
        "family": family, "version": version, "path": str(path),
        "meta_path": str(path.with_suffix(".json")), "sha256": sha,
        "train_seconds": round(train_s, 3), "export_seconds": round(export_s, 3),
        "parity_max_abs_diff": exp.parity_max_abs_diff, "trained_on": trained.trained_on,
        "metrics": m, "meta": meta,
    }, proba
