"""The `qtraderd` command line: run, import, train, ctl, report, walkforward, sweep,
verify, exchange-sim.

Exit codes: 0 ok; 1 a command failed at run time; 2 bad input (config, files, state dir);
3 the daemon gave up after too many actor restarts (systemd restarts it).
Heavy imports happen inside the subcommands: `qtraderd ctl` starts in milliseconds and
`qtraderd run` never imports the training libraries (training runs in a subprocess).
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from qtraderd import __version__

log = logging.getLogger("qtraderd")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _add_dirs(p: argparse.ArgumentParser, models: bool = True) -> None:
    p.add_argument("--state-dir", type=Path, default=Path("state"),
                   help="holds qtraderd.db and the control socket (default: ./state)")
    if models:
        p.add_argument("--models-dir", type=Path, default=Path("models"),
                       help="holds model artifacts (default: ./models)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qtraderd",
        description="Self-hosted crypto trading daemon that learns from its own trades.")
    parser.add_argument("--version", action="version", version=f"qtraderd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the daemon (default: paper-trade the bundled candles)",
                       description="Run the daemon in the foreground until the replay data "
                       "ends (or SIGTERM/SIGINT). Without --config: paper mode, replay of "
                       "the candles bundled with qtraderd at full speed. Imports the bundled "
                       "candles if the store has none and trains the first models (in a "
                       "subprocess) if the models directory has none. If the last run in the "
                       "state directory did not finish (killed, stopped early, escalated), "
                       "it is resumed from its last checkpoint (see --fresh). Prints a "
                       "summary at the end.")
    p.add_argument("--config", type=Path, default=None, help="TOML config file")
    _add_dirs(p)
    p.add_argument("--no-train", action="store_true",
                   help="do not train initial models when none exist (predict nothing)")
    p.add_argument("--fresh", action="store_true",
                   help="if the last run did not finish, close it (status crashed) and "
                        "start a new run instead of resuming it")
    p.add_argument("--plugins-dir", type=Path, default=None, metavar="DIR",
                   help="plugin files, watched and hot-reloaded (default: [plugins] dir, "
                        "./plugins)")

    p = sub.add_parser("import", help="load candle files (CSV, Binance klines) into the store",
                       description="Load candles into the store. Accepts CSV with a header "
                       "(time column open_time/timestamp/date/time in epoch s/ms/us or "
                       "ISO-8601) and Binance public-data kline CSVs (12 columns, no header), "
                       "plain, .gz or .zip (streamed: memory stays small whatever the file "
                       "inflates to). Re-importing adds nothing; bad rows are rejected "
                       "with their line numbers; gaps stay gaps. Exit 2 if a file is missing "
                       "(checked first: nothing is imported), cannot be read as candles, or "
                       "yields none (every row rejected).")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--symbol", default=None, help="symbol (default: from the file name)")
    p.add_argument("--interval", default=None,
                   help="1m|3m|5m|15m|30m|1h|2h|4h|1d (default: from the file name)")
    _add_dirs(p, models=False)

    p = sub.add_parser("train", help="train and export models from the stored candles",
                       description="Train the tree models (XGBoost, LightGBM) on the first "
                       "train.train_fraction of the stored span, export them to ONNX with a "
                       "parity check and deploy them to the models directory.")
    p.add_argument("--config", type=Path, default=None, help="TOML config file")
    _add_dirs(p)
    p.add_argument("--families", default=None, help="comma-separated (default: all)")
    p.add_argument("--train-until", default=None, help="end of the training span (ISO or ms)")
    p.add_argument("--symbols", default=None, help="comma-separated (default: all stored)")

    p = sub.add_parser("ctl", help="talk to a running daemon (try `qtraderd ctl --help`)",
                       add_help=False)
    p.add_argument("ctl_args", nargs=argparse.REMAINDER)

    p = sub.add_parser("report", help="the end-of-run summary of a past or running run",
                       description="Summary from SQLite: trades, win rate, net PnL after "
                       "costs, max drawdown, Sharpe, per-symbol rows. With --out DIR also "
                       "writes DIR/report.html: one self-contained page (plots embedded) "
                       "with equity, drawdown, PnL per symbol, model versions with their "
                       "live hit rates, and every retrain, deploy and rollback. Reads the "
                       "store read-only, so it works while the daemon runs.")
    _add_dirs(p, models=False)
    p.add_argument("--run", type=int, default=None, help="run id (default: the latest)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="also write DIR/report.html (created if missing)")

    p = sub.add_parser(
        "verify", help="check that the running daemon trades and learns (pass/fail table)",
        description="Check the running daemon (via its control socket) and its store: bars "
        "arriving, predictions, orders and fills, training samples getting outcomes, "
        "trigger evaluations within the last hour of clock time, the last retrain result, "
        "served models equal to the registry's champions, plugins healthy. Prints a "
        "pass/fail/skip table; exit code 1 if any check fails.")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="the store (default: the daemon's, else ./state)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, default=None,
                       help="control socket (default: as `qtraderd ctl` finds it)")
    where.add_argument("--instance", default=None, metavar="NAME",
                       help="the daemon of systemd unit qtraderd@NAME.service (its socket "
                            "/run/qtraderd/NAME/qtraderd.sock, or under $QTRADERD_RUNTIME_ROOT; "
                            "its store: the one the daemon reports)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="model artifacts (default: the daemon's, else ./models)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--offline", action="store_true",
                   help="check only the store (no daemon needed)")
    p.add_argument("--wait", type=float, default=2.0, metavar="S",
                   help="seconds between the two looks at the daemon's progress (2)")

    p = sub.add_parser(
        "walkforward", help="does continuous learning pay? replay with and without it",
        description="Replay the stored candles in data time with the real learner and "
        "compare, net of costs over the same out-of-sample test period: continuous learning "
        "(retrain every --retrain-hours on a --train-days sliding window), the same initial "
        "models never retrained, equal-weight buy-and-hold (fully invested and at the "
        "strategy's exposure), and seeded random entries that take the strategy's sizes and "
        "exits (TP/SL, trailing and time stops). One Sharpe per arm; per-window lines carry "
        "their sample size and 95 % intervals. The "
        "test period starts --train-days + learning.eval_window_days after the first stored "
        "bar. Writes OUT/walkforward.md, walkforward.json and PNGs; works in OUT/work.")
    p.add_argument("--config", type=Path, default=None, help="TOML config file")
    _add_dirs(p, models=False)
    p.add_argument("--out", type=Path, default=Path("walkforward"),
                   help="report directory (default: ./walkforward)")
    p.add_argument("--train-days", type=_positive, default=10.0,
                   help="initial training history and the learner's sliding window (10)")
    p.add_argument("--test-days", type=_positive, default=None,
                   help="length of the test period (default: to the end of the data)")
    p.add_argument("--retrain-hours", type=_positive, default=24.0,
                   help="retrain interval, also the report's window length (24)")
    p.add_argument("--symbols", default=None, help="comma-separated (default: all stored)")
    p.add_argument("--seed", type=_seed, default=None, help="seed (default: config seed)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where the two daemon arms run: local, one after the other in "
                        "this process (default), or ray, as two tasks in parallel")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster (e.g. ray://head:10001; default $RAY_ADDRESS or auto)")

    p = sub.add_parser(
        "sweep", help="sizing/threshold settings out of sample: folds x symbols x settings",
        description="A grid of sizing and threshold settings (--set, their product) over "
        "--folds consecutive test windows after --train-days of history, times --symbols. "
        "Each fold's models are trained once on the bars before it (cached in OUT/work); "
        "each cell replays the fold's window for one symbol with one setting in a real "
        "daemon (learning off), here (--executor local) or as Ray tasks (--executor ray). "
        "Cells are written to OUT/sweep.db as they finish: run the same command again to "
        "resume. Prints a table per setting over folds and symbols, best mean return "
        "first (--json: also every cell); writes OUT/sweep.json.")
    p.add_argument("--config", type=Path, default=None, help="TOML config file")
    _add_dirs(p, models=False)
    p.add_argument("--out", type=Path, default=Path("sweep"),
                   help="results directory (default: ./sweep)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=V1,V2",
                   help="a setting and its values, repeatable; sections sizing, monitor, "
                        "risk, portfolio (e.g. sizing.take_profit_pct=1.2,1.6)")
    p.add_argument("--folds", type=_count, default=3, help="test windows (3)")
    p.add_argument("--fold-days", type=_positive, default=None,
                   help="length of each test window (default: the data after "
                        "--train-days, split evenly)")
    p.add_argument("--train-days", type=_positive, default=10.0,
                   help="history before the first fold (10)")
    p.add_argument("--symbols", default=None, help="comma-separated (default: all stored)")
    p.add_argument("--seed", type=_seed, default=None, help="seed (default: config seed)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where the cells run (default: local, one after another)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster (e.g. ray://head:10001; default $RAY_ADDRESS or auto)")
    p.add_argument("--cell-timeout", type=_positive, default=1800.0,
                   help="seconds one cell's replay may take (1800)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    from qtraderd.venues.sim import main as sim_main  # argparse only at import

    p = sub.add_parser("exchange-sim", help="a local Binance USD-M exchange over stored candles",
                       description=sim_main.DESCRIPTION)
    sim_main.add_arguments(p)
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected an integer 1 .. 1000, got {text!r}")
    return int(text)


def _seed(text: str) -> int:
    if not text.isdigit() or int(text) > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"expected an integer 0 .. 2**32-1, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["ctl"]:
            from qtraderd.control import client as ctl
            return ctl.main(argv[1:], prog="qtraderd ctl")
        args = build_parser().parse_args(argv)
        handler = {"run": cmd_run, "import": cmd_import, "train": cmd_train,
                   "report": cmd_report, "walkforward": cmd_walkforward, "sweep": cmd_sweep,
                   "verify": cmd_verify, "exchange-sim": cmd_exchange_sim}[args.command]
        code = handler(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return code
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """stdout's reader went away (`qtraderd verify --json | head`): not an error of ours,
    and no traceback. stdout is pointed at /dev/null so the exit-time flush stays quiet."""
    import contextlib
    import os

    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def _error(msg: str, code: int = EXIT_USAGE) -> int:
    from qtraderd.runtime.logs import prefix  # "<3>" under journald, like every logged line

    print(f"{prefix()}qtraderd: error: {msg}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------- import


def cmd_import(args: argparse.Namespace) -> int:
    from qtraderd.runtime import logs as logsetup
    from qtraderd.store.db import StoreError, connect, db_path, store_error
    from qtraderd.store.importer import CandleImportError, import_file

    logsetup.setup("INFO")
    # Every file is checked before the store is opened: a typo must not create an empty
    # store (or import half of a list) and then fail.
    unreadable = [f"{p} ({why})" for p in args.files if (why := _unreadable(p))]
    if unreadable:
        return _error(f"cannot import {', '.join(unreadable)}; nothing was imported")
    try:
        conn = connect(args.state_dir)
    except StoreError as exc:
        return _error(str(exc))
    failed = 0
    for path in args.files:
        try:
            res = import_file(conn, path, args.symbol, args.interval)
        except CandleImportError as exc:  # includes "every row rejected": nothing stored
            _error(str(exc))
            failed += 1
            continue
        except sqlite3.Error as exc:  # locked by a writer, or damaged pages
            conn.close()
            return _error(f"{store_error(db_path(args.state_dir), exc)}; nothing from "
                          f"{path} was imported")
        print(f"{path}: {res.summary()}")
        for line, reason in res.rejected[:20]:
            print(f"  rejected line {line}: {reason}")
        if res.rejected_count > 20:
            print(f"  ... and {res.rejected_count - 20} more rejected rows")
    conn.close()
    return EXIT_USAGE if failed else EXIT_OK


def _unreadable(path: Path) -> str:
    """Why `path` cannot be imported, or "" if it is a readable file."""
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    if not os.access(path, os.R_OK):
        return "not readable by this user"
    return ""


def bundled_files() -> list[Path]:
    root = resources.files("qtraderd") / "data"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".csv.gz"))


def ensure_candles(state_dir: Path, interval: str) -> None:
    """Import the bundled demo candles if the store holds none for this interval."""
    from qtraderd.store.db import connect
    from qtraderd.store.importer import import_file
    from qtraderd.venues.replay import stored_symbols

    conn = connect(state_dir)
    try:
        if stored_symbols(conn, interval):
            return
        files = [f for f in bundled_files() if f"-{interval}." in f.name]
        if not files:
            return
        log.info("store has no %s candles: importing the %d bundled files", interval, len(files))
        for f in files:
            log.info("imported %s", import_file(conn, f).summary())
    finally:
        conn.close()


# -------------------------------------------------------------------------------- train


def _train_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--state-dir", str(args.state_dir), "--models-dir", str(args.models_dir)]
    if args.config:
        argv += ["--config", str(args.config)]
    for opt in ("families", "train_until", "symbols"):
        value = getattr(args, opt, None)
        if value:
            argv += [f"--{opt.replace('_', '-')}", value]
    return argv


def cmd_train(args: argparse.Namespace) -> int:
    from qtraderd.training.cli import train_main

    return train_main(_train_argv(args), json_errors=False)  # failures: stderr only


def train_subprocess(state_dir: Path, models_dir: Path, config: Path | None,
                     timeout_s: float) -> int:
    """Initial training for `run`, in a separate process (the daemon never imports ML libs)."""
    cmd = [sys.executable, "-m", "qtraderd.training", "train", "--state-dir", str(state_dir),
           "--models-dir", str(models_dir)]
    if config:
        cmd += ["--config", str(config)]
    log.info("no models in %s: training the initial models (subprocess)", models_dir)
    try:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        log.error("initial training timed out after %.0f s", timeout_s)
        return EXIT_FAILED
    return done.returncode


# ---------------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from qtraderd.core import config as config_mod
    from qtraderd.runtime import logs as logsetup
    from qtraderd.runtime import secrets
    from qtraderd.runtime.process import LockError, StateLock

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        return _error(str(exc))
    logsetup.setup(cfg.runtime.log_level)
    try:  # once, before anything touches the state dir; values are masked in logs from here
        credentials = secrets.load()
        secrets.require(cfg.mode, credentials)
    except secrets.CredentialsError as exc:
        return _error(str(exc))
    log.info(secrets.describe(credentials, cfg.mode))
    from qtraderd.venues.factory import VenueError, check_venue

    try:  # a venue that is not built is refused before anything touches the state dir
        check_venue(cfg)
    except VenueError as exc:
        return _error(str(exc))
    # The state-dir lock comes before anything touches the state or models directory: a
    # second instance must be refused before it imports, trains or writes a run row.
    lock = StateLock(args.state_dir)
    try:
        lock.acquire()  # waits a few seconds for a predecessor's store writer to finish
    except LockError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot lock state directory {args.state_dir} (not writable?): "
                      f"{exc.strerror or exc}")
    try:
        return _run_locked(args, cfg, credentials, lock)
    finally:
        lock.release()


def _run_locked(args: argparse.Namespace, cfg: Any, credentials: Any, lock: Any) -> int:
    """`run` once the state directory is ours: candles, initial models, the daemon."""
    import trio

    from qtraderd.models.artifacts import families, list_versions
    from qtraderd.reporting.report import render, summarize
    from qtraderd.runtime import logs as logsetup
    from qtraderd.runtime.daemon import (
        Daemon,
        DaemonError,
        DaemonUnavailable,
        unwrap,
        warm_up_exchange,
    )
    from qtraderd.runtime.systemd import Notifier
    from qtraderd.store.db import StoreError, connect, db_path, store_error

    try:
        if cfg.feed.source == "replay":
            ensure_candles(args.state_dir, cfg.feed.interval)
        has_models = any(list_versions(args.models_dir, f) for f in families(args.models_dir))
        live = cfg.feed.source != "replay"
        if not has_models and not args.no_train and live:
            # the first models train on the exchange's history: fetch it first (the daemon
            # resumes this warm-up at start and fetches only what closed meanwhile)
            warm_up_exchange(cfg, args.state_dir)
        if not has_models and not args.no_train:
            # Under systemd this is still start-up (READY=1 comes from the daemon): ask for
            # the time training may take instead of a TimeoutStartSec sized for it.
            notifier = Notifier.from_env()
            notifier.status("training the initial models")
            notifier.extend_timeout(cfg.train.timeout_s + 60)
            code = train_subprocess(args.state_dir, args.models_dir, args.config,
                                    cfg.train.timeout_s)
            if code != 0 and live:  # too little history yet: the learner trains them later
                log.warning("initial training failed (exit %d): running without models "
                            "until the learner trains some", code)
            elif code != 0:
                return _error(f"initial training failed (exit {code}); see the lines above, "
                              "or start with --no-train to run without models", EXIT_FAILED)
        # In the journal a progress line a second is noise (86,400 a day); systemd's STATUS
        # (`systemctl status`) carries the live one instead.
        daemon = Daemon(cfg, args.state_dir, args.models_dir, config_path=args.config,
                        progress_every_s=60.0 if logsetup.journal_stream() else 1.0,
                        credentials=credentials, fresh=args.fresh,
                        plugins_dir=args.plugins_dir or Path(cfg.plugins.dir),
                        held_lock=lock)
        try:
            code = trio.run(daemon.run)
        except BaseExceptionGroup as group:
            leaf = unwrap(group)
            if isinstance(leaf, DaemonError | DaemonUnavailable | StoreError
                          | sqlite3.DatabaseError):
                raise leaf from None
            raise
    except (DaemonError, StoreError) as exc:
        return _error(str(exc))
    except DaemonUnavailable as exc:  # the exchange unreachable: worth a restart
        return _error(str(exc), EXIT_FAILED)
    except sqlite3.DatabaseError as exc:  # e.g. reading the candles before the daemon starts
        return _error(str(store_error(db_path(args.state_dir), exc)))
    except OSError as exc:
        return _error(f"{exc}", EXIT_FAILED)
    conn = connect(args.state_dir, readonly=True)
    try:
        sys.stdout.write(render(summarize(conn, daemon.run_id)))
    finally:
        conn.close()
    return code


# ------------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from qtraderd.reporting.report import ReportError, render, summarize
    from qtraderd.store.db import StoreError, connect

    data = None
    try:
        conn = connect(args.state_dir, readonly=True)
        if args.out is None:
            summary = summarize(conn, args.run)
        else:  # one snapshot for the printed summary and the page
            from qtraderd.reporting.html import collect, prepare_out, write_report

            data = collect(conn, args.run)
            summary = data["summary"]
            prepare_out(args.out)  # a bad --out fails before anything is printed
    except (StoreError, ReportError) as exc:
        return _error(str(exc))
    except sqlite3.Error as exc:
        return _error(f"cannot read store {args.state_dir}: {exc}", EXIT_FAILED)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        sys.stdout.write(render(summary))
    if data is not None:
        try:
            path = write_report(args.out, data, args.state_dir)
        except ReportError as exc:
            return _error(str(exc))
        # with --json, stdout stays pure JSON
        print(f"HTML report: {path}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK


# ------------------------------------------------------------------------------- verify


def cmd_verify(args: argparse.Namespace) -> int:
    from qtraderd.reporting.verify import main as verify_main

    return verify_main(args)


# ------------------------------------------------------------------------- exchange-sim


def cmd_exchange_sim(args: argparse.Namespace) -> int:
    from qtraderd.runtime import logs as logsetup
    from qtraderd.venues.sim.main import run

    logsetup.setup("INFO")
    return run(args)


# -------------------------------------------------------------------------- walkforward


def cmd_walkforward(args: argparse.Namespace) -> int:
    from qtraderd.reporting.walkforward import main as walkforward_main

    return walkforward_main(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from qtraderd.reporting.sweep import main as sweep_main

    return sweep_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
