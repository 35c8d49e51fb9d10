"""The sweep's plan: validated grid, folds and cells, fixed before anything runs.

`--set section.key=v1,v2` names a sizing/threshold setting and its values; the grid is
their product. Every value, and every combination, is checked by loading the config it
makes through the normal loader (so bounds and cross-checks such as take-profit above
stop-loss apply) before any training starts: a bad one exits 2 naming it.

Folds are consecutive test windows after `--train-days` of history; each fold's models are
trained on the bars before its start, so every cell (fold x symbol x setting) is out of
sample.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import tempfile
import time
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from qtraderd.core import config as config_mod
from qtraderd.core.config import INTERVAL_MS, Config, to_toml, with_changes
from qtraderd.reporting.walkforward_plan import DAY_MS, WalkforwardError
from qtraderd.store.db import StoreError, connect, db_path
from qtraderd.venues.replay import stored_span, stored_symbols

SWEEPABLE = ("sizing", "monitor", "risk", "portfolio")


class SweepError(WalkforwardError):
    """Bad input (code 2) or a failed step (code 1); the message is for the operator."""


@dataclass(frozen=True)
class Plan:
    cfg: Config  # base config: seed, replay settings, learning off
    source: Path
    out: Path
    symbols: tuple[str, ...]
    interval_ms: int
    first: int  # first stored bar: every fold's training starts here
    folds: tuple[tuple[int, int], ...]  # (first bar, last bar) open times, inclusive
    settings: tuple[dict[str, Any], ...]
    cell_timeout_s: float

    @property
    def work(self) -> Path:
        return self.out / "work"

    def cells(self) -> list[tuple[int, str, int]]:
        return [(f, s, k) for f in range(len(self.folds)) for s in self.symbols
                for k in range(len(self.settings))]

    def fingerprint(self) -> str:
        """What makes two runs the same sweep (a resumed one must match)."""
        blob = json.dumps({"cfg": self.cfg.to_dict(), "symbols": self.symbols,
                           "folds": self.folds, "settings": self.settings},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def setting_label(setting: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "(base config)"


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: a string (the loader says if the key wants another type)


def parse_sets(specs: list[str]) -> dict[str, list[Any]]:
    """`--set section.key=v1,v2` -> {"section.key": [v1, v2]} (names the bad one)."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, eq, values = spec.partition("=")
        key = key.strip()
        if not eq or not values.strip():
            raise SweepError(f"--set {spec!r}: expected section.key=value[,value...]")
        section, _, name = key.partition(".")
        if section not in SWEEPABLE:
            raise SweepError(f"--set {key}: not a sweepable key (sections: "
                             f"{', '.join(SWEEPABLE)})")
        known = {f.name for f in fields(getattr(Config(), section))}
        if name not in known:
            raise SweepError(f"--set {key}: unknown config key (known keys in [{section}]: "
                             f"{', '.join(sorted(known))})")
        if key in grid:
            raise SweepError(f"--set {key}: given twice")
        raws = [v.strip() for v in values.split(",")]
        if any(not v for v in raws) or len(set(raws)) != len(raws):
            raise SweepError(f"--set {spec!r}: empty or repeated value")
        grid[key] = [_parse_value(v) for v in raws]
    return grid


def configured(base: Config, setting: dict[str, Any], tmp: Path) -> Config:
    """`base` with `setting` applied, through the loader (raises ConfigError if bad)."""
    d = base.to_dict()
    for key, value in setting.items():
        section, _, name = key.partition(".")
        d[section] = {**d[section], name: value}
    path = tmp / "check.toml"
    path.write_text(to_toml(d, "sweep setting check"))
    return config_mod.load(path, env={})


def make_plan(args: argparse.Namespace) -> Plan:
    """Validate the options against the stored bars and fix folds and grid (exit 2)."""
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        raise SweepError(str(exc)) from exc
    if args.seed is not None:
        cfg = with_changes(cfg, seed=int(args.seed))
    grid = parse_sets(args.set or [])
    if not db_path(args.state_dir).exists():
        raise SweepError(f"no store at {db_path(args.state_dir)}; import candles first "
                         "(`qtraderd import`)")
    interval = cfg.feed.interval
    try:
        conn = connect(args.state_dir, readonly=True)
    except StoreError as exc:
        raise SweepError(str(exc)) from exc
    try:
        stored = stored_symbols(conn, interval)
        if args.symbols:
            wanted = list(dict.fromkeys(s.strip().upper() for s in args.symbols.split(",")
                                        if s.strip()))
        else:
            wanted = list(cfg.feed.symbols) or stored
        missing = [s for s in wanted if s not in stored]
        if not wanted or missing:
            raise SweepError(f"--symbols: no {interval} bars stored for "
                             f"{', '.join(missing) or '(none given)'} (stored: "
                             f"{', '.join(stored) or 'none'})")
        first, last, _ = stored_span(conn, wanted, interval)
    finally:
        conn.close()
    step = INTERVAL_MS[interval]
    test_start = first + int(args.train_days * DAY_MS)
    avail = (last + step - test_start) / DAY_MS
    fold_days = args.fold_days or avail / args.folds
    if avail <= 0 or fold_days * args.folds > avail + 1e-9:
        raise SweepError(f"the stored bars span {(last + step - first) / DAY_MS:.2f} days; "
                         f"--train-days {args.train_days:g} leaves {max(avail, 0):.2f} days for "
                         f"--folds {args.folds} of {fold_days:.2f} days")
    fold_ms = int(fold_days * DAY_MS) // step * step
    if fold_ms < step:
        raise SweepError(f"folds of {fold_days:g} days hold no {interval} bar")
    folds = tuple((test_start + k * fold_ms, test_start + (k + 1) * fold_ms - step)
                  for k in range(args.folds))
    cfg = with_changes(cfg, feed={"source": "replay", "symbols": tuple(wanted),
                                  "exit_at_end": True, "speed": math.inf, "start": "",
                                  "end": ""},
                       learning={"enabled": False})
    keys = list(grid)
    settings = tuple(dict(zip(keys, combo, strict=True))
                     for combo in itertools.product(*grid.values()))
    with tempfile.TemporaryDirectory() as tmp:
        for key, values in grid.items():
            for v in values:
                try:
                    configured(cfg, {key: v}, Path(tmp))
                except config_mod.ConfigError as exc:
                    raise SweepError(f"--set {key}={v}: {exc}") from exc
        for setting in settings:
            try:
                configured(cfg, setting, Path(tmp))
            except config_mod.ConfigError as exc:
                raise SweepError(f"--set {setting_label(setting)}: {exc}") from exc
    return Plan(cfg, Path(args.state_dir), Path(args.out), tuple(wanted), step, int(first),
                folds, settings, float(args.cell_timeout))


def cell_toml(plan: Plan, fold: int, symbol: str, setting: dict[str, Any], tmp: Path) -> str:
    """The complete config one cell's daemon runs (its replay window, its setting)."""
    start, end = plan.folds[fold]
    cfg = with_changes(configured(plan.cfg, setting, tmp),
                       feed={"symbols": (symbol,), "start": _iso(start), "end": _iso(end)})
    return to_toml(cfg, f"qtraderd sweep cell: fold {fold}, {symbol}, "
                        f"{setting_label(setting)}")


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
