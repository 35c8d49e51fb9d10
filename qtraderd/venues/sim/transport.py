"""HTTP/1.1 and WebSocket on one Trio TCP listener, built on h11 and wsproto.

Why not an ASGI server: a fault-injecting exchange must misbehave below the level ASGI
exposes — drop a WebSocket without a close frame (a dead TCP link), go silent in both
directions (pings unanswered, like a stalled route), send frames out of order. h11 and
wsproto (the sans-IO protocol engines hypercorn itself is built on) give that control
with the same protocol correctness. Any method reaches the HTTP handler, so order
endpoints (POST/DELETE) can be added later as routes.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import msgspec
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import Request as WsRequest
from wsproto.utilities import ProtocolError as WsProtocolError

log = logging.getLogger("qtraderd.sim")

MAX_BODY = 1 << 20
MAX_MESSAGE = 1 << 20
RECV = 65536
IDLE_TIMEOUT_S = 120.0  # an HTTP keep-alive connection with no request for this long


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]  # first value of each parameter
    headers: dict[str, str]  # lower-case names
    client: str
    body: bytes = b""
    params: list[tuple[str, str]] = field(default_factory=list)  # every parameter, in order
    raw_query: str = ""  # the query string as sent (signatures cover its exact bytes)


@dataclass
class Response:
    """An HTTP answer. `lost`: send nothing and close the connection (a reply lost on the
    way, the `lost_reply` fault): the client sees the server disconnect."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    lost: bool = False

    @classmethod
    def dropped(cls) -> Response:
        return cls(0, lost=True)

    @classmethod
    def json(cls, status: int, payload: object, headers: list[tuple[str, str]] | None = None
             ) -> Response:
        return cls(status, msgspec.json.encode(payload),
                   [("Content-Type", "application/json"), *(headers or [])])


HttpHandler = Callable[[Request], Awaitable[Response]]
WsHandler = Callable[[Request, "WebSocket"], Awaitable[None]]


class Gone(Exception):
    """The WebSocket is closed (by either side): nothing more can be sent."""


