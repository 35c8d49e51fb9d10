"""The venue factory: what is built is built; anything else is refused at start (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qtraderd.core.clock import LiveClock, ReplayClock
from qtraderd.core.config import load, with_changes
from qtraderd.venues.binance.feed import BinanceSource
from qtraderd.venues.factory import VenueError, build_venue, check_venue
from qtraderd.venues.paper import PaperBroker
from qtraderd.venues.replay import ReplaySource
from tests.conftest import REPO


def test_paper_with_replay_is_built(tmp_path: Path) -> None:
    source, broker, clock = build_venue(load(env={}), tmp_path, ["ETHBTC"])
    assert isinstance(source, ReplaySource) and source.symbols == ["ETHBTC"]
    assert isinstance(broker, PaperBroker) and isinstance(clock, ReplayClock)


async def test_paper_with_binance_is_built_dry_run(tmp_path: Path) -> None:
    """Dry run: the Binance feed, the same paper broker as a replay, a live clock at the
    configured speed (the simulator's)."""
    cfg = with_changes(load(env={}), feed={"source": "binance", "symbols": ("BTCUSDT",),
                                           "speed": 60.0},
                       exchange={"environment": "custom", "base_url": "http://127.0.0.1:9",
                                 "ws_url": "ws://127.0.0.1:9"})
    source, broker, clock = build_venue(cfg, tmp_path, ["BTCUSDT"])
    assert isinstance(source, BinanceSource) and source.symbols == ("BTCUSDT",)
    assert source.rest.base_url == "http://127.0.0.1:9"
    assert isinstance(broker, PaperBroker)
    assert isinstance(clock, LiveClock) and clock.speed == 60.0 and source.clock is clock
    await source.aclose()


@pytest.mark.parametrize(("changes", "msgs"), [
    ({"mode": "live"}, ["config keys 'mode' and 'feed.source': \"live\" with \"replay\" "
                        "is not built"]),
    ({"feed": {"source": "binance"}}, ["config key 'feed.symbols': with feed.source = "
                                       "\"binance\" name the symbols"]),
])
def test_unbuilt_combinations_are_refused_naming_the_key(changes, msgs) -> None:
    with pytest.raises(VenueError) as err:
        check_venue(with_changes(load(env={}), **changes))
    assert all(m in str(err.value) for m in msgs)


@pytest.mark.parametrize(("toml", "msg"), [
    ('mode = "live"\n', "config keys 'mode' and 'feed.source': \"live\" with \"replay\" "
                        "is not built"),
    ('[feed]\nsource = "binance"\nspeed = 1\n',
     "config key 'feed.symbols': with feed.source = \"binance\" name the symbols"),
])
def test_qtraderd_run_refuses_with_exit_2(tmp_path: Path, toml: str, msg: str) -> None:
    """Live mode on stored candles (with credentials) used to paper-trade silently; it exits
    2 before touching the state dir (so does a Binance feed without symbols)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("QT_") and k != "CREDENTIALS_DIRECTORY"}
    env.update({"QT_BINANCE_API_KEY": "k" * 64, "QT_BINANCE_API_SECRET": "s" * 64})
    out = subprocess.run([sys.executable, "-m", "qtraderd", "run", "--config", str(cfg),
                          "--state-dir", str(tmp_path / "state"), "--models-dir",
                          str(tmp_path / "models")],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert out.returncode == 2, out.stderr
    assert msg in out.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "models").exists()


async def test_examples_sim_toml_is_a_dry_run_on_the_local_simulator(tmp_path: Path) -> None:
    """README "Try live mode locally": the example config builds the dry run against the
    simulator's URLs at the simulator's speed."""
    cfg = load(REPO / "examples" / "sim.toml", env={})
    source, broker, clock = build_venue(cfg, tmp_path, list(cfg.feed.symbols))
    assert isinstance(source, BinanceSource) and isinstance(broker, PaperBroker)
    assert source.rest.base_url == "http://127.0.0.1:8765"
    assert source.stream.ws_url == "ws://127.0.0.1:8765"
    assert isinstance(clock, LiveClock) and clock.speed == cfg.feed.speed == 60
    await source.aclose()
