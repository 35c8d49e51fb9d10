"""The exchange simulator started in the test's nursery (real sockets on loopback)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from qtraderd.venues.sim import SimServer, load_market
from tests.venues.sim.sim_helpers import TIMES, XRP

StartSim = Callable[..., Awaitable[SimServer]]


@pytest.fixture
def start_sim(nursery: trio.Nursery) -> StartSim:
    """`await start_sim(live=N, **SimServer kwargs)`: XRPUSDT (plus `extra` copies of its
    file under other names) with the last N candles live, started in the test nursery."""

    async def start(live: int = 6, csv_files: list[Path] | None = None,
                    **kw: Any) -> SimServer:
        market = load_market(csv=csv_files or [XRP], start_ms=TIMES[-live])
        sim = SimServer(market, **kw)
        await nursery.start(sim.serve)
        return sim

    return start
