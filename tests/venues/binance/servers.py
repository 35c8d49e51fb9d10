"""Small purpose-built servers on loopback for the Binance client tests (real sockets).

`HttpServer`: HTTP/1.1 over Trio sockets with h11, every answer decided by the test's
handler (status, headers, body, delay), every request recorded with its Trio time.
`WsServer`: websockets' Trio server; it accepts only the routed market path, records each
connection's path and hands the live connections to the test, which sends frames, pings,
closes or aborts them. `kline_frame` builds frames from the shared closed-kline payload
(Binance's own shape), `KlineBook` answers /fapi/v1/klines like Binance does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import trio
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response
from websockets.trio.server import ServerConnection, serve

from tests.conftest import BINANCE

CLOSED_KLINE = json.loads((BINANCE / "market_data" / "kline_stream_closed.json").read_text())
INTERVAL_MS = {"1m": 60_000, "5m": 300_000}


def kline_payload(symbol: str, interval: str, open_time: int, *, closed: bool = True,
                  price: float = 100.0, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A kline event in the shape of the shared payload, for another symbol and time."""
    p = copy.deepcopy(CLOSED_KLINE)
    step = INTERVAL_MS[interval]
    p["s"] = symbol
    p["E"] = open_time + step
    k = p["k"]
    k.update({"t": open_time, "T": open_time + step - 1, "s": symbol, "i": interval,
              "o": f"{price:.2f}", "h": f"{price + 1:.2f}", "l": f"{price - 1:.2f}",
              "c": f"{price + 0.5:.2f}", "x": closed})
    p.update(extra or {})
    return p


def kline_frame(symbol: str, interval: str, open_time: int, *, closed: bool = True,
                combined: bool = True, **kw: Any) -> str:
    payload = kline_payload(symbol, interval, open_time, closed=closed, **kw)
    if combined:
        payload = {"stream": f"{symbol.lower()}@kline_{interval}", "data": payload}
    return json.dumps(payload)


async def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition until it holds, failing after `timeout` seconds."""
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.005)


# ------------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | Any = b""  # not bytes/str: sent as JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds (Trio time) before answering
    close: bool = False  # drop the connection instead of answering (after `delay`)


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    at: float  # trio.current_time()
    method: str = "GET"
    raw_query: str = ""  # exactly as received (signatures are checked over it)
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased


Handler = Callable[[Seen], Reply | Awaitable[Reply]]


class HttpServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Seen] = []
        self.url = ""

    async def start(self, nursery: trio.Nursery) -> HttpServer:
        listeners = await nursery.start(partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
        host, port = listeners[0].socket.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = None
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                url = urlsplit(request.target.decode())
                seen = Seen(url.path, dict(parse_qsl(url.query)), trio.current_time(),
                            request.method.decode(), url.query,
                            {k.decode(): v.decode() for k, v in request.headers})
                self.requests.append(seen)
                reply = self.handler(seen)
                if not isinstance(reply, Reply):
                    reply = await reply
                if reply.delay:
                    await trio.sleep(reply.delay)
                if reply.close:
                    return
                body = reply.body
                if not isinstance(body, bytes | str):
                    body = json.dumps(body)
                body = body.encode() if isinstance(body, str) else body
                headers = [("content-type", "application/json"),
                           ("content-length", str(len(body))), *reply.headers.items()]
                out = conn.send(h11.Response(status_code=reply.status, headers=headers))
                out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()


class KlineBook:
    """/fapi/v1/time and /fapi/v1/klines over synthetic candles, like Binance: rows with
    open time in [startTime, endTime], at most `limit`, the forming candle included."""

    def __init__(self, symbol: str, interval: str, first_open: int, count: int,
                 now_ms: Callable[[], int]) -> None:
        self.symbol, self.interval = symbol, interval
        self.step = INTERVAL_MS[interval]
        self.opens = [first_open + i * self.step for i in range(count)]
        self.now_ms = now_ms

    def row(self, t: int) -> list[Any]:
        p = 100.0 + (t // self.step) % 50
        return [t, f"{p:.2f}", f"{p + 1:.2f}", f"{p - 1:.2f}", f"{p + 0.5:.2f}", "12.5",
                t + self.step - 1, "1250.0", 42, "6.0", "600.0", "0"]

    def __call__(self, seen: Seen) -> Reply:
        now = self.now_ms()
        if seen.path == "/fapi/v1/time":
            return Reply(body={"serverTime": now})
        if seen.path != "/fapi/v1/klines":
            return Reply(404, {"code": -1, "msg": "no such path"})
        q = seen.query
        if q.get("symbol") != self.symbol:
            return Reply(400, {"code": -1121, "msg": "Invalid symbol."})
        start = int(q.get("startTime", 0))
        end = int(q.get("endTime", 2**62))
        limit = int(q.get("limit", 500))
        rows = [self.row(t) for t in self.opens if start <= t <= end and t <= now][:limit]
        return Reply(body=rows)


# -------------------------------------------------------------------------- WebSocket


class WsServer:
    """Accepts /market/stream?streams=... only; `conns` holds the open connections."""

    def __init__(self, on_connect: Callable[[ServerConnection], Awaitable[None]] | None = None
                 ) -> None:
        self.paths: list[str] = []
        self.rejected: list[str] = []
        self.conns: list[ServerConnection] = []
        self.accepted = 0
        self.refuse = 0  # answer the next N handshakes with HTTP 503
        self.handshake_times: list[float] = []
        self.on_connect = on_connect
        self.url = ""

    async def start(self, nursery: trio.Nursery) -> WsServer:
        server = await nursery.start(partial(serve, self._handler, 0, host="127.0.0.1",
                                             process_request=self._process_request))
        port = server.listeners[0].socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    def _process_request(self, conn: ServerConnection, request: Any) -> Response | None:
        self.handshake_times.append(trio.current_time())
        if not request.path.startswith("/market/stream?streams="):
            self.rejected.append(request.path)
            return conn.respond(404, "only the routed market path is served here\n")
        if self.refuse > 0:
            self.refuse -= 1
            return Response(503, "Service Unavailable", Headers(), b"busy\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.paths.append(ws.request.path)
        self.accepted += 1
        self.conns.append(ws)
        try:
            if self.on_connect is not None:
                await self.on_connect(ws)
            await ws.wait_closed()
        finally:
            self.conns.remove(ws)

    def open_conns(self) -> list[ServerConnection]:
        return list(self.conns)

    async def send_all(self, text: str) -> int:
        """Send a frame on every open connection; how many got it."""
        n = 0
        for ws in self.open_conns():
            try:
                await ws.send(text)
                n += 1
            except ConnectionClosed:  # closing meanwhile
                pass
        return n

    @staticmethod
    async def abort(ws: ServerConnection) -> None:
        """Drop the TCP connection without a close handshake (a network failure)."""
        await ws.stream.aclose()
