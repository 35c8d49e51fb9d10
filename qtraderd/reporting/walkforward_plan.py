"""The walk-forward's plan: validated options, the periods and the config, fixed before
anything runs (`qtraderd walkforward`; the report and the runner both read it)."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtraderd.core import config as config_mod
from qtraderd.core.clock import iso
from qtraderd.core.config import INTERVAL_MS, Config, per_quote, with_changes
from qtraderd.core.instruments import InstrumentError, load_state_dir, quote_asset
from qtraderd.store.db import StoreError, connect, db_path
from qtraderd.venues.replay import stored_span, stored_symbols

DAY_MS, HOUR_MS = 86_400_000, 3_600_000
ARMS = {"continuous": "continuous learning", "frozen": "never retrained",
        "buy_hold": "buy-and-hold", "buy_hold_exposure": "buy-and-hold at exposure",
        "random": "random entries"}
HIT_N = 100  # outcomes before / after each retrain for the hit-rate comparison


class WalkforwardError(Exception):
    """Bad input (code 2) or a failed step (code 1); the message is for the operator."""

    def __init__(self, msg: str, code: int = 2) -> None:
        super().__init__(msg)
        self.code = code


@dataclass(frozen=True)
class Plan:
    """Everything decided before anything runs (validated input, periods, the config)."""

    cfg: Config  # base config with the walk-forward's settings applied
    source: Path
    out: Path
    symbols: tuple[str, ...]
    interval_ms: int
    hist_start: int  # first bar replayed; the initial models train from here
    test_start: int  # first bar of the out-of-sample test period
    test_end: int  # last bar (open time) of the test period, inclusive
    train_days: float
    retrain_hours: float

    @property
    def work(self) -> Path:
        return self.out / "work"

    def edges(self) -> np.ndarray:
        """Window boundaries: every retrain interval from the test start past its end."""
        step = int(self.retrain_hours * HOUR_MS)
        n = max(1, math.ceil((self.test_end + self.interval_ms - self.test_start) / step))
        return self.test_start + step * np.arange(n + 1, dtype=np.int64)


# ----------------------------------------------------------------------------- planning


def make_plan(args: argparse.Namespace) -> Plan:
    """Validate the options against the stored bars and fix the periods (exit 2 if bad)."""
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        raise WalkforwardError(str(exc)) from exc
    if args.seed is not None:
        cfg = with_changes(cfg, seed=int(args.seed))
    if cfg.feed.source != "replay":
        raise WalkforwardError("walkforward replays stored candles: feed.source must be "
                               f"'replay', got {cfg.feed.source!r}")
    interval = cfg.feed.interval
    hint = (f"import candles first, e.g. `qtraderd import FILE... --state-dir "
            f"{args.state_dir}` (the demo candles are in {Path(__file__).parent / 'data'})")
    if not db_path(args.state_dir).exists():
        raise WalkforwardError(f"no store at {db_path(args.state_dir)}; {hint}")
    try:
        conn = connect(args.state_dir, readonly=True)
        load_state_dir(args.state_dir)
    except (StoreError, InstrumentError) as exc:
        raise WalkforwardError(str(exc)) from exc
    try:
        stored = stored_symbols(conn, interval)
        if args.symbols is not None:
            wanted = list(dict.fromkeys(s.strip().upper() for s in args.symbols.split(",")
                                        if s.strip()))
            if not wanted:
                raise WalkforwardError("--symbols: empty list")
        else:
            wanted = list(cfg.feed.symbols) or stored
        if not stored:
            raise WalkforwardError(f"no {interval} bars in {db_path(args.state_dir)}; {hint}")
        missing = [s for s in wanted if s not in stored]
        if missing:
            raise WalkforwardError(f"no {interval} bars stored for {', '.join(missing)} "
                                   f"(stored: {', '.join(stored)})")
        for s in wanted:
            try:
                q = quote_asset(s)
            except InstrumentError as exc:
                raise WalkforwardError(str(exc)) from exc
            if per_quote(cfg.account.balances, q) <= 0:
                raise WalkforwardError(f"account.balances has no starting balance for {q} "
                                       f"(needed by {s})")
        marks = ",".join("?" * len(wanted))
        where = f"interval=? AND symbol IN ({marks})"
        first, last, _ = stored_span(conn, list(wanted), interval)
        interval_ms = INTERVAL_MS[interval]
        history = (args.train_days + cfg.learning.eval_window_days) * DAY_MS
        test_start = conn.execute(f"SELECT min(open_time) FROM bars WHERE {where} AND "
                                  "open_time>=?", (interval, *wanted, first + history)
                                  ).fetchone()[0]
        span_days = (last + interval_ms - first) / DAY_MS
        if test_start is None:
            raise WalkforwardError(
                f"the stored bars span {span_days:.1f} days ({iso(first)} .. {iso(last)}); "
                f"--train-days {args.train_days:g} needs {history / DAY_MS:g} days of history "
                f"before the test period ({args.train_days:g} + learning.eval_window_days "
                f"{cfg.learning.eval_window_days:g}, the learner's held-out gate window)")
        avail_days = (last + interval_ms - test_start) / DAY_MS
        test_end = last
        if args.test_days is not None:
            if args.test_days > avail_days + 1e-9:
                raise WalkforwardError(
                    f"test period too short: --test-days {args.test_days:g} but only "
                    f"{avail_days:.2f} days of bars after the test start {iso(test_start)}")
            test_end = conn.execute(f"SELECT max(open_time) FROM bars WHERE {where} AND "
                                    "open_time<?", (interval, *wanted,
                                                    test_start + args.test_days * DAY_MS)
                                    ).fetchone()[0]
        test_hours = (test_end + interval_ms - test_start) / HOUR_MS
        if test_hours < args.retrain_hours or \
                test_hours * HOUR_MS < 2 * cfg.labels.horizon_bars * interval_ms:
            raise WalkforwardError(
                f"test period too short: {test_hours:.1f} h of bars after {iso(test_start)}, "
                f"less than one --retrain-hours window ({args.retrain_hours:g} h) or two "
                f"label horizons")
    finally:
        conn.close()
    lc = cfg.learning
    cfg = with_changes(
        cfg, feed={"symbols": tuple(wanted), "start": _iso_full(first),
                   "end": _iso_full(test_end), "exit_at_end": True, "speed": math.inf},
        learning={"train_window_days": float(args.train_days),
                  "retrain_interval_hours": float(args.retrain_hours),
                  "min_retrain_gap_hours": min(lc.min_retrain_gap_hours, args.retrain_hours),
                  "replay_holds_clock": True})
    return Plan(cfg, Path(args.state_dir), Path(args.out), tuple(wanted), interval_ms,
                int(first), int(test_start), int(test_end), float(args.train_days),
                float(args.retrain_hours))


def _iso_full(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
