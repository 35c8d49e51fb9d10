"""Binance USD-M kline streams: combined connections on the routed market endpoint, kept up.

Binance routes market streams by path since 2026-04-23: klines come only from
`<ws_url>/market/stream?streams=ethusdt@kline_5m/...`. The legacy root paths still accept
the connection and then deliver nothing for klines (BINANCE.md), so this module never
builds them, and a connection that delivers no frame for `idle_timeout_s` is replaced
(the watchdog for that silent failure as much as for a dead TCP connection; Binance pushes
open-kline updates several times a second on a live market).

What `KlineStream.run` keeps true:
* one combined connection for all symbols, split into shards of at most
  `max_streams_per_connection` streams, each kept up on its own;
* a dropped or idle connection is reopened with exponential backoff and seeded jitter
  (the first retry after a healthy connection comes within `reconnect_min_s`);
* before Binance's 24-hour cut, a connection is replaced with overlap: the new one is
  opened and has delivered a frame before the old one is closed, and a closed kline seen
  on both is passed on once (duplicates are suppressed by (symbol, open time));
* ping frames are answered (websockets does it for us; tests check it);
* malformed or unexpected frames are counted and logged, never raised.

Output, on the memory channel given to `run`, in order per connection:
`Connected` (after the handshake, before any kline of that connection), closed `Kline`s
(open klines are dropped here), and `Disconnected` when a connection ends unplanned
(not for one that a handover's replacement had already taken over). The
bar source backfills over REST after every `Connected` whose `handover` is False: a
handover loses nothing, any other (re)connect may have missed closed bars.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgspec
import trio
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, WebSocketException
from websockets.trio.client import ClientConnection, connect

from qtraderd.core.config import INTERVAL_MS
from qtraderd.venues.binance.payloads import (
    Kline,
    PayloadError,
    UnexpectedPayload,
    parse_kline_frame,
)

log = logging.getLogger("qtraderd.binance.stream")

__all__ = ["Connected", "Disconnected", "KlineStream", "StreamEvent", "backoff_delay",
           "market_stream_url", "stream_name"]


class Connected(msgspec.Struct, frozen=True):
    """A connection is up for `symbols`. `handover`: it replaces a live connection of the
    same shard (planned, overlapping: nothing was missed); otherwise backfill these
    symbols' closed bars since the last one stored."""

    conn: int  # connection number in this process, increasing
    shard: int
    symbols: tuple[str, ...]
    handover: bool = False


class Disconnected(msgspec.Struct, frozen=True):
    """A connection ended unplanned (server close, network error, idle timeout); a new one
    follows after a backoff and announces itself with `Connected`."""

    conn: int
    shard: int
    symbols: tuple[str, ...]
    reason: str


StreamEvent = Kline | Connected | Disconnected


def stream_name(symbol: str, interval: str) -> str:
    """Binance's kline stream name: lower-case symbol, e.g. `ethusdt@kline_5m`."""
    return f"{symbol.lower()}@kline_{interval}"


def market_stream_url(ws_url: str, streams: Sequence[str]) -> str:
    """The routed combined-stream URL: `<ws_url>/market/stream?streams=a/b`."""
    return f"{ws_url.rstrip('/')}/market/stream?streams={'/'.join(streams)}"


def backoff_delay(rng: random.Random, failures: int, min_s: float, max_s: float) -> float:
    """Reconnect backoff: doubling from `min_s` up to `max_s` with the failures in a row,
    half of it random ("equal jitter", from the caller's seeded generator)."""
    d = min(max_s, min_s * 2 ** max(0, failures - 1))
    return d / 2 + rng.random() * d / 2


class _OpenFailed(Exception):
    """The connection could not be opened (refused, handshake failed, timed out)."""


class _Conn:
    """One live connection (held by its shard to retire it at handover)."""

    def __init__(self, conn_id: int, symbols: tuple[str, ...]) -> None:
        self.id = conn_id
        self.symbols = symbols
        self.scope = trio.CancelScope()
        self.first_frame = trio.Event()
        self.frames = 0
        self.retired = False
        self.deadline = math.inf  # trio time of the planned replacement
        self.ws: ClientConnection | None = None

    async def retire(self) -> None:
        """Close on purpose (handover): no Disconnected, no reconnect."""
        self.retired = True
        if self.ws is not None:
            with trio.move_on_after(2.0):
                await self.ws.aclose()
        self.scope.cancel()


