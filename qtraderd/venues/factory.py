"""One place that turns the config into a venue: bar source, broker and clock.

Built today: `mode = "paper"` with `feed.source = "replay"` — stored candles, the paper
broker, the replay clock (moved by the execution actor as it takes each step). Anything
else is refused at start with a `VenueError` naming the config key and what exists, which
`qtraderd run` turns into exit 2: a live mode or a Binance feed must never quietly
paper-trade stored candles. The Binance USD-M feed (a BarSource) and live execution (a
Broker) plug in here when they are built.
"""

from __future__ import annotations

import json
from pathlib import Path

from qtraderd.core.clock import ReplayClock
from qtraderd.core.config import Config
from qtraderd.core.costs import CostModel
from qtraderd.venues.base import BarSource, Broker
from qtraderd.venues.paper import PaperBroker
from qtraderd.venues.replay import ReplaySource

BUILT = {("paper", "replay")}
MODES_BUILT = ("paper",)
SOURCES_BUILT = ("replay",)


class VenueError(ValueError):
    """The configured venue combination does not exist yet."""


def _q(value: str) -> str:
    return json.dumps(value)


def check_venue(cfg: Config) -> None:
    """Refuse a combination that is not built (before anything touches the state dir)."""
    problems = []
    if cfg.mode not in MODES_BUILT:
        problems.append(f"config key 'mode': {_q(cfg.mode)} is not built yet (exists today: "
                        f"{', '.join(map(_q, MODES_BUILT))}); live execution comes with the "
                        "live-execution issue")
    if cfg.feed.source not in SOURCES_BUILT:
        problems.append(f"config key 'feed.source': {_q(cfg.feed.source)} is not built yet "
                        f"(exists today: {', '.join(map(_q, SOURCES_BUILT))}); the Binance "
                        "feed comes with the live-feed issue")
    if not problems and (cfg.mode, cfg.feed.source) not in BUILT:
        problems.append(f"config keys 'mode' and 'feed.source': {_q(cfg.mode)} with "
                        f"{_q(cfg.feed.source)} is not built yet (exists today: "
                        + ", ".join(f"{_q(m)} with {_q(s)}" for m, s in sorted(BUILT)) + ")")
    if problems:
        raise VenueError("; ".join(problems))


def build_venue(cfg: Config, state_dir: Path, symbols: list[str],
                start_ms: int | None = None, end_ms: int | None = None
                ) -> tuple[BarSource, Broker, ReplayClock]:
    """(bar source, broker, clock) for the config; VenueError for what is not built."""
    check_venue(cfg)
    source = ReplaySource(state_dir, symbols, cfg.feed.interval, start_ms, end_ms)
    broker = PaperBroker(cfg.account.balances, CostModel.from_config(cfg.costs))
    return source, broker, ReplayClock()
