"""The Binance USD-M user data stream: listenKey lifecycle and the private WebSocket, kept up.

Why it is built this way:
* The key comes from REST (`POST /fapi/v1/listenKey`, API key only: with HMAC keys the
  WebSocket API's `session.logon` is not available, BINANCE.md). Binance keeps one key per
  account and answers the active one to a POST, extending it; so every (re)connect POSTs,
  and a changed answer means the old key had died.
* The key dies 60 minutes after its last keep-alive: `PUT` every `keepalive_s` (30 min by
  default), on Trio's clock so tests run it with `trio.testing.MockClock`.
* The connection is the routed private endpoint, `<ws_url>/private/ws?listenKey=...`
  (BINANCE.md "Streams"; the legacy `/ws/<key>` may accept and deliver nothing).
* Events are lost while the stream is down (or after `listenKeyExpired`), and Binance
  never replays them. So after every re-connection, once the new connection is up (nothing
  after that point can be missed), `UserStreamReconnected` goes out on the channel: the
  caller reconciles against REST then. The first connection is announced by `run`'s start
  (`await nursery.start(stream.run, send)` returns once it is up): the caller reconciles at
  start anyway.
* A user stream may be silent for hours (no trading): no idle timeout; WebSocket pings
  (`ping_interval_s`) find a dead TCP link instead.
* Closing (cancelling `run`) deletes the key, shielded and bounded by `close_timeout_s`.

Events are parsed by userdata.py and passed on as they arrive, duplicates included (the
caller deduplicates: Binance may resend, the simulator's user_dup fault does). Unknown
event types are passed on as `BinanceUnknownEvent` and counted; malformed frames are
counted, logged and dropped. The listenKey never appears in a log line or an error.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import msgspec
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.trio.client import ClientConnection, connect

from qtraderd.venues.binance.payloads import PayloadError
from qtraderd.venues.binance.rest import BinanceAPIError, RestClient, RestError
from qtraderd.venues.binance.signing import install_log_redaction
from qtraderd.venues.binance.stream import backoff_delay
from qtraderd.venues.binance.userdata import (
    BinanceUnknownEvent,
    ListenKeyExpired,
    UserDataEvent,
    parse_user_event,
)

log = logging.getLogger("qtraderd.binance.userstream")

__all__ = ["LISTEN_KEY_PATH", "UserStream", "UserStreamItem", "UserStreamReconnected",
           "close_listen_key", "create_listen_key", "keepalive_listen_key",
           "private_stream_url"]

LISTEN_KEY_PATH = "/fapi/v1/listenKey"
NO_SUCH_KEY = -1125  # "This listenKey does not exist."


class UserStreamReconnected(msgspec.Struct, frozen=True):
    """The user stream is up again after it was lost: events in between may be missing,
    reconcile now. `new_key`: the listenKey had to be replaced (it had expired)."""

    conn: int  # connection number in this process, increasing
    reason: str  # why the previous connection ended
    new_key: bool


UserStreamItem = UserDataEvent | UserStreamReconnected


class _Key(msgspec.Struct):
    listenKey: str


_key_dec = msgspec.json.Decoder(_Key)


def private_stream_url(ws_url: str, listen_key: str, events: Sequence[str] = ()) -> str:
    """The routed private URL: `<ws_url>/private/ws?listenKey=KEY[&events=A/B]`."""
    url = f"{ws_url.rstrip('/')}/private/ws?listenKey={quote(listen_key, safe='')}"
    return f"{url}&events={'/'.join(events)}" if events else url


def _key(body: bytes, what: str) -> str:
    try:
        key = _key_dec.decode(body).listenKey
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(f"{what}: expected {{\"listenKey\": ...}}: {exc}") from None
    if not key:
        raise PayloadError(f"{what}: empty listenKey")
    return key


async def create_listen_key(rest: RestClient) -> str:
    """`POST /fapi/v1/listenKey`: the account's active key (extended) or a new one."""
    return _key(await rest.keyed("POST", LISTEN_KEY_PATH), f"POST {LISTEN_KEY_PATH}")


async def keepalive_listen_key(rest: RestClient) -> None:
    """`PUT /fapi/v1/listenKey`: 60 more minutes. `BinanceAPIError` -1125 if the key is
    gone."""
    await rest.keyed("PUT", LISTEN_KEY_PATH)