class KlineStream:
    """Closed klines of `symbols` at `interval`, from Binance's routed market streams.

    `await nursery.start(stream.run, send_channel)`; read `StreamEvent`s from the other
    end. `status()` is a snapshot for `ctl status`.
    """

    def __init__(self, ws_url: str, symbols: Sequence[str], interval: str, *,
                 idle_timeout_s: float = 30.0, reconnect_min_s: float = 0.25,
                 reconnect_max_s: float = 30.0, max_streams_per_connection: int = 1024,
                 planned_reconnect_s: float = 23.5 * 3600, open_timeout_s: float = 10.0,
                 silence_s: float | None = None, seed: int = 0,
                 dedupe_window: int = 64) -> None:
        if not symbols:
            raise ValueError("KlineStream needs at least one symbol")
        self.ws_url = ws_url.rstrip("/")
        self.symbols = tuple(dict.fromkeys(s.upper() for s in symbols))
        self.interval = interval
        self.idle_timeout_s = idle_timeout_s
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.planned_reconnect_s = planned_reconnect_s
        self.open_timeout_s = open_timeout_s
        self.silence_s = silence_s
        self.dedupe_window = dedupe_window
        n = max(1, max_streams_per_connection)
        self.shards = [self.symbols[i:i + n] for i in range(0, len(self.symbols), n)]
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._recent: dict[str, tuple[deque[int], set[int]]] = {}
        self._open: dict[int, int] = {}  # shard -> connections up (2 during a handover)
        self._newest: dict[int, int] = {}  # shard -> id of its newest connection
        self._last_frame: float | None = None
        self.frames = self.klines = self.open_klines = self.duplicates = 0
        self.malformed_frames = self.unexpected_frames = 0
        self.reconnects = self.planned_reconnects = self.idle_timeouts = self.silences = 0
        self.connect_failures = 0
        self.last_error: str | None = None
        # outages: from an unplanned end to the shard's next connection (trio time)
        self._down_since: dict[int, float] = {}
        self.last_outage_s = self.max_outage_s = 0.0

    @classmethod
    def from_config(cls, cfg: Any, symbols: Sequence[str], **kwargs: Any) -> KlineStream:
        """From a Config: [exchange] keys, feed.interval, the seed; a stream silent for one
        bar interval (wall time at feed.speed) plus stream_timeout_s is reconnected."""
        ex = cfg.exchange
        bar_s = INTERVAL_MS[cfg.feed.interval] / 1000 / cfg.feed.speed  # speed "max": 0
        kwargs.setdefault("silence_s", bar_s + ex.stream_timeout_s)
        return cls(ex.stream_url, symbols, cfg.feed.interval,
                   idle_timeout_s=ex.stream_timeout_s, reconnect_min_s=ex.reconnect_min_s,
                   reconnect_max_s=ex.reconnect_max_s,
                   max_streams_per_connection=ex.max_streams_per_connection,
                   planned_reconnect_s=ex.planned_reconnect_h * 3600, seed=cfg.seed, **kwargs)

    def urls(self) -> list[str]:
        """One routed URL per shard."""
        return [market_stream_url(self.ws_url, [stream_name(s, self.interval) for s in shard])
                for shard in self.shards]

    def status(self) -> dict[str, Any]:
        age = None if self._last_frame is None else trio.current_time() - self._last_frame
        up = sum(1 for n in self._open.values() if n > 0)
        return {"connected": up == len(self.shards),
                "connections": sum(self._open.values()), "shards": len(self.shards),
                "reconnects": self.reconnects, "planned_reconnects": self.planned_reconnects,
                "idle_timeouts": self.idle_timeouts, "silent_streams": self.silences,
                "connect_failures": self.connect_failures,
                "last_frame_age_s": None if age is None else round(age, 3),
                "frames": self.frames, "klines": self.klines, "open_klines": self.open_klines,
                "duplicates": self.duplicates, "malformed_frames": self.malformed_frames,
                "unexpected_frames": self.unexpected_frames,
                "last_outage_s": round(self.last_outage_s, 3),
                "max_outage_s": round(self.max_outage_s, 3), "last_error": self.last_error}

    async def run(self, send: trio.MemorySendChannel[StreamEvent], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep every shard connected until cancelled; closes `send` when it ends."""
        async with send, trio.open_nursery() as nursery:
            for i, (shard, url) in enumerate(zip(self.shards, self.urls(), strict=True)):
                nursery.start_soon(self._shard, i, shard, url, send)
            task_status.started()

    # ---------------------------------------------------------------------------- shards

    def _delay(self, failures: int) -> float:
        """Backoff before the next attempt: doubling from reconnect_min_s up to
        reconnect_max_s, half of it random (seeded)."""
        return backoff_delay(self._rng, failures, self.reconnect_min_s, self.reconnect_max_s)

    async def _shard(self, idx: int, symbols: tuple[str, ...], url: str,
                     send: trio.MemorySendChannel[StreamEvent]) -> None:
        ended_tx, ended_rx = trio.open_memory_channel[tuple[int, str, int]](math.inf)
        failures = 0
        current: _Conn | None = None
        async with trio.open_nursery() as nursery:
            while True:
                if current is None:
                    try:
                        current = await nursery.start(self._connection, idx, symbols, url,
                                                      send, ended_tx, False)
                    except _OpenFailed as exc:
                        failures += 1
                        delay = self._delay(failures)
                        self.connect_failures += 1
                        self.last_error = str(exc)
                        log.warning("stream shard %d: connect failed (%s); retry %d in %.2f s",
                                    idx, exc, failures, delay)
                        await trio.sleep(delay)
                        continue
                with trio.move_on_at(current.deadline) as planned:
                    while True:
                        conn_id, _reason, frames = await ended_rx.receive()
                        if conn_id == current.id:
                            break
                if planned.cancelled_caught:
                    current = await self._handover(nursery, idx, symbols, url, send, ended_tx,
                                                   current)
                    continue
                current = None
                self.reconnects += 1
                failures = 0 if frames else failures + 1
                delay = self._delay(max(1, failures))
                log.info("stream shard %d: reconnecting in %.2f s", idx, delay)
                await trio.sleep(delay)

    async def _handover(self, nursery: trio.Nursery, idx: int, symbols: tuple[str, ...],
                        url: str, send: trio.MemorySendChannel[StreamEvent],
                        ended_tx: trio.MemorySendChannel[tuple[int, str, int]],
                        old: _Conn) -> _Conn:
        """Planned replacement: open the new connection, wait for its first frame (at most
        the idle timeout), then retire the old one. On failure keep the old one and try
        again after reconnect_max_s."""
        try:
            new: _Conn = await nursery.start(self._connection, idx, symbols, url, send,
                                             ended_tx, True)
        except _OpenFailed as exc:
            self.last_error = str(exc)
            old.deadline = trio.current_time() + self.reconnect_max_s
            log.warning("stream shard %d: planned reconnect failed (%s); keeping connection "
                        "%d, next try in %.0f s", idx, exc, old.id, self.reconnect_max_s)
            return old
        with trio.move_on_after(self.idle_timeout_s):
            await new.first_frame.wait()
        self.planned_reconnects += 1
        log.info("stream shard %d: planned reconnect, connection %d replaces %d", idx, new.id,
                 old.id)
        nursery.start_soon(old.retire)
        return new

    async def _connection(self, idx: int, symbols: tuple[str, ...], url: str,
                          send: trio.MemorySendChannel[StreamEvent],
                          ended_tx: trio.MemorySendChannel[tuple[int, str, int]],
                          handover: bool,
                          task_status: trio.TaskStatus[_Conn] = trio.TASK_STATUS_IGNORED,
                          ) -> None:
        """One connection's life: handshake, Connected, frames until it ends; reports the
        end to the shard (unless retired on purpose)."""
        conn = _Conn(next(self._ids), symbols)
        started = False
        reason = "closed"
        with conn.scope:
            try:
                async with connect(url, open_timeout=self.open_timeout_s, ping_interval=None,
                                   close_timeout=2.0) as ws:
                    conn.ws = ws
                    conn.deadline = trio.current_time() + self.planned_reconnect_s
                    self._open[idx] = self._open.get(idx, 0) + 1
                    try:
                        down_since = self._down_since.pop(idx, None)
                        outage = ""
                        if down_since is not None and not handover:
                            gap = trio.current_time() - down_since
                            self.last_outage_s = gap
                            self.max_outage_s = max(self.max_outage_s, gap)
                            outage = f" after {gap:.2f} s down"
                        log.info("stream connection %d up (shard %d, %d streams)%s%s", conn.id,
                                 idx, len(symbols), " [handover]" if handover else "", outage)
                        self._newest[idx] = conn.id
                        await send.send(Connected(conn.id, idx, symbols, handover))
                        started = True
                        task_status.started(conn)
                        reason = await self._read(ws, conn, send)
                    finally:
                        self._open[idx] -= 1
            except (OSError, TimeoutError, WebSocketException) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if not started:
                    raise _OpenFailed(f"{url}: {reason}") from None
        if conn.retired or conn.scope.cancelled_caught:
            log.info("stream connection %d closed (replaced)", conn.id)
            return
        if self._newest.get(idx) != conn.id:
            # dropped while its replacement was already up: nothing was missed
            log.info("stream connection %d ended after its replacement came up: %s", conn.id,
                     reason)
            ended_tx.send_nowait((conn.id, reason, conn.frames))
            return
        self.last_error = f"connection {conn.id}: {reason}"
        self._down_since.setdefault(idx, trio.current_time())
        log.warning("stream connection %d down (shard %d): %s", conn.id, idx, reason)
        await send.send(Disconnected(conn.id, idx, symbols, reason))
        ended_tx.send_nowait((conn.id, reason, conn.frames))

    async def _read(self, ws: ClientConnection, conn: _Conn,
                    send: trio.MemorySendChannel[StreamEvent]) -> str:
        """Frames until the connection ends, is idle, or one of its streams falls silent
        (`silence_s`); returns why it ended."""
        wanted = {s: self.interval for s in self.symbols}
        opened = trio.current_time()
        heard = dict.fromkeys(conn.symbols, opened)  # symbol -> last frame about it
        every = 1.0 if self.silence_s is None else min(1.0, self.silence_s / 4)
        next_check = opened + every
        while True:
            with trio.move_on_after(self.idle_timeout_s) as idle:
                try:
                    raw = await ws.recv()
                except ConnectionClosedOK as exc:
                    return f"closed by the server ({exc})"
                except ConnectionClosed as exc:
                    return f"connection lost ({exc})"
            if idle.cancelled_caught:
                self.idle_timeouts += 1
                return f"no frame for {self.idle_timeout_s:g} s (idle timeout)"
            self.frames += 1
            conn.frames += 1
            self._last_frame = now = trio.current_time()
            conn.first_frame.set()
            try:
                _, k = parse_kline_frame(raw)
            except UnexpectedPayload as exc:
                self.unexpected_frames += 1
                log.warning("stream connection %d: unexpected frame ignored: %s", conn.id, exc)
                continue
            except PayloadError as exc:
                self.malformed_frames += 1
                log.warning("stream connection %d: malformed frame ignored: %s", conn.id, exc)
                continue
            if wanted.get(k.symbol) != k.interval:
                self.unexpected_frames += 1
                log.warning("stream connection %d: kline of %s %s not subscribed, ignored",
                            conn.id, k.symbol, k.interval)
                continue
            heard[k.symbol] = now
            if self.silence_s is not None and now >= next_check:
                next_check = now + every
                quiet = min(heard, key=heard.__getitem__)
                if now - heard[quiet] > self.silence_s:
                    self.silences += 1
                    return (f"no frame for {quiet} in {now - heard[quiet]:.1f} s (silent "
                            f"stream; limit {self.silence_s:g} s)")
            if not k.closed:
                self.open_klines += 1
                continue
            if self._seen(k):
                self.duplicates += 1
                continue
            self.klines += 1
            try:  # no scheduler round per kline when the channel has room (it usually has)
                send.send_nowait(k)
            except trio.WouldBlock:
                await send.send(k)

    def _seen(self, k: Kline) -> bool:
        """True if this closed kline was passed on already (overlap, or a resent frame);
        remembers the last `dedupe_window` open times per symbol."""
        order, seen = self._recent.setdefault(k.symbol, (deque(), set()))
        if k.open_time in seen:
            return True
        order.append(k.open_time)
        seen.add(k.open_time)
        if len(order) > self.dedupe_window:
            seen.discard(order.popleft())
        return False
