"""The simulator's REST side: `/fapi/v1/time`, `/fapi/v1/exchangeInfo`, `/fapi/v1/klines`,
with Binance's request weights, its 429/418 answers and the REST faults.

Weight is counted per minute of the simulator's clock once it runs (of wall time before),
like Binance's `X-MBX-USED-WEIGHT-1M`, which every answer carries: a client reads its
minutes off the exchange clock, so a sped-up simulator must count in the same minutes.
Over the limit a request gets 429 with `Retry-After` (wall seconds to the next minute).
Errors use Binance's body
`{"code": -NNNN, "msg": "..."}` with its codes: -1121 unknown symbol, -1120 bad interval,
-1102 missing parameter, -1100 malformed number, -1130 bad limit, -1023 start after end.
Orders placed (POST /fapi/v1/order, /fapi/v1/algoOrder) are also counted per account in
10 s and 1 min windows of the same clock (`OrderMeter`, Binance's 300 / 1,200), reported in
`X-MBX-ORDER-COUNT-10S` / `-1M` on those answers; over a limit: 429, -1015.
`add_route` lets the account, order, algo-order and user-stream modules serve their paths
through the same weight, fault and error handling.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from qtraderd.venues.sim.candles import Market, SimClock, kline_row, partial
from qtraderd.venues.sim.faults import Faults
from qtraderd.venues.sim.transport import Request, Response

# Every interval Binance knows; the simulator serves one of them.
BINANCE_INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
                     "1d", "3d", "1w", "1M")
KLINES_DEFAULT_LIMIT, KLINES_MAX_LIMIT = 500, 1500
WEIGHT_LIMIT = 2400  # request weight per minute per IP (USD-M and COIN-M together)
ORDER_LIMITS = (300, 1200)  # orders per 10 s and per minute per account
ORDER_ROUTES = frozenset({("POST", "/fapi/v1/order"), ("POST", "/fapi/v1/algoOrder")})

Handler = Callable[[Request], Awaitable[Response]]
WeightFn = Callable[[Request], int]


class ApiError(Exception):
    """A Binance error answer: HTTP status, code, message."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg
        self.retry_after = 0  # seconds, for a 429


def klines_weight(limit: int) -> int:
    """Binance's weight of GET /fapi/v1/klines by its limit."""
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    return 5 if limit <= 1000 else 10


