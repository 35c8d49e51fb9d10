"""The Binance USD-M REST client: market data (server time, exchangeInfo, klines) and
signed requests (`signed()`, for orders and account calls).

One `httpx.AsyncClient` per process, and the exchange's rules kept so that it never gets
banned:
* Request weight. Binance counts weight per IP per minute (2,400 on production, stated in
  exchangeInfo's `rateLimits`) and reports what is used in `X-MBX-USED-WEIGHT-1M`. Each
  request reserves its known weight first; when the minute's budget (the limit less a
  margin) would be exceeded, the request waits for the next minute instead of being sent.
* Order rate. Binance counts orders placed per account, 300 per 10 s and 1,200 per minute
  (BINANCE.md), and reports them in `X-MBX-ORDER-COUNT-10S` / `-1M` on order answers.
  Each order request (POST /fapi/v1/order, /fapi/v1/algoOrder, /fapi/v1/batchOrders)
  reserves one of each first; a reservation that would pass either budget (the limit less
  `order_margin`) waits for the window to roll. The headers' figures are adopted when
  larger: another process on the same account counts too.
* `429` (too many requests) pauses every call for `Retry-After` seconds, then retries.
* `418` (IP banned, after ignoring 429s) stops every call until the ban ends: one error
  line when it starts, one line when calls resume. Hammering a banned IP lengthens the ban.
* Timeouts, transport errors, `408` and `5xx` are retried with exponential backoff and seeded
  jitter, `max_attempts` in all, then `RestUnavailable` names the request and the last
  failure. That is safe for GET, PUT and DELETE (a cancel retried after a lost reply may
  answer `-2011` unknown order: the first one worked).
* A signed POST (placing an order) is NEVER retried after a timeout, a dropped connection,
  `408` or `5xx`: Binance says the execution status is then UNKNOWN, and a blind retry
  could place the order twice. `RestUncertain` is raised instead; the caller looks the order
  up by the client id it chose (and stored) before sending. Only failures that prove the
  request never left (connection refused, connect timeout) are retried for a POST.
* Any other `4xx` is the caller's mistake: `BinanceAPIError` carries Binance's code and msg.
  Except `-1021` on a signed request (timestamp outside recvWindow: our estimate of the
  exchange clock drifted): the clock is measured again and the request re-signed and sent
  once more; a second `-1021` raises.

Signed requests (qtraderd.venues.binance.signing): `timestamp` from `server_now_ms()`,
`recvWindow` from config, `X-MBX-APIKEY`. No message this client writes (logs, exceptions,
`last_error`) contains a query string; all of them also pass through `signing.redact`, in
case httpx or a proxy's error page quotes the URL with its signature.

Time: `now_ms` (injectable) is this machine's epoch ms; `server_time()` measures the
exchange clock's offset from it (logged when it moves by `offset_log_ms` or more), and
`server_now_ms()` is the exchange's "now" — what decides whether a candle is closed.
Waiting uses Trio's clock, so tests can run with `trio.testing.MockClock`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import trio

from qtraderd.core.clock import iso
from qtraderd.venues.binance.payloads import (
    ExchangeInfo,
    Kline,
    PayloadError,
    parse_error,
    parse_exchange_info,
    parse_klines,
    parse_server_time,
)
from qtraderd.venues.binance.signing import ApiCredentials, install_log_redaction, redact

log = logging.getLogger("qtraderd.binance.rest")

__all__ = ["KLINES_PAGE", "BinanceAPIError", "PayloadError", "RestClient", "RestError",
           "RestUnavailable", "RestUncertain", "klines_weight"]

KLINES_PAGE = 1500  # Binance's largest `limit` for /fapi/v1/klines
WEIGHT_HEADER = "x-mbx-used-weight-1m"
ORDER_HEADERS = ("x-mbx-order-count-10s", "x-mbx-order-count-1m")
ORDER_WINDOWS_MS = (10_000, 60_000)
# Requests that place orders (and count against the account's order rate).
ORDER_PATHS = frozenset({"/fapi/v1/order", "/fapi/v1/algoOrder", "/fapi/v1/batchOrders"})
# Known request weights (Binance USD-M docs); klines' depends on `limit`.
WEIGHTS = {"/fapi/v1/time": 1, "/fapi/v1/exchangeInfo": 1, "/fapi/v1/ping": 1}
METHODS = ("GET", "POST", "PUT", "DELETE")
TIMESTAMP_OUTSIDE_RECV_WINDOW = -1021
# Failures after which the request certainly never reached the server: safe to resend.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def klines_weight(limit: int) -> int:
    """Weight of GET /fapi/v1/klines: 1 below 100 rows, 2 below 500, 5 up to 1000, else 10."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


