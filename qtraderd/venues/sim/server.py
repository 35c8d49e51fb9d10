"""`SimServer`: the exchange simulator as an object a Trio program (or test) runs.

    sim = SimServer(load_market(csv=[path]), speed=3000, faults="drop=0.01", seed=1)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)      # listening; the sim clock has started
                                                   # (paused=True: at sim.resume())
        ...  # base_url = sim.url, ws_url = sim.ws_url
        sim.set_faults("http429=1")                # change faults while it runs
        await sim.data_ended.wait()                # the last candle has closed
        nursery.cancel_scope.cancel()

REST and WebSocket share one port on 127.0.0.1. The schedule task turns sim time into
kline frames: `updates_per_candle` open updates at even fractions of each candle, then
exactly one closed kline (`"x": true`) when sim time reaches its close.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import trio

from qtraderd.venues.sim.account import Account, AccountApi, Auth, new_key_pair
from qtraderd.venues.sim.algo import AlgoApi
from qtraderd.venues.sim.candles import (
    Market,
    SimClock,
    SimInputError,
    build_market,
    kline_event,
    load_csv,
    load_store,
    partial,
)
from qtraderd.venues.sim.faults import Faults, FaultSpec
from qtraderd.venues.sim.funding import DEFAULT_FUNDING_INTERVAL_H, DEFAULT_FUNDING_RATE, Funding
from qtraderd.venues.sim.orders import DEFAULT_SLIPPAGE_BPS, DEFAULT_TAKER_FEE, OrderApi
from qtraderd.venues.sim.rest import WEIGHT_LIMIT, Rest
from qtraderd.venues.sim.streams import Hub, StreamOptions
from qtraderd.venues.sim.transport import Request, Response, WebSocket, serve_connection
from qtraderd.venues.sim.userstream import LISTEN_KEY_VALIDITY_S, UserEvents

log = logging.getLogger("qtraderd.sim")


def load_market(*, csv: list[Path] | None = None, state_dir: Path | None = None,
                symbols: list[str] | None = None, interval: str | None = None,
                start_ms: int | None = None, end_ms: int | None = None) -> Market:
    """Candles from CSV files or a state directory's store, cut to [start, end).
    Raises SimInputError naming the bad input."""
    if (csv is None) == (state_dir is None):
        raise SimInputError("give either --csv FILE... or --state-dir DIR")
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise SimInputError("--end: must come after --start")
    if csv is not None:
        interval, candles = load_csv([Path(p) for p in csv], interval)
        if symbols:
            unknown = [s for s in symbols if s not in candles]
            if unknown:
                raise SimInputError(f"--symbols: unknown symbol {unknown[0]} (the files "
                                    f"hold {', '.join(sorted(candles))})")
            candles = {s: candles[s] for s in symbols}
    else:
        assert state_dir is not None
        interval = interval or "5m"
        candles = load_store(Path(state_dir), interval, symbols, end_ms)
    return build_market(candles, interval, start_ms, end_ms, state_dir)


class SimServer:
    """The simulator. Attributes for callers: `port`, `url`, `ws_url` (after start),
    `data_ended` (trio.Event), `faults` (its `counts`), `rest`, `hub`, `clock`,
    `account` (balances, positions, settings; see account.py), `algo_api` (algo orders;
    see algo.py), `api_key`, `api_secret`, `user_events` (listenKeys, private streams,
    `publish`; see userstream.py), `funding` (settlements in sim time; funding.py)."""

    def __init__(self, market: Market, *, speed: float = 1.0, port: int = 0,
                 host: str = "127.0.0.1", faults: FaultSpec | str | None = None,
                 seed: int = 0, stream_options: StreamOptions | None = None,
                 updates_per_candle: int = 3, weight_limit: int = WEIGHT_LIMIT,
                 paused: bool = False, hold: bool = False, api_key: str | None = None,
                 api_secret: str | None = None,
                 balances: dict[str, float] | None = None,
                 slippage_bps: float = DEFAULT_SLIPPAGE_BPS,
                 taker_fee: float = DEFAULT_TAKER_FEE,
                 listen_key_validity_s: float = LISTEN_KEY_VALIDITY_S,
                 funding_interval_h: float = DEFAULT_FUNDING_INTERVAL_H,
                 funding_rate: float = DEFAULT_FUNDING_RATE) -> None:
        """`paused`: the clock starts at `resume()`; `hold`: it starts with the first
        connection (REST or stream), so a client started after the simulator misses no
        live candle, yet never sees a clock that stands still after it has looked.
        `api_key`/`api_secret`: the pair signed requests must use (both None: a random
        pair, `key_generated` True); `balances`: the account's assets (default USDT
        10000); `slippage_bps`/`taker_fee`: MARKET fills (orders.py);
        `listen_key_validity_s`: a listenKey's life after its last keep-alive (wall);
        `funding_interval_h`/`funding_rate`: funding settlements in sim time (funding.py)."""
        if not speed > 0:
            raise SimInputError(f"--speed: expected a number > 0, got {speed}")
        self.market = market
        self.speed = speed
        self.host = host
        self.port = port
        self.updates_per_candle = updates_per_candle
        self.clock = SimClock(market.start_ms, speed)
        self.faults = Faults(faults, seed)
        self.options = stream_options or StreamOptions()
        self.rest = Rest(market, self.clock, self.faults, weight_limit)
        self.hub = Hub(self.options, self.faults)
        if (api_key is None) != (api_secret is None):
            raise SimInputError("--api-key and --api-secret: give both or neither")
        self.key_generated = api_key is None
        if api_key is None or api_secret is None:
            api_key, api_secret = new_key_pair()
        if not api_key or not api_secret:
            raise SimInputError("--api-key/--api-secret: must not be empty")
        self.api_key, self.api_secret = api_key, api_secret
        self.account = Account(market, self.clock,
                               **({"balances": dict(balances)} if balances else {}))
        auth = Auth(api_key, api_secret, self.clock, speed)
        self.account_api = AccountApi(self.rest, self.account, auth)
        if not (0 <= slippage_bps < 10_000 and 0 <= taker_fee < 1):
            raise SimInputError(f"--slippage-bps/--taker-fee: expected 0 <= bps < 10000 "
                                f"and 0 <= fee < 1, got {slippage_bps} and {taker_fee}")
        self.user_events = UserEvents(self.clock, self.faults, api_key,
                                      validity_s=listen_key_validity_s)
        self.user_events.add_routes(self.rest)
        self.order_api = OrderApi(self.rest, self.account, auth,
                                  slippage_bps=slippage_bps, taker_fee=taker_fee,
                                  publish=self.user_events.publish, faults=self.faults)
        # algo orders trigger on the kline updates _schedule publishes; their ALGO_UPDATE
        # events go to the account's user data streams
        self.algo_api = AlgoApi(self.rest, self.account, auth, self.order_api,
                                publish=self.user_events.publish)
        if not funding_interval_h > 0:
            raise SimInputError(f"--funding-interval-h: expected hours > 0, got "
                                f"{funding_interval_h}")
        self.funding = Funding(self.account, self.user_events.publish,
                               interval_h=funding_interval_h, rate=funding_rate)
        self.account.extra_state.update(faults=lambda: dict(self.faults.counts),
                                        funding=self.funding.state)
        self.data_ended = trio.Event()
        self.frozen = False  # POST /sim/freeze: the market stops where it is (tests)
        self.rest.add_route("POST", "/sim/freeze", self._freeze, 0)
        self.paused = paused or hold
        self.hold = hold
        self._resumed = trio.Event()
        self.closed_klines = 0  # closed kline events published (per symbol, per candle)

    async def _freeze(self, req: Request) -> Response:
        """Test-only: no candle after the current one — prices stop, nothing triggers any
        more — so a test can compare a stopped daemon's books with the simulator's."""
        self.frozen = True
        return Response.json(200, {"frozen": True})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def set_faults(self, spec: FaultSpec | str | None) -> None:
        """Replace the faults in force (None or "" for none); raises FaultSpecError."""
        self.faults.set(spec)
        log.info("exchange-sim: faults now %s", self.faults.spec)

    def now_ms(self) -> int:
        return self.clock.now_ms()

    def resume(self) -> None:
        """Start the clock of a server made with paused=True (tests connect first, then
        let time run, so no frame can come before they listen)."""
        if not self._resumed.is_set():
            self.clock.begin()
            self._resumed.set()

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen, start the clock, report the port, serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        if not self.paused:
            self.resume()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._connection, listeners)
            nursery.start_soon(self._schedule)
            task_status.started(self.port)

    async def _connection(self, stream: trio.SocketStream) -> None:
        if self.hold:
            self.resume()
        await serve_connection(stream, self.rest.handle, self._websocket)

    async def _websocket(self, req: Request, ws: WebSocket) -> None:
        """`/private/...`: the user data stream; everything else: the market hub."""
        if req.path == "/private" or req.path.startswith("/private/"):
            await self.user_events.handle(req, ws)
        else:
            await self.hub.handle(req, ws)

    async def _schedule(self) -> None:
        """Publish open updates and the closed kline of every live candle, in sim time."""
        await self._resumed.wait()
        m = self.market
        iv = m.interval_ms
        steps = self.updates_per_candle + 1
        cursor = {sym: s.between(m.start_ms, m.start_ms)[0] for sym, s in m.series.items()}
        for t in m.live_times():
            if self.frozen:
                break
            due = []
            for sym, s in m.series.items():
                i = cursor[sym]
                if i < len(s.times) and s.times[i] == t:
                    due.append((s, i, f"{sym.lower()}@kline_{m.interval}"))
                    cursor[sym] = i + 1
            for k in range(1, steps + 1):
                at = t + iv * k // steps
                await trio.sleep_until(self.clock.wall_at(at))
                closed = k == steps
                for s, i, name in due:
                    c = s.candles[i] if closed else partial(s.candles[i], k / steps)
                    payload = kline_event(s, c, m.interval, iv, i, at, closed)
                    self.hub.publish(name, msgspec.json.encode(payload).decode(), closed)
                    self.algo_api.check(s.symbol, c[4], at)
                self.funding.check(at)
                if closed:
                    self.closed_klines += len(due)
        self.data_ended.set()