def _window(clock: SimClock | None, span_s: int) -> int:
    """The current `span_s` window: of the simulator's clock once it runs (so a sped-up
    simulator's minute is the exchange minute its clients see), of wall time before."""
    if clock is None or clock.t0 is None:
        return int(trio.current_time() // span_s)
    return -1 - clock.now_ms() // (span_s * 1000)  # negative: never a wall window


def _left_s(clock: SimClock | None, span_s: int) -> int:
    """Whole wall seconds until the current window rolls (for Retry-After), at least 1."""
    if clock is None or clock.t0 is None:
        return max(1, math.ceil(span_s - trio.current_time() % span_s))
    left_ms = span_s * 1000 - clock.now_ms() % (span_s * 1000)
    return max(1, math.ceil(left_ms / 1000 / clock.speed))


class WeightMeter:
    """Request weight used in the current minute (of the simulator's clock)."""

    def __init__(self, limit: int = WEIGHT_LIMIT, clock: SimClock | None = None) -> None:
        self.limit = limit
        self.clock = clock
        self.minute = 0
        self.used = 0

    def add(self, weight: int) -> int:
        minute = _window(self.clock, 60)
        if minute != self.minute:
            self.minute, self.used = minute, 0
        self.used += weight
        return self.used

    def current(self) -> int:
        return self.used if _window(self.clock, 60) == self.minute else 0

    def retry_after(self) -> int:
        return _left_s(self.clock, 60)


class OrderMeter:
    """Orders placed in the current 10 s and 1 min windows (of the simulator's clock).
    `limits` may be lowered by tests."""

    SPANS = (10, 60)

    def __init__(self, limits: tuple[int, int] = ORDER_LIMITS,
                 clock: SimClock | None = None) -> None:
        self.limits = limits
        self.clock = clock
        self.windows = [0, 0]
        self.counts = [0, 0]

    def _roll(self) -> None:
        for i, span in enumerate(self.SPANS):
            w = _window(self.clock, span)
            if w != self.windows[i]:
                self.windows[i], self.counts[i] = w, 0

    def add(self) -> ApiError | None:
        """Count one order; None if accepted, else Binance's refusal (-1015, the order is
        not counted) with the seconds until the full window rolls as `retry_after`."""
        self._roll()
        for i, span in enumerate(self.SPANS):
            if self.counts[i] + 1 > self.limits[i]:
                err = ApiError(429, -1015, f"Too many new orders; current limit is "
                                           f"{self.limits[i]} orders per "
                                           f"{('TEN_SECONDS', 'MINUTE')[i]}.")
                err.retry_after = _left_s(self.clock, span)
                return err
        self.counts = [c + 1 for c in self.counts]
        return None

    def headers(self) -> list[tuple[str, str]]:
        self._roll()
        return [("X-MBX-ORDER-COUNT-10S", str(self.counts[0])),
                ("X-MBX-ORDER-COUNT-1M", str(self.counts[1]))]


@dataclass
class Route:
    handler: Handler
    weight: WeightFn


class Rest:
    """Routes, weights and REST faults over one `Market`."""

    def __init__(self, market: Market, clock: SimClock, faults: Faults,
                 weight_limit: int = WEIGHT_LIMIT) -> None:
        self.market = market
        self.clock = clock
        self.faults = faults
        self.weights = WeightMeter(weight_limit, clock)
        self.orders = OrderMeter(clock=clock)
        self.banned_until = 0.0  # trio time; an http418 fault bans every request until then
        self.requests = 0
        self.routes: dict[tuple[str, str], Route] = {}
        self.add_route("GET", "/fapi/v1/time", self.time)
        self.add_route("GET", "/fapi/v1/exchangeInfo", self.exchange_info)
        self.add_route("GET", "/fapi/v1/klines", self.klines, self._klines_weight)
        self.add_route("GET", "/fapi/v1/ping", self.ping)

    def add_route(self, method: str, path: str, handler: Handler,
                  weight: int | WeightFn = 1) -> None:
        fn = weight if callable(weight) else (lambda _req, w=weight: w)
        self.routes[(method.upper(), path)] = Route(handler, fn)

    async def handle(self, req: Request) -> Response:
        self.requests += 1
        try:
            resp = await self._dispatch(req)
        except ApiError as exc:
            resp = Response.json(exc.status, {"code": exc.code, "msg": exc.msg})
        resp.headers.append(("X-MBX-USED-WEIGHT-1M", str(self.weights.current())))
        if (req.method, req.path) in ORDER_ROUTES:
            resp.headers.extend(self.orders.headers())
        return resp

    async def _dispatch(self, req: Request) -> Response:
        route = self.routes.get((req.method, req.path))
        if route is None:
            methods = sorted(m for m, p in self.routes if p == req.path)
            if methods:
                raise ApiError(405, -1000, f"{req.method} {req.path} is not supported "
                                           f"({', '.join(methods)}).")
            raise ApiError(404, -5000, f"Path {req.path}, Method {req.method} is invalid")
        if req.path.startswith("/sim/"):  # the test-only view: no faults, no weight
            return await route.handler(req)
        now = trio.current_time()
        if now < self.banned_until:
            return self._banned()
        if f := self.faults.roll("http418"):
            self.banned_until = now + f.duration_s
            return self._banned()
        if f := self.faults.roll("http429"):
            return self._too_many(max(1, math.ceil(f.duration_s)))
        if self.faults.roll("http5xx"):
            status = self.faults.choice([500, 502, 503, 504])
            return Response.json(status, {"code": -1001, "msg": "Internal error; unable to "
                                          "process your request. Please try again."})
        if f := self.faults.roll("slow"):
            await trio.sleep(f.duration_s)
        try:
            weight = route.weight(req)
        except ApiError:
            weight = 1
        if self.weights.add(weight) > self.weights.limit:
            return self._too_many(self.weights.retry_after())
        if (req.method, req.path) in ORDER_ROUTES and (err := self.orders.add()):
            return Response.json(err.status, {"code": err.code, "msg": err.msg},
                                 [("Retry-After", str(err.retry_after))])
        return await route.handler(req)

    def _banned(self) -> Response:
        left = max(1, math.ceil(self.banned_until - trio.current_time()))
        until = self.clock.now_ms() + left * 1000
        return Response.json(418, {"code": -1003, "msg": f"Way too many requests; IP banned "
                                   f"until {until}. Please use the websocket for live updates "
                                   f"to avoid bans."}, [("Retry-After", str(left))])

    def _too_many(self, retry_after: int) -> Response:
        return Response.json(429, {"code": -1003, "msg": f"Too many requests; current limit "
                                   f"of IP request weight per minute is {self.weights.limit}. "
                                   f"Please use WebSocket Streams for live updates to avoid "
                                   f"polling the API."}, [("Retry-After", str(retry_after))])

    # ----------------------------------------------------------------------- endpoints

    async def ping(self, req: Request) -> Response:
        return Response.json(200, {})

    async def time(self, req: Request) -> Response:
        return Response.json(200, {"serverTime": self.clock.now_ms()})

    async def exchange_info(self, req: Request) -> Response:
        return Response.json(200, exchange_info(self.market, self.clock.now_ms(),
                                                self.weights.limit))

    def _klines_weight(self, req: Request) -> int:
        return klines_weight(_int_param(req, "limit", KLINES_DEFAULT_LIMIT))

    async def klines(self, req: Request) -> Response:
        symbol = _required(req, "symbol")
        interval = _required(req, "interval")
        series = self.market.series.get(symbol)
        if series is None:
            raise ApiError(400, -1121, "Invalid symbol.")
        if interval not in BINANCE_INTERVALS:
            raise ApiError(400, -1120, "Invalid interval.")
        if interval != self.market.interval:
            raise ApiError(400, -1120, f"Invalid interval. (exchange-sim serves "
                                       f"{self.market.interval} only)")
        limit = _int_param(req, "limit", KLINES_DEFAULT_LIMIT)
        if not 1 <= limit <= KLINES_MAX_LIMIT:
            raise ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        start = _int_param(req, "startTime", None)
        end = _int_param(req, "endTime", None)
        if start is not None and end is not None and start > end:
            raise ApiError(400, -1023, "Start time is greater than end time.")
        now = self.clock.now_ms()
        hi = now if end is None else min(end, now)  # nothing opens after sim time
        i, j = series.between(start if start is not None else -(2**62), hi)
        if start is not None:
            j = min(j, i + limit)
        else:
            i = max(i, j - limit)
        iv = self.market.interval_ms
        rows = []
        for c in series.candles[i:j]:
            frac = (now - c[0]) / iv
            rows.append(kline_row(series, partial(c, frac), iv))
        return Response.json(200, rows)


def _required(req: Request, name: str) -> str:
    value = req.query.get(name, "")
    if not value:
        raise ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent, was "
                                   f"empty/null, or malformed.")
    return value


