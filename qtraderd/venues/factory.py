"""One place that turns the config into a venue: bar source, broker and clock.

Built today:
* `mode = "paper"` with `feed.source = "replay"` — stored candles, the paper broker, the
  replay clock (moved by the execution actor as it takes each step);
* `mode = "paper"` with `feed.source = "binance"` (dry run) — the Binance USD-M kline feed,
  the same paper broker (filling at the next bar's open, as in a replay) and a live clock
  (the exchange's time, at `feed.speed` against the simulator).
* `mode = "live"` with `feed.source = "binance"` — the same feed, the Binance broker
  (signed orders, algo-order stops, user data stream, reconciliation; binance/broker.py)
  on the credentials from runtime.secrets.
Anything else is refused at start with a `VenueError` naming the config key and what
exists, which `qtraderd run` turns into exit 2: live mode must never quietly paper-trade.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from qtraderd.core.clock import Clock, LiveClock, ReplayClock
from qtraderd.core.config import INTERVAL_MS, Config
from qtraderd.core.costs import CostModel
from qtraderd.venues.base import BarSource, Broker
from qtraderd.venues.paper import PaperBroker
from qtraderd.venues.replay import ReplaySource

BUILT = {("paper", "replay"), ("paper", "binance"), ("live", "binance")}
MODES_BUILT = ("paper", "live")
SOURCES_BUILT = ("replay", "binance")


class VenueError(ValueError):
    """The configured venue combination does not exist yet."""


def _q(value: str) -> str:
    return json.dumps(value)


def check_venue(cfg: Config) -> None:
    """Refuse a combination that is not built (before anything touches the state dir)."""
    problems = []
    if cfg.mode not in MODES_BUILT:
        problems.append(f"config key 'mode': {_q(cfg.mode)} is not built (exists: "
                        f"{', '.join(map(_q, MODES_BUILT))})")
    if cfg.feed.source not in SOURCES_BUILT:
        problems.append(f"config key 'feed.source': {_q(cfg.feed.source)} is not built yet "
                        f"(exists today: {', '.join(map(_q, SOURCES_BUILT))})")
    if cfg.feed.source == "binance" and not cfg.feed.symbols:
        problems.append("config key 'feed.symbols': with feed.source = \"binance\" name the "
                        "symbols to trade (e.g. [\"BTCUSDT\", \"ETHUSDT\"]); got none")
    if not problems and (cfg.mode, cfg.feed.source) not in BUILT:
        problems.append(f"config keys 'mode' and 'feed.source': {_q(cfg.mode)} with "
                        f"{_q(cfg.feed.source)} is not built yet (exists today: "
                        + ", ".join(f"{_q(m)} with {_q(s)}" for m, s in sorted(BUILT)) + ")")
    if problems:
        raise VenueError("; ".join(problems))


def build_venue(cfg: Config, state_dir: Path, symbols: list[str],
                start_ms: int | None = None, end_ms: int | None = None,
                credentials: Any = None) -> tuple[BarSource, Broker, Clock]:
    """(bar source, broker, clock) for the config; VenueError for what is not built.

    The Binance source still needs `await source.prepare(conn)` before its first step
    (symbols checked, instruments, warm-up), and the live broker `await
    broker.prepare(instruments)` (account setup); `end_ms` ends the feed after that open
    time. `credentials`: runtime.secrets.Credentials, required for live."""
    check_venue(cfg)
    broker: Broker = PaperBroker(cfg.account.balances, CostModel.from_config(cfg.costs))
    if cfg.feed.source == "binance":
        from qtraderd.venues.binance.feed import BinanceSource

        speed = 1.0 if math.isinf(cfg.feed.speed) else cfg.feed.speed
        clock = LiveClock(speed)
        if cfg.mode == "live":
            broker = _live_broker(cfg, credentials, clock)
        return BinanceSource.from_config(cfg, symbols, clock, end_ms, state_dir), broker, clock
    source = ReplaySource(state_dir, symbols, cfg.feed.interval, start_ms, end_ms)
    return source, broker, ReplayClock()


def _live_broker(cfg: Config, credentials: Any, clock: LiveClock) -> Broker:
    if credentials is None:
        raise VenueError('mode = "live" needs Binance API credentials (README: Secrets)')
    from qtraderd.venues.binance.broker import BinanceBroker
    from qtraderd.venues.binance.rest import RestClient
    from qtraderd.venues.binance.signing import ApiCredentials
    from qtraderd.venues.binance.userstream import UserStream

    # signed on the same local clock as the feed's requests (at the simulator's speed)
    rest = RestClient.from_config(cfg, now_ms=clock.local_ms,
                                  credentials=ApiCredentials(credentials.api_key,
                                                             credentials.api_secret))
    return BinanceBroker(
        rest, {}, interval_ms=INTERVAL_MS[cfg.feed.interval],
        stream=UserStream.from_config(cfg, rest), working_type=cfg.exchange.working_type,
        unknown_positions=cfg.reconcile.unknown_positions, leverage=cfg.sizing.leverage,
        default_barriers=(cfg.sizing.take_profit_pct / 100, cfg.sizing.stop_loss_pct / 100),
        margin_type=cfg.exchange.margin_type)
