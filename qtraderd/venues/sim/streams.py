"""The simulator's WebSocket side: Binance's routed market streams, and the legacy trap.

Routes: `/market/stream?streams=a/b` (combined: each frame `{"stream": name, "data": ...}`)
and `/market/ws/<a>/<b>` (raw payloads). Since 2026-04-23 Binance's legacy root URLs
(`/stream`, `/ws`) and the `/public` route accept connections and SUBSCRIBE but deliver no
kline data; so do these, so a client on the wrong URL fails its tests instead of
production. Streams are named `<symbol lower-case>@kline_<interval>`; unknown names are
accepted and deliver nothing, as on Binance.

Each connection has a frame queue filled by `Hub.publish` and one sender task that applies
the frame faults (drop, stall, garbage, dup, reorder) on the way out. The server pings every
`ping_interval_s`, drops a connection that has not answered within `pong_timeout_s`, and
closes it at `max_age_s` (Binance: 24 h). A slow reader whose queue overflows is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgspec
import trio

from qtraderd.venues.sim.faults import Faults
from qtraderd.venues.sim.transport import Gone, Request, WebSocket

log = logging.getLogger("qtraderd.sim")

REORDER_WAIT_S = 0.5  # how long a held frame waits for a later one to overtake it


@dataclass
class StreamOptions:
    ping_interval_s: float = 180.0  # Binance USD-M pings every 3 minutes
    pong_timeout_s: float = 600.0  # and disconnects after 10 minutes without a pong
    max_age_s: float = 86_400.0  # and closes every connection after 24 hours
    max_streams: int = 1024  # streams per connection
    queue_frames: int = 10_000  # frames a slow reader may lag before it is dropped


@dataclass(frozen=True)
class Frame:
    stream: str
    payload: str  # JSON
    closed: bool  # a closed kline (the dup fault repeats only these)


class Session:
    """One client connection and its subscriptions."""

    def __init__(self, ws: WebSocket, route: str, combined: bool, streams: list[str],
                 opts: StreamOptions, faults: Faults) -> None:
        self.ws = ws
        self.route = route  # "market", or "legacy" (accepts, delivers no kline)
        self.combined = combined
        self.streams: list[str] = list(dict.fromkeys(streams))
        self.opts = opts
        self.faults = faults
        self.send, self.recv = trio.open_memory_channel[Frame](opts.queue_frames)
        self.frames_sent = 0
        self._scope = trio.CancelScope()

    @property
    def delivers_klines(self) -> bool:
        return self.route == "market"

    def offer(self, frame: Frame) -> None:
        try:
            self.send.send_nowait(frame)
        except trio.WouldBlock:
            log.warning("exchange-sim: dropping a slow stream client (%d frames queued)",
                        self.opts.queue_frames)
            self.send.close()
            self._scope.cancel()  # the caller aborts the connection
        except trio.ClosedResourceError:
            pass

    async def run(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                for task in (self._sender, self._receiver, self._pinger, self._aging):
                    nursery.start_soon(self._until_gone, task, nursery.cancel_scope)

    async def _until_gone(self, task, scope: trio.CancelScope) -> None:  # type: ignore[no-untyped-def]
        try:
            await task()
        except Gone:
            pass
        finally:
            scope.cancel()

    def _text(self, frame: Frame) -> str:
        if self.combined:
            return f'{{"stream":"{frame.stream}","data":{frame.payload}}}'
        return frame.payload

    async def _sender(self) -> None:
        while True:
            try:
                frame = await self.recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            if self.faults.roll("reorder", count=False):
                later = None
                with trio.move_on_after(REORDER_WAIT_S):
                    later = await self.recv.receive()
                if later is not None:
                    self.faults.note("reorder")
                    await self._emit(later)
            await self._emit(frame)

    async def _emit(self, frame: Frame) -> None:
        if self.faults.roll("drop"):
            log.info("exchange-sim: fault drop: closing a stream connection abruptly")
            await self.ws.abort()
            raise Gone("dropped")
        if f := self.faults.roll("stall"):
            log.info("exchange-sim: fault stall: a stream connection is silent for %.3g s",
                     f.duration_s)
            self.ws.stalled_until = trio.current_time() + f.duration_s
        text = self._text(frame)
        if self.faults.roll("garbage"):
            await self.ws.send_text(text[: len(text) // 2])  # truncated JSON
        await self.ws.send_text(text)
        self.frames_sent += 1
        if frame.closed and self.faults.roll("dup"):
            await self.ws.send_text(text)

    async def _receiver(self) -> None:
        while (text := await self.ws.receive()) is not None:
            reply = self.method(text)
            if reply is not None:
                await self.ws.send_text(msgspec.json.encode(reply).decode())

    async def _pinger(self) -> None:
        while True:
            await trio.sleep(self.opts.ping_interval_s)
            await self.ws.wait_stall()
            if trio.current_time() - self.ws.last_pong > self.opts.pong_timeout_s + \
                    self.opts.ping_interval_s:
                log.info("exchange-sim: closing a stream connection: no pong")
                await self.ws.abort()
                return
            await self.ws.ping(b"sim")

    async def _aging(self) -> None:
        await trio.sleep(self.opts.max_age_s)
        log.info("exchange-sim: closing a stream connection at its max age (%.3g s)",
                 self.opts.max_age_s)
        await self.ws.close(1001, "connection max age reached")

    def method(self, text: str) -> dict[str, object] | None:
        """Answer a SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / GET_PROPERTY frame."""
        try:
            msg = msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            return {"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}, "id": None}
        if not isinstance(msg, dict):
            return {"error": {"code": 2, "msg": "Invalid request: not an object"}, "id": None}
        ident = msg.get("id")
        method = msg.get("method")
        params = msg.get("params", [])
        if not isinstance(ident, int | str | None):
            return {"error": {"code": 1, "msg": "Invalid value type: id"}, "id": None}
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return {"error": {"code": 1, "msg": "Invalid value type: params must be a "
                                  "list of stream names"}, "id": ident}
            if method == "SUBSCRIBE":
                wanted = list(dict.fromkeys(self.streams + params))
                if len(wanted) > self.opts.max_streams:
                    return {"error": {"code": 2, "msg": f"Invalid request: too many streams "
                                      f"(limit {self.opts.max_streams} per connection)"},
                            "id": ident}
                self.streams = wanted
            else:
                self.streams = [s for s in self.streams if s not in params]
            return {"result": None, "id": ident}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": list(self.streams), "id": ident}
        if method == "GET_PROPERTY":
            return {"result": self.combined, "id": ident}
        if method == "SET_PROPERTY":
            return {"result": None, "id": ident}
        return {"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"},
                "id": ident}


class Hub:
    """Every open stream connection; `publish` hands a payload to its subscribers."""

    def __init__(self, opts: StreamOptions, faults: Faults) -> None:
        self.opts = opts
        self.faults = faults
        self.sessions: set[Session] = set()
        self.connections = 0  # accepted since start

    def publish(self, stream: str, payload: str, closed: bool) -> None:
        frame = Frame(stream, payload, closed)
        for s in list(self.sessions):
            if s.delivers_klines and stream in s.streams:
                s.offer(frame)

    async def handle(self, req: Request, ws: WebSocket) -> None:
        route, combined, streams = _route(req)
        if route is None:
            await ws.reject(404, {"code": -1000, "msg": f"Unknown stream path {req.path}"})
            return
        if len(set(streams)) > self.opts.max_streams:
            await ws.reject(400, {"code": -1000, "msg": f"Too many streams: {len(streams)} "
                                  f"(limit {self.opts.max_streams} per connection)"})
            return
        await ws.accept()
        session = Session(ws, route, combined, streams, self.opts, self.faults)
        self.sessions.add(session)
        self.connections += 1
        log.info("exchange-sim: stream connection opened: %s (%d streams)", req.path,
                 len(session.streams))
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            session.send.close()
            await ws.abort()


def _route(req: Request) -> tuple[str | None, bool, list[str]]:
    """(route kind, combined?, streams named in the URL) or (None, ...) for a bad path."""
    parts = [p for p in req.path.split("/") if p]
    route = "legacy"
    if parts and parts[0] in ("market", "public"):
        route = "market" if parts[0] == "market" else "legacy"
        parts = parts[1:]
    if not parts:
        return None, False, []
    if parts[0] == "stream" and len(parts) == 1:
        names = req.query.get("streams", "")
        return route, True, [s for s in names.split("/") if s]
    if parts[0] == "ws":
        return route, False, parts[1:]
    return None, False, []