def _int_param(req: Request, name: str, default: int | None) -> int:
    text = req.query.get(name)
    if text is None or text == "":
        return default  # type: ignore[return-value]
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; legal "
                                   f"range is '^[0-9]{{1,20}}$'.")
    return int(text)


def exchange_info(market: Market, now_ms: int, weight_limit: int) -> dict[str, object]:
    """The `GET /fapi/v1/exchangeInfo` answer (http/exchange_info.json) for the served
    symbols: all PERPETUAL and TRADING, filters from the candles or instruments.toml."""
    symbols = []
    quotes: list[str] = []
    for s in market.series.values():
        if s.quote not in quotes:
            quotes.append(s.quote)
        max_qty = "1000000"
        symbols.append({
            "symbol": s.symbol, "pair": s.symbol, "contractType": "PERPETUAL",
            "deliveryDate": 4133404802000, "onboardDate": s.times[0], "status": "TRADING",
            "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
            "baseAsset": s.base, "quoteAsset": s.quote, "marginAsset": s.quote,
            "pricePrecision": s.price_decimals, "quantityPrecision": s.qty_decimals,
            "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN",
            "underlyingSubType": [], "settlePlan": 0, "triggerProtect": "0.0500",
            "liquidationFee": "0.012500", "marketTakeBound": "0.05",
            "filters": [
                {"minPrice": s.price(s.tick_size), "maxPrice": s.price(1_000_000),
                 "filterType": "PRICE_FILTER", "tickSize": s.price(s.tick_size)},
                {"stepSize": s.qty(s.step_size), "filterType": "LOT_SIZE", "maxQty": max_qty,
                 "minQty": s.qty(s.min_qty)},
                {"stepSize": s.qty(s.step_size), "filterType": "MARKET_LOT_SIZE",
                 "maxQty": max_qty, "minQty": s.qty(s.min_qty)},
                {"limit": 200, "filterType": "MAX_NUM_ORDERS"},
                {"limit": 10, "filterType": "MAX_NUM_ALGO_ORDERS"},
                {"notional": f"{s.min_notional:g}", "filterType": "MIN_NOTIONAL"},
                {"multiplierDown": "0.9500", "multiplierUp": "1.0500",
                 "multiplierDecimal": "4", "filterType": "PERCENT_PRICE"},
            ],
            "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT",
                           "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
            "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
        })
    return {
        "timezone": "UTC", "serverTime": now_ms, "futuresType": "U_MARGINED",
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": weight_limit},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1,
             "limit": 1200},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10,
             "limit": 300},
        ],
        "exchangeFilters": [],
        "assets": [{"asset": q, "marginAvailable": True, "autoAssetExchange": "-100"}
                   for q in quotes],
        "symbols": symbols,
    }
