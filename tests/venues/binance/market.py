"""A small fake Binance USD-M market for the feed tests, on loopback (real sockets).

Several symbols' candles on one exchange clock running at `speed` × Trio time: `history`
bars have closed before the market starts, `live` bars close one by one after it. REST
(`/fapi/v1/time`, `/fapi/v1/exchangeInfo` in the shape of the shared payload,
`/fapi/v1/klines` like Binance: the forming candle included) through `HttpServer`; each
closed kline is pushed on every open stream connection (`WsServer`) when it closes.

Faults the tests steer: `hold` (symbol, open time) pairs never pushed on the stream (they
stay on REST), `delay` pushes a closed kline a number of bars late, `blackout(a, b)`
drops every connection and refuses new ones while bars a..b-1 close. `pushed` counts the
bars pushed so far and `bar_done[k]` is set after bar k's frames went out.

This is not `qtraderd exchange-sim` (the simulator, built separately): just enough
exchange for the feed's own tests, with every fault under the test's control.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from typing import Any

import trio

from tests.conftest import BINANCE
from tests.venues.binance.servers import (
    CLOSED_KLINE,
    HttpServer,
    Reply,
    Seen,
    WsServer,
    kline_frame,
)

INTERVALS = {"1m": 60_000, "5m": 300_000}
T0 = 1_765_000_000_000 - 1_765_000_000_000 % 300_000  # first live bar's open time
VOLUME = CLOSED_KLINE["k"]["v"]
_INFO = json.loads((BINANCE / "http" / "exchange_info.json").read_text())


def price(symbol: str, t: int, step: int) -> float:
    return 100.0 + (t // step) % 50 + 1000.0 * (sum(map(ord, symbol)) % 7)


class Market:
    def __init__(self, symbols: tuple[str, ...], interval: str = "1m", *, history: int = 0,
                 live: int = 10, speed: float = 600.0,
                 statuses: dict[str, str] | None = None, listed: tuple[str, ...] | None = None
                 ) -> None:
        self.symbols = symbols
        self.interval = interval
        self.step = INTERVALS[interval]
        self.history, self.live = history, live
        self.speed = speed
        self.statuses = statuses or {}
        self.listed = symbols if listed is None else listed
        self.first = T0 - history * self.step
        self.end = T0 + live * self.step  # open times < end exist
        self.hold: set[tuple[str, int]] = set()
        self.gone: set[tuple[str, int]] = set()  # holes: on neither the stream nor REST
        self.delay: dict[tuple[str, int], int] = {}
        self._later: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self.blackouts: list[tuple[int, int]] = []
        self.pushed = 0
        self.bar_done = [trio.Event() for _ in range(live)]
        self.http = HttpServer(self._rest)
        self.ws = WsServer()
        self.started: float | None = None

    # ------------------------------------------------------------------ clock
    def now_ms(self) -> int:
        if self.started is None:
            return T0
        return int(T0 + (trio.current_time() - self.started) * 1000 * self.speed)

    def at(self, t_ms: int) -> float:
        assert self.started is not None
        return self.started + (t_ms - T0) / 1000 / self.speed

    def open_time(self, k: int) -> int:
        """Open time of live bar k (0-based)."""
        return T0 + k * self.step

    def all_bars(self, start: int | None = None) -> set[tuple[str, int]]:
        first = self.first if start is None else max(self.first, start)
        return {(s, t) for s in self.symbols for t in range(first, self.end, self.step)}

    # ------------------------------------------------------------------ servers
    async def start(self, nursery: trio.Nursery, *, run: bool = True) -> Market:
        await self.http.start(nursery)
        await self.ws.start(nursery)
        if run:
            self.run(nursery)
        return self

    def run(self, nursery: trio.Nursery) -> None:
        """Start the exchange clock and the pusher."""
        self.started = trio.current_time()
        nursery.start_soon(self._pusher)

    def blackout(self, first_bar: int, end_bar: int) -> None:
        self.blackouts.append((first_bar, end_bar))

    def row(self, symbol: str, t: int) -> list[Any]:
        p = price(symbol, t, self.step)
        return [t, f"{p:.2f}", f"{p + 1:.2f}", f"{p - 1:.2f}", f"{p + 0.5:.2f}", VOLUME,
                t + self.step - 1, "1250.0", 42, "6.0", "600.0", "0"]

    def frame(self, symbol: str, t: int) -> str:
        return kline_frame(symbol, self.interval, t, price=price(symbol, t, self.step))

    def info(self) -> dict[str, Any]:
        template = _INFO["symbols"][0]
        out = copy.deepcopy(_INFO)
        out["serverTime"] = self.now_ms()
        out["symbols"] = []
        for s in self.listed:
            entry = copy.deepcopy(template)
            entry.update({"symbol": s, "pair": s, "baseAsset": s[:-4], "quoteAsset": "USDT",
                          "status": self.statuses.get(s, "TRADING")})
            out["symbols"].append(entry)
        return out

    def _rest(self, seen: Seen) -> Reply:
        now = self.now_ms()
        if seen.path == "/fapi/v1/time":
            return Reply(body={"serverTime": now})
        if seen.path == "/fapi/v1/exchangeInfo":
            return Reply(body=self.info())
        if seen.path != "/fapi/v1/klines":
            return Reply(404, {"code": -1, "msg": "no such path"})
        q = seen.query
        sym = q.get("symbol", "")
        if sym not in self.symbols:
            return Reply(400, {"code": -1121, "msg": "Invalid symbol."})
        start = max(int(q.get("startTime", 0)), self.first)
        end = min(int(q.get("endTime", 2**62)), now, self.end - 1)
        limit = int(q.get("limit", 500))
        first = start + (-(start - self.first)) % self.step
        rows = [self.row(sym, t) for t in range(first, end + 1, self.step)
                if (sym, t) not in self.gone][:limit]
        return Reply(body=rows)

    def _dark(self, k: int) -> bool:
        return any(a <= k < b for a, b in self.blackouts)

    async def _pusher(self) -> None:
        for k in range(self.live):
            t = self.open_time(k)
            await trio.sleep_until(self.at(t + self.step))
            if self._dark(k):
                self.ws.refuse = 10**6
                for ws in self.ws.open_conns():
                    await WsServer.abort(ws)
            else:
                self.ws.refuse = 0
                for s in self.symbols:
                    key = (s, t)
                    if key in self.hold or key in self.gone:
                        continue
                    if key in self.delay:
                        self._later[k + self.delay[key]].append(key)
                        continue
                    await self.ws.send_all(self.frame(s, t))
            for s, t_late in self._later.pop(k, []):
                await self.ws.send_all(self.frame(s, t_late))
            self.pushed = k + 1
            self.bar_done[k].set()
        self.ws.refuse = 0