class RestError(Exception):
    """A REST call that did not produce an answer."""


class BinanceAPIError(RestError):
    """Binance refused the request (a 4xx other than 418/429): its code and msg."""

    def __init__(self, path: str, status: int, code: int, msg: str, method: str = "GET"
                 ) -> None:
        super().__init__(f"{method} {path}: HTTP {status}, Binance error {code}: {msg}")
        self.path, self.status, self.code, self.msg = path, status, code, msg
        self.method = method


class RestUnavailable(RestError):
    """Retries exhausted (timeouts, transport errors, 5xx)."""


class RestUncertain(RestError):
    """A signed POST may or may not have been executed (timeout, dropped connection, 408 or
    5xx after it was sent). Never resend it as is: look the order up by its client id
    (`newClientOrderId` / `clientAlgoId`) and act on what the exchange knows."""

    def __init__(self, method: str, path: str, failure: str) -> None:
        super().__init__(f"{method} {path}: outcome unknown ({failure}); look the order up "
                         "by its client id before anything is resent")
        self.method, self.path, self.failure = method, path, failure


def _wall_ms() -> int:
    return int(time.time() * 1000)


class RestClient:
    """Market-data REST calls with weight throttling, 429/418 handling and retries.

    Use as `async with RestClient(base_url) as rest: ...` (or call `aclose()`); one
    instance per process shares the weight budget among all callers.
    """

    def __init__(self, base_url: str, *, weight_limit: int = 2400,
                 weight_margin: float = 0.1, timeout_s: float = 10.0, max_attempts: int = 5,
                 backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 ban_default_s: float = 120.0, seed: int = 0,
                 now_ms: Callable[[], int] = _wall_ms, offset_log_ms: int = 500,
                 credentials: ApiCredentials | None = None, recv_window: int = 5000,
                 order_limit_10s: int = 300, order_limit_1m: int = 1200,
                 order_margin: float = 0.1) -> None:
        self.base_url = base_url.rstrip("/")
        self.weight_limit = weight_limit
        self.weight_margin = weight_margin
        self.max_attempts = max_attempts
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.ban_default_s = ban_default_s
        self.now_ms = now_ms
        self.offset_log_ms = offset_log_ms
        self._rng = random.Random(seed)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s,
                                       headers={"Accept": "application/json"})
        self.offset_ms: int | None = None  # exchange clock - local clock
        self.trip_ms = 0  # round trip of the measurement behind offset_ms
        self._window = -1  # exchange minute the weight figures belong to
        self._used = 0  # weight used in that minute: the header's figure + our reservations
        self._blocked_until = 0.0  # trio time before which no request is sent (429 / 418)
        self._banned = False
        self.requests = self.retries = self.throttled = self.rate_limited = self.bans = 0
        self.last_error: str | None = None
        self.credentials = credentials
        self.recv_window = recv_window
        self.resyncs = 0  # clock re-measured after -1021
        self.order_limits = (order_limit_10s, order_limit_1m)
        self.order_margin = order_margin
        self._order_windows = [-1, -1]  # exchange 10 s / minute windows of the counts
        self._orders = [0, 0]  # orders placed in them: headers' figures + our reservations
        self.orders_throttled = 0
        if credentials is not None:
            install_log_redaction()

    @classmethod
    def from_config(cls, cfg: Any, **kwargs: Any) -> RestClient:
        """From a Config: `exchange.rest_url` and `recv_window`, the config's seed for the
        jitter; pass `credentials=ApiCredentials(...)` for signed requests."""
        kwargs.setdefault("recv_window", cfg.exchange.recv_window)
        return cls(cfg.exchange.rest_url, seed=cfg.seed, **kwargs)

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------- public calls

    def server_now_ms(self) -> int:
        """The exchange's clock now (local clock + the last measured offset)."""
        return self.now_ms() + (self.offset_ms or 0)

    async def server_time(self) -> int:
        """GET /fapi/v1/time; updates the clock offset (midpoint of the round trip)."""
        t0 = self.now_ms()
        body = await self._get("/fapi/v1/time")
        t1 = self.now_ms()
        server = parse_server_time(body)
        offset = server - (t0 + t1) // 2
        if self.offset_ms is None or abs(offset - self.offset_ms) >= self.offset_log_ms:
            log.info("exchange clock offset %+d ms (round trip %d ms)", offset, t1 - t0)
        self.offset_ms = offset
        self.trip_ms = max(0, t1 - t0)
        return server

    async def exchange_info(self) -> ExchangeInfo:
        """GET /fapi/v1/exchangeInfo: symbols with status and filters. Adopts the stated
        request-weight limit (lower on production than on testnet)."""
        info = parse_exchange_info(await self._get("/fapi/v1/exchangeInfo"))
        if info.weight_limit and info.weight_limit != self.weight_limit:
            log.info("REST weight limit %d/min (exchangeInfo)", info.weight_limit)
            self.weight_limit = info.weight_limit
        return info

    async def klines(self, symbol: str, interval: str, start_ms: int | None = None,
                     end_ms: int | None = None, limit: int = 500) -> list[Kline]:
        """GET /fapi/v1/klines: candles whose open time is in [start_ms, end_ms] (Binance's
        endTime is inclusive), oldest first, the still-open one included (closed=False)."""
        if not 1 <= limit <= KLINES_PAGE:
            raise ValueError(f"klines limit must be 1..{KLINES_PAGE}, got {limit}")
        params: dict[str, Any] = {"symbol": symbol, "interval": interval, "limit": limit}
        if start_ms is not None:
            params["startTime"] = start_ms
        if end_ms is not None:
            params["endTime"] = end_ms
        # The exchange's clock as the request leaves, not as the answer arrives: a candle
        # that had closed before we asked is closed in the answer, whatever the answer's
        # delay; one judged by the arrival time could still have been forming when the
        # exchange wrote it (a slow answer on a sped-up simulator spans whole candles).
        asked_at = self.server_now_ms()
        body = await self._get("/fapi/v1/klines", params, klines_weight(limit))
        return parse_klines(body, symbol=symbol, interval=interval,
                            server_now_ms=asked_at, guard_ms=self.clock_guard_ms())

    def clock_guard_ms(self) -> int:
        """How far our estimate of the exchange's clock may be off: the last round trip
        of /fapi/v1/time (in the clock's own units, so it scales with a simulator's speed)
        plus a second."""
        return self.trip_ms + 1000

    async def closed_klines(self, symbol: str, interval: str, start_ms: int,
                            end_ms: int) -> AsyncIterator[list[Kline]]:
        """Closed candles with open time in [start_ms, end_ms) (end exclusive), one list
        per page of up to 1,500, oldest first; stops at the first candle still open on the
        exchange's clock. Measures the clock offset first if it is unknown.

        An async generator: iterate it to the end, or close it (`aclosing`).
        """
        if self.offset_ms is None:
            await self.server_time()
        cursor = start_ms
        while cursor < end_ms:
            page = await self.klines(symbol, interval, cursor, end_ms - 1, KLINES_PAGE)
            closed = [k for k in page if k.closed and cursor <= k.open_time < end_ms]
            if closed:
                yield closed
            if len(page) < KLINES_PAGE or not page[-1].closed or page[-1].open_time < cursor:
                return
            cursor = page[-1].open_time + 1

    async def signed(self, method: str, path: str, params: dict[str, Any] | None = None,
                     weight: int = 1) -> bytes:
        """A signed (TRADE / USER_DATA) request; the raw JSON body of the 200 answer.

        Parameters go in the query string for every method, with `recvWindow` and
        `timestamp` (the exchange's clock, measured first if unknown), signed. Raises
        `BinanceAPIError` (after one resync-and-retry for -1021), `RestUncertain` (a POST
        whose outcome is unknown: look it up by client id), `RestUnavailable`.
        """
        method = method.upper()
        if method not in METHODS:
            raise ValueError(f"signed request method must be one of {METHODS}, got {method!r}")
        if self.credentials is None:
            raise RestError(f"{method} {path} is a signed request and this client has no "
                            "API credentials")
        if self.offset_ms is None:
            await self.server_time()
        try:
            return await self._request(method, path, params or {}, weight, signed=True)
        except BinanceAPIError as exc:
            if exc.code != TIMESTAMP_OUTSIDE_RECV_WINDOW:
                raise
            self.resyncs += 1
            log.warning("REST %s %s: timestamp outside recvWindow (-1021): measuring the "
                        "exchange clock again and retrying once", method, path)
            await self.server_time()
        return await self._request(method, path, params or {}, weight, signed=True)

    async def keyed(self, method: str, path: str, params: dict[str, Any] | None = None,
                    weight: int = 1) -> bytes:
        """A USER_STREAM request (the listenKey endpoints): `X-MBX-APIKEY`, no signature,
        no timestamp. Retried like a GET: creating a listenKey answers the active one."""
        method = method.upper()
        if method not in METHODS:
            raise ValueError(f"request method must be one of {METHODS}, got {method!r}")
        if self.credentials is None:
            raise RestError(f"{method} {path} needs the API key and this client has no "
                            "API credentials")
        return await self._request(method, path, params or {}, weight, keyed=True)

    def status(self) -> dict[str, Any]:
        """Snapshot for `ctl status`."""
        self._roll_window()
        banned = self._banned and trio.current_time() < self._blocked_until
        return {"weight_used": self._used, "weight_limit": self.weight_limit,
                "offset_ms": self.offset_ms, "requests": self.requests,
                "retries": self.retries, "throttled": self.throttled,
                "rate_limited": self.rate_limited, "bans": self.bans, "banned": banned,
                "resyncs": self.resyncs, "last_error": self.last_error,
                **self.order_status()}

    def order_status(self) -> dict[str, Any]:
        """Orders counted in the current 10 s and minute windows, the limits, and how
        often an order waited for a window to roll."""
        self._roll_order_windows()
        return {"orders_10s": self._orders[0], "orders_1m": self._orders[1],
                "order_limit_10s": self.order_limits[0],
                "order_limit_1m": self.order_limits[1],
                "orders_throttled": self.orders_throttled}

    # ------------------------------------------------------------------------ plumbing

    def _roll_window(self) -> int:
        minute = self.server_now_ms() // 60_000
        if minute != self._window:
            self._window, self._used = minute, 0
        return minute

    async def _reserve(self, weight: int) -> None:
        """Take `weight` from this minute's budget, waiting for the next minute if needed."""
        budget = max(1, math.floor(self.weight_limit * (1.0 - self.weight_margin)))
        while True:
            minute = self._roll_window()
            if self._used + weight <= budget or self._used == 0:
                self._used += weight
                return
            wait_ms = (minute + 1) * 60_000 - self.server_now_ms() + 50
            self.throttled += 1
            log.info("REST weight %d/%d used this minute: waiting %.1f s before the next "
                     "request", self._used, self.weight_limit, wait_ms / 1000)
            await trio.sleep(max(wait_ms, 1) / 1000)

    def _roll_order_windows(self) -> list[int]:
        now = self.server_now_ms()
        for i, span in enumerate(ORDER_WINDOWS_MS):
            w = now // span
            if w != self._order_windows[i]:
                self._order_windows[i], self._orders[i] = w, 0
        return self._order_windows

    async def _reserve_order(self) -> None:
        """Count one order in both windows, waiting first while either is at its budget."""
        while True:
            windows = self._roll_order_windows()
            wait_ms = 0
            for i, span in enumerate(ORDER_WINDOWS_MS):
                budget = max(1, math.floor(self.order_limits[i] * (1.0 - self.order_margin)))
                if self._orders[i] + 1 > budget:
                    wait_ms = max(wait_ms, (windows[i] + 1) * span - self.server_now_ms() + 50)
            if wait_ms <= 0:
                self._orders[0] += 1
                self._orders[1] += 1
                return
            self.orders_throttled += 1
            log.info("REST order rate %d/10s %d/min used: waiting %.1f s before the next "
                     "order", self._orders[0], self._orders[1], wait_ms / 1000)
            await trio.sleep(max(wait_ms, 1) / 1000)

    def _note_orders(self, resp: httpx.Response) -> None:
        self._roll_order_windows()
        for i, name in enumerate(ORDER_HEADERS):
            raw = resp.headers.get(name)
            if raw is not None and raw.isdigit():
                self._orders[i] = max(self._orders[i], int(raw))

    def _note_weight(self, resp: httpx.Response) -> None:
        raw = resp.headers.get(WEIGHT_HEADER)
        if raw is None:
            return
        try:
            used = int(raw)
        except ValueError:
            return
        self._roll_window()
        self._used = max(self._used, used)

    async def _wait_unblocked(self) -> None:
        while trio.current_time() < self._blocked_until:
            await trio.sleep_until(self._blocked_until)
        if self._banned:
            self._banned = False
            log.warning("REST ban over: calls resume")

    def _block(self, resp: httpx.Response, path: str, method: str = "GET") -> None:
        try:
            seconds = float(resp.headers.get("retry-after", ""))
        except ValueError:
            seconds = math.nan
        banned = resp.status_code == 418
        if not math.isfinite(seconds) or seconds < 0:
            seconds = self.ban_default_s if banned else 1.0
        until = trio.current_time() + seconds
        if banned:
            self.bans += 1
            if not self._banned:  # one line per ban, however many calls hit it
                end = iso(self.server_now_ms() + int(seconds * 1000))
                log.error("REST banned by Binance (HTTP 418 on %s %s) for %.0f s, until %s "
                          "UTC: every REST call waits", method, path, seconds, end)
            self._banned = True
        else:
            self.rate_limited += 1
            log.warning("REST rate limited (HTTP 429 on %s %s): every call waits %.1f s "
                        "(Retry-After)", method, path, seconds)
        self.last_error = f"HTTP {resp.status_code} on {method} {path}"
        self._blocked_until = max(self._blocked_until, until)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random (seeded)."""
        d = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        return d / 2 + self._rng.random() * d / 2

    async def _get(self, path: str, params: dict[str, Any] | None = None,
                   weight: int | None = None) -> bytes:
        return await self._request("GET", path, params,
                                   WEIGHTS.get(path, 1) if weight is None else weight)

    async def _send(self, method: str, path: str, params: dict[str, Any] | None,
                    signed: bool, keyed: bool = False) -> httpx.Response:
        if keyed and self.credentials is not None:
            return await self._http.request(method, path, params=params,
                                            headers=self.credentials.headers())
        if not signed:
            return await self._http.request(method, path, params=params)
        assert self.credentials is not None
        # Signed afresh on every attempt: a retry after a backoff needs a current timestamp.
        query = self.credentials.signed_query(params or {}, self.server_now_ms(),
                                              self.recv_window)
        return await self._http.request(method, f"{path}?{query}",
                                        headers=self.credentials.headers())

    async def _request(self, method: str, path: str, params: dict[str, Any] | None,
                       weight: int, *, signed: bool = False, keyed: bool = False) -> bytes:
        what = f"{method} {path}"
        is_order = signed and method == "POST" and path in ORDER_PATHS
        attempt = 0
        while True:
            await self._wait_unblocked()
            if is_order:
                await self._reserve_order()
            await self._reserve(weight)
            self.requests += 1
            sent = True
            try:
                resp = await self._send(method, path, params, signed, keyed)
            except httpx.TimeoutException as exc:
                failure = f"timed out ({type(exc).__name__})"
                sent = not isinstance(exc, _NOT_SENT)
            except httpx.TransportError as exc:
                failure = redact(f"{type(exc).__name__}: {exc}")
                sent = not isinstance(exc, _NOT_SENT)
            else:
                self._note_weight(resp)
                if is_order:
                    self._note_orders(resp)
                status = resp.status_code
                if status == 200:
                    return resp.content
                if status in (418, 429):  # rejected before execution: safe to resend
                    self._block(resp, path, method)
                    continue
                if status < 500 and status != 408:  # 408: Binance's backend timed out
                    err = parse_error(resp.content)
                    code, msg = (err.code, err.msg) if err else (0, resp.text[:200])
                    msg = redact(msg)
                    self.last_error = f"HTTP {status} on {what}: {code} {msg}"
                    raise BinanceAPIError(path, status, code, msg, method)
                failure = f"HTTP {status}"
            self.last_error = f"{what}: {failure}"
            if signed and method == "POST" and sent:
                log.error("REST %s: %s; outcome unknown, not retried", what, failure)
                raise RestUncertain(method, path, failure)
            attempt += 1
            if attempt >= self.max_attempts:
                log.error("REST %s failed after %d attempts: %s", what, attempt, failure)
                raise RestUnavailable(f"{method} {self.base_url}{path} failed after "
                                      f"{attempt} attempts: {failure}")
            delay = self._backoff(attempt)
            self.retries += 1
            log.warning("REST %s: %s; retry %d/%d in %.2f s", what, failure, attempt,
                        self.max_attempts - 1, delay)
            await trio.sleep(delay)