class WebSocket:
    """One server-side WebSocket. Sends are serialised by a lock; `stall_until` freezes
    both directions (no frames out, nothing read, so pings go unanswered) while the TCP
    connection stays open; `abort` closes TCP without a close frame."""

    def __init__(self, stream: trio.SocketStream, headers: list[tuple[bytes, bytes]],
                 target: bytes, trailing: bytes) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.SERVER)
        self._ws.initiate_upgrade_connection(headers, target)
        self._trailing = trailing
        self._lock = trio.Lock()
        self._pending: deque[str] = deque()
        self._parts: list[str] = []
        self.closed = False
        self.stalled_until = 0.0
        self.opened_at = trio.current_time()
        self.last_pong = self.opened_at

    async def accept(self) -> None:
        for ev in self._ws.events():
            assert isinstance(ev, WsRequest)
        await self._raw(self._ws.send(AcceptConnection()))
        if self._trailing:
            self._ws.receive_data(self._trailing)

    async def reject(self, status: int, payload: object) -> None:
        """Refuse the upgrade with an HTTP answer (JSON body)."""
        body = msgspec.json.encode(payload)
        data = self._ws.send(RejectConnection(
            status_code=status, has_body=True,
            headers=[(b"content-type", b"application/json"),
                     (b"content-length", str(len(body)).encode())]))
        data += self._ws.send(RejectData(data=body))
        try:
            await self._raw(data)
        finally:
            await self.abort()

    async def send_text(self, text: str) -> None:
        await self._send(TextMessage(data=text))

    async def ping(self, payload: bytes = b"") -> None:
        await self._send(Ping(payload=payload))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """A clean close: our close frame, then TCP closed (the reply is not awaited)."""
        if not self.closed:
            with contextlib.suppress(Gone):
                await self._send(CloseConnection(code=code, reason=reason))
        await self.abort()

    async def abort(self) -> None:
        self.closed = True
        await self._stream.aclose()

    async def wait_stall(self) -> None:
        while trio.current_time() < self.stalled_until:
            await trio.sleep_until(self.stalled_until)

    async def receive(self) -> str | None:
        """The next text (or binary, decoded) message; None once the connection is gone.
        Pings are answered and pongs noted on the way."""
        while not self._pending:
            if self.closed:
                return None
            await self.wait_stall()
            try:
                data = await self._stream.receive_some(RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed = True
                return None
            try:
                self._ws.receive_data(data or None)
                await self._process()
            except (WsProtocolError, Gone):
                await self.abort()
                return None
            if not data:
                await self.abort()
        return self._pending.popleft()

    async def _process(self) -> None:
        for ev in self._ws.events():
            if isinstance(ev, TextMessage | BytesMessage):
                part = ev.data if isinstance(ev.data, str) else ev.data.decode("utf-8",
                                                                               "replace")
                self._parts.append(part)
                if sum(map(len, self._parts)) > MAX_MESSAGE:
                    raise Gone("message too large")
                if ev.message_finished:
                    self._pending.append("".join(self._parts))
                    self._parts.clear()
            elif isinstance(ev, Ping):
                await self._send(ev.response())
            elif isinstance(ev, Pong):
                self.last_pong = trio.current_time()
            elif isinstance(ev, CloseConnection):
                with contextlib.suppress(Gone):
                    await self._send(ev.response())
                await self.abort()

    async def _send(self, event: object) -> None:
        async with self._lock:
            await self.wait_stall()
            if self.closed:
                raise Gone("closed")
            try:
                data = self._ws.send(event)  # type: ignore[arg-type]
            except WsProtocolError as exc:
                raise Gone(str(exc)) from None
            await self._raw(data)

    async def _raw(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.closed = True
            raise Gone(str(exc)) from None


def _is_upgrade(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"upgrade" and value.lower() == b"websocket":
            return True
    return False


def _request(ev: h11.Request, client: str) -> Request:
    target = ev.target.decode("latin-1")
    parts = urlsplit(target)
    params = parse_qsl(parts.query, keep_blank_values=True)
    query: dict[str, str] = {}
    for k, v in params:
        query.setdefault(k, v)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in ev.headers}
    return Request(ev.method.decode("ascii", "replace"), unquote(parts.path), query, headers,
                   client, params=params, raw_query=parts.query)


async def _next_event(conn: h11.Connection, stream: trio.SocketStream,
                      timeout_s: float) -> object:
    while True:
        ev = conn.next_event()
        if ev is not h11.NEED_DATA:
            return ev
        with trio.move_on_after(timeout_s):
            conn.receive_data(await stream.receive_some(RECV))
            continue
        return h11.ConnectionClosed()  # idle too long


async def serve_connection(stream: trio.SocketStream, http: HttpHandler, ws: WsHandler) -> None:
    """One TCP connection: HTTP requests (keep-alive) until closed or upgraded."""
    try:
        peer = stream.socket.getpeername()
        client = str(peer[0])
    except OSError:
        client = "?"
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            ev = await _next_event(conn, stream, IDLE_TIMEOUT_S)
            if not isinstance(ev, h11.Request):
                return  # ConnectionClosed, or junk h11 would have refused
            req = _request(ev, client)
            if _is_upgrade(ev.headers):
                while (nxt := await _next_event(conn, stream, IDLE_TIMEOUT_S)) is not h11.PAUSED:
                    if isinstance(nxt, h11.ConnectionClosed):
                        return
                socket = WebSocket(stream, list(ev.headers), ev.target, conn.trailing_data[0])
                with contextlib.suppress(Gone):
                    await ws(req, socket)
                return
            body = bytearray()
            while not isinstance(nxt := await _next_event(conn, stream, IDLE_TIMEOUT_S),
                                 h11.EndOfMessage):
                if isinstance(nxt, h11.ConnectionClosed):
                    return
                if isinstance(nxt, h11.Data):
                    body += nxt.data
                    if len(body) > MAX_BODY:
                        await _send_response(conn, stream, Response.json(
                            413, {"code": -1100, "msg": "Request body too large."}))
                        return
            req.body = bytes(body)
            try:
                resp = await http(req)
            except Exception:
                log.exception("exchange-sim: handler failed for %s %s", req.method, req.path)
                resp = Response.json(500, {"code": -1000, "msg": "Internal error."})
            if resp.lost:
                return  # closed below without a byte of answer
            await _send_response(conn, stream, resp)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except h11.RemoteProtocolError:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError, trio.BrokenResourceError):
                await _send_response(conn, stream, Response.json(
                    400, {"code": -1100, "msg": "Malformed HTTP request."}))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def _send_response(conn: h11.Connection, stream: trio.SocketStream,
                         resp: Response) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers]
    headers.append((b"content-length", str(len(resp.body)).encode()))
    try:
        reason = HTTPStatus(resp.status).phrase.encode()
    except ValueError:
        reason = b""
    data = conn.send(h11.Response(status_code=resp.status, headers=headers, reason=reason))
    data += conn.send(h11.Data(data=resp.body)) if resp.body else b""
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)