async def close_listen_key(rest: RestClient) -> None:
    """`DELETE /fapi/v1/listenKey`: the key and its streams end."""
    await rest.keyed("DELETE", LISTEN_KEY_PATH)


class _SessionEnd(Exception):
    def __init__(self, reason: str, key_gone: bool) -> None:
        super().__init__(reason)
        self.reason, self.key_gone = reason, key_gone


class UserStream:
    """The account's user data events, from the routed private stream, kept up.

    `await nursery.start(stream.run, send_channel)` (returns once connected); read
    `UserStreamItem`s from the other end of a bounded channel. `status()` for `ctl`."""

    def __init__(self, rest: RestClient, ws_url: str, *, keepalive_s: float = 1800.0,
                 reconnect_min_s: float = 0.25, reconnect_max_s: float = 30.0,
                 open_timeout_s: float = 10.0, ping_interval_s: float | None = 60.0,
                 ping_timeout_s: float | None = 30.0, close_timeout_s: float = 5.0,
                 events: Sequence[str] = (), seed: int = 0) -> None:
        if not keepalive_s > 0:
            raise ValueError(f"keepalive_s must be > 0, got {keepalive_s}")
        self.rest = rest
        self.ws_url = ws_url.rstrip("/")
        self.keepalive_s = keepalive_s
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.open_timeout_s = open_timeout_s
        self.ping_interval_s, self.ping_timeout_s = ping_interval_s, ping_timeout_s
        self.close_timeout_s = close_timeout_s
        self.events = tuple(events)
        self._rng = random.Random(seed)
        self.key: str | None = None
        self._key_since = 0.0  # trio time of the last POST (it extends the key)
        self.connected = False
        self.conn = 0
        self.frames = self.delivered = self.unknown_events = self.malformed_frames = 0
        self.keepalives = self.keepalive_failures = self.keys_created = 0
        self.key_expiries = self.reconnects = self.connect_failures = 0
        self.last_error: str | None = None
        install_log_redaction(("websockets.client",))  # it logs the URL at DEBUG

    @classmethod
    def from_config(cls, cfg: Any, rest: RestClient, **kwargs: Any) -> UserStream:
        """From a Config: the [exchange] stream root, reconnect delays and the seed."""
        ex = cfg.exchange
        kwargs.setdefault("keepalive_s", ex.user_stream_keepalive_s)
        return cls(rest, ex.stream_url, reconnect_min_s=ex.reconnect_min_s,
                   reconnect_max_s=ex.reconnect_max_s, seed=cfg.seed, **kwargs)

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "connection": self.conn,
                "reconnects": self.reconnects, "connect_failures": self.connect_failures,
                "keys_created": self.keys_created, "key_expiries": self.key_expiries,
                "keepalives": self.keepalives, "keepalive_failures": self.keepalive_failures,
                "frames": self.frames, "events": self.delivered,
                "unknown_events": self.unknown_events,
                "malformed_frames": self.malformed_frames, "last_error": self.last_error}

    def _hide(self, text: str) -> str:
        return text.replace(self.key, "***") if self.key else text

    # ------------------------------------------------------------------------ running

    async def run(self, send: trio.MemorySendChannel[UserStreamItem], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the stream up until cancelled; started once the first connection is up;
        closes `send` and deletes the key when it ends."""
        try:
            async with send:
                await self._loop(send, task_status)
        finally:
            self.connected = False
            if self.key is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(self.close_timeout_s):
                    try:
                        await close_listen_key(self.rest)
                        log.info("user stream closed: listenKey deleted")
                    except (RestError, PayloadError) as exc:
                        log.warning("user stream closed: listenKey not deleted (%s)", exc)
                self.key = None

    async def _loop(self, send: trio.MemorySendChannel[UserStreamItem],
                    task_status: trio.TaskStatus[None]) -> None:
        started = False
        used: str | None = None  # the key of the last connection that came up
        failures = 0
        ended = ""  # why the last connection ended ("" before the first)
        while True:
            try:
                key = await self._fresh_key()
            except (RestError, PayloadError) as exc:
                failures += 1
                self.connect_failures += 1
                self.last_error = f"listenKey: {exc}"
                delay = backoff_delay(self._rng, failures, self.reconnect_min_s,
                                      self.reconnect_max_s)
                log.warning("user stream: no listenKey (%s); retry %d in %.2f s", exc,
                            failures, delay)
                await trio.sleep(delay)
                continue
            url = private_stream_url(self.ws_url, key, self.events)
            try:
                async with connect(url, open_timeout=self.open_timeout_s,
                                   ping_interval=self.ping_interval_s,
                                   ping_timeout=self.ping_timeout_s,
                                   close_timeout=2.0) as ws:
                    self.conn += 1
                    self.connected = True
                    failures = 0
                    log.info("user stream connection %d up%s", self.conn,
                             f" after: {ended}" if ended else "")
                    if not started:
                        started = True
                        task_status.started()
                    else:
                        await send.send(UserStreamReconnected(self.conn, ended,
                                                              used is not None and used != key))
                    used = key
                    end = await self._session(ws, send)
            except _SessionEnd as exc:
                end = exc
            except InvalidStatus as exc:
                code = exc.response.status_code
                end = _SessionEnd(f"connect refused (HTTP {code})", code in (400, 401))
                failures += 1
                self.connect_failures += 1
            except (OSError, TimeoutError, WebSocketException) as exc:
                end = _SessionEnd(self._hide(f"{type(exc).__name__}: {exc}"), False)
                if not self.connected:
                    failures += 1
                    self.connect_failures += 1
            if self.connected:
                log.warning("user stream connection %d down: %s", self.conn, end.reason)
            else:
                log.warning("user stream: connect failed: %s", end.reason)
            self.connected = False
            self.last_error = end.reason
            ended = end.reason
            if end.key_gone:
                self.key = None
            self.reconnects += 1
            await trio.sleep(backoff_delay(self._rng, max(1, failures), self.reconnect_min_s,
                                           self.reconnect_max_s))

    async def _fresh_key(self) -> str:
        self._key_since = trio.current_time()
        key = await create_listen_key(self.rest)
        if key != self.key:
            self.keys_created += 1
            log.info("user stream: listenKey %s", "created" if self.key is None else
                     "replaced")
        self.key = key
        return key

    async def _session(self, ws: ClientConnection,
                       send: trio.MemorySendChannel[UserStreamItem]) -> _SessionEnd:
        """Read and keep alive until the connection or the key ends; why it ended."""
        ends: list[_SessionEnd] = []
        async with trio.open_nursery() as nursery:
            async def watch(fn: Any) -> None:
                try:
                    await fn()
                except _SessionEnd as exc:
                    ends.append(exc)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch, self._keepalive)
            nursery.start_soon(watch, lambda: self._read(ws, send))
        return ends[0] if ends else _SessionEnd("closed", False)

    async def _keepalive(self) -> None:
        """PUT every keepalive_s (a fixed cadence from the key's POST); a failed
        one is tried again a minute later; a key the exchange no longer knows ends the
        session."""
        due = self._key_since + self.keepalive_s  # the key lives from its POST on
        while True:
            await trio.sleep_until(due)
            try:
                await keepalive_listen_key(self.rest)
            except BinanceAPIError as exc:
                if exc.code == NO_SUCH_KEY:
                    self.key_expiries += 1
                    raise _SessionEnd("listenKey gone at keep-alive (-1125)", True) from None
                self.keepalive_failures += 1
                log.warning("user stream: keep-alive failed (%s); again in 60 s", exc)
                due = trio.current_time() + min(60.0, self.keepalive_s)
                continue
            except RestError as exc:
                self.keepalive_failures += 1
                log.warning("user stream: keep-alive failed (%s); again in 60 s", exc)
                due = trio.current_time() + min(60.0, self.keepalive_s)
                continue
            self.keepalives += 1
            log.debug("user stream: listenKey kept alive")
            due = max(due + self.keepalive_s, trio.current_time())  # no drift

    async def _read(self, ws: ClientConnection,
                    send: trio.MemorySendChannel[UserStreamItem]) -> None:
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed as exc:
                raise _SessionEnd(f"connection lost ({exc})", False) from None
            self.frames += 1
            try:
                ev = parse_user_event(raw)
            except PayloadError as exc:
                self.malformed_frames += 1
                log.warning("user stream: malformed frame ignored: %s", exc)
                continue
            if isinstance(ev, ListenKeyExpired):
                if ev.listen_key and ev.listen_key != self.key:
                    continue  # about a key we no longer use
                self.key_expiries += 1
                raise _SessionEnd("listenKeyExpired", True)
            if isinstance(ev, BinanceUnknownEvent):
                self.unknown_events += 1
                log.warning("user stream: unknown event type %r passed on",
                            ev.event_type[:40])
            self.delivered += 1
            await send.send(ev)
