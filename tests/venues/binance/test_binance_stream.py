"""The kline stream against a loopback websockets server that accepts only the routed
market path: combined frames, open vs closed klines, garbage, drops, idle timeouts,
backoff, shards, the planned overlapping reconnect, pings. Real sockets, real time (short
timeouts); waits are events or polling with a deadline."""

from __future__ import annotations

import itertools
import math

import pytest
import trio

from qtraderd.core.config import load
from qtraderd.venues.binance.payloads import Kline
from qtraderd.venues.binance.stream import (
    Connected,
    Disconnected,
    KlineStream,
    market_stream_url,
)
from tests.venues.binance.servers import WsServer, kline_frame, wait_for

M5 = 300_000
T = 1_765_000_000_000 - 1_765_000_000_000 % M5


class Collector:
    """Runs a KlineStream and keeps every event it emits."""

    def __init__(self, stream: KlineStream) -> None:
        self.stream = stream
        self.events: list[object] = []

    async def start(self, nursery: trio.Nursery) -> Collector:
        send, recv = trio.open_memory_channel(math.inf)
        await nursery.start(self.stream.run, send)

        async def drain() -> None:
            async for ev in recv:
                self.events.append(ev)

        nursery.start_soon(drain)
        return self

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def opens(self, symbol: str) -> list[int]:
        return [k.open_time for k in self.of(Kline) if k.symbol == symbol]


def make(server: WsServer, symbols=("ETHUSDT", "BTCUSDT"), **kw) -> KlineStream:
    kw.setdefault("idle_timeout_s", 5.0)
    kw.setdefault("reconnect_min_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.4)
    return KlineStream(server.url, symbols, "5m", **kw)


async def test_routed_url_combined_frames_open_ignored_garbage_counted():
    async with trio.open_nursery() as n:
        server = await WsServer().start(n)
        c = await Collector(make(server)).start(n)
        await wait_for(lambda: server.conns)
        ws = server.conns[0]
        for frame in [kline_frame("ETHUSDT", "5m", T, closed=False),
                      kline_frame("ETHUSDT", "5m", T),
                      "not json at all {",
                      '{"result": null, "id": 1}',
                      kline_frame("XRPUSDT", "5m", T),  # not subscribed
                      kline_frame("BTCUSDT", "5m", T, combined=False,  # raw, new fields
                                  extra={"st": 1, "ps": "BTCUSDT"}),
                      kline_frame("BTCUSDT", "5m", T + M5, price=7.0)]:
            await ws.send(frame)
        await wait_for(lambda: len(c.of(Kline)) == 3)
        st = c.stream.status()
        n.cancel_scope.cancel()
    assert server.paths == ["/market/stream?streams=ethusdt@kline_5m/btcusdt@kline_5m"]
    assert server.rejected == []
    assert isinstance(c.events[0], Connected) and not c.events[0].handover
    assert c.opens("ETHUSDT") == [T] and c.opens("BTCUSDT") == [T, T + M5]
    assert c.of(Kline)[2].open == 7.0 and all(k.closed for k in c.of(Kline))
    assert c.of(Disconnected) == []  # garbage never costs the connection
    assert (st["open_klines"], st["malformed_frames"], st["unexpected_frames"]) == (1, 1, 2)
    assert st["connected"] and st["frames"] == 7 and st["last_frame_age_s"] < 5


async def test_legacy_root_paths_are_never_used():
    assert market_stream_url("wss://fstream.binance.com/", ["a@kline_5m", "b@kline_5m"]) == \
        "wss://fstream.binance.com/market/stream?streams=a@kline_5m/b@kline_5m"
    cfg = load(env={"QT_FEED_SOURCE": "binance", "QT_FEED_SPEED": "1"})
    stream = KlineStream.from_config(cfg, ["ETHUSDT"])
    assert stream.urls() == ["wss://demo-fstream.binance.com/market/stream?streams="
                             "ethusdt@kline_5m"]
    assert stream.silence_s == 300 + 30.0  # one 5m bar plus exchange.stream_timeout_s


async def test_server_drop_reconnects_and_announces_it():
    async with trio.open_nursery() as n:
        server = await WsServer().start(n)
        c = await Collector(make(server)).start(n)
        await wait_for(lambda: server.conns)
        await server.conns[0].send(kline_frame("ETHUSDT", "5m", T))
        await wait_for(lambda: c.of(Kline))
        t0 = trio.current_time()
        await WsServer.abort(server.conns[0])
        await wait_for(lambda: len(c.of(Connected)) == 2)
        back = trio.current_time() - t0
        await wait_for(lambda: server.conns)
        await server.conns[0].send(kline_frame("ETHUSDT", "5m", T + M5))
        await wait_for(lambda: len(c.of(Kline)) == 2)
        st = c.stream.status()
        n.cancel_scope.cancel()
    kinds = [type(e).__name__ for e in c.events]
    assert kinds == ["Connected", "Kline", "Disconnected", "Connected", "Kline"]
    assert c.events[3].conn > c.events[0].conn and not c.events[3].handover
    assert back < 1.0 and st["reconnects"] == 1 and st["connected"]
    assert 0.0 < st["max_outage_s"] == st["last_outage_s"] <= back  # down until back up


async def test_refused_connections_back_off_exponentially_with_jitter():
    async with trio.open_nursery() as n:
        server = await WsServer().start(n)
        server.refuse = 4
        c = await Collector(make(server, reconnect_min_s=0.1, reconnect_max_s=0.4,
                                 seed=1)).start(n)
        await wait_for(lambda: c.of(Connected))
        st = c.stream.status()
        n.cancel_scope.cancel()
    t = server.handshake_times
    gaps = [b - a for a, b in itertools.pairwise(t)]
    assert len(t) == 5 and st["connect_failures"] == 4
    for gap, d in zip(gaps, [0.1, 0.2, 0.4, 0.4], strict=True):  # doubling, capped
        assert d / 2 - 0.01 <= gap <= d + 0.1, gaps
    assert "503" in st["last_error"]


async def test_idle_connection_is_replaced():
    async with trio.open_nursery() as n:
        server = await WsServer().start(n)
        c = await Collector(make(server, idle_timeout_s=0.3)).start(n)
        await wait_for(lambda: len(c.of(Connected)) == 2)  # nothing sent: idle, reconnect
        await wait_for(lambda: server.conns)
        await server.conns[-1].send(kline_frame("ETHUSDT", "5m", T))
        await wait_for(lambda: c.of(Kline))
        st = c.stream.status()
        n.cancel_scope.cancel()
    [d, *_] = c.of(Disconnected)
    assert "no frame for 0.3 s (idle timeout)" in d.reason
    assert st["idle_timeouts"] >= 1 and len(server.paths) >= 2


async def test_a_silent_stream_on_a_busy_connection_is_reconnected():
    """The legacy-URL failure mode, per stream: frames flow for ETHUSDT, none for BTCUSDT."""
    async with trio.open_nursery() as n:
        server = await WsServer().start(n)
        c = await Collector(make(server, silence_s=0.3)).start(n)
        await wait_for(lambda: server.conns)

        async def chatter() -> None:
            while True:
                await server.send_all(kline_frame("ETHUSDT", "5m", T, closed=False))
                await trio.sleep(0.02)

        n.start_soon(chatter)
        await wait_for(lambda: c.of(Disconnected))
        await wait_for(lambda: len(c.of(Connected)) == 2)
        st = c.stream.status()
        n.cancel_scope.cancel()
    reason = c.of(Disconnected)[0].reason
    assert "no frame for BTCUSDT in" in reason and "silent stream; limit 0.3 s" in reason
    assert st["silent_streams"] >= 1 and st["idle_timeouts"] == 0


async def test_streams_are_split_over_the_per_connection_limit():
    symbols = ["AUSDT", "BUSDT", "CUSDT", "DUSDT", "EUSDT"]
    async with trio.open_nursery() as n:
        server = await WsServer().start(n)
        c = await Collector(make(server, symbols, max_streams_per_connection=2)).start(n)
        await wait_for(lambda: len(server.conns) == 3)
        for s in symbols:  # every connection sends every symbol: each passes once
            await server.send_all(kline_frame(s, "5m", T))
        await wait_for(lambda: len(c.of(Kline)) == 5)
        await wait_for(lambda: c.stream.status()["duplicates"] == 10)
        n.cancel_scope.cancel()
    assert sorted(server.paths) == [
        "/market/stream?streams=ausdt@kline_5m/busdt@kline_5m",
        "/market/stream?streams=cusdt@kline_5m/dusdt@kline_5m",
        "/market/stream?streams=eusdt@kline_5m"]
    assert sorted(e.symbols for e in c.of(Connected)) == [
        ("AUSDT", "BUSDT"), ("CUSDT", "DUSDT"), ("EUSDT",)]
    assert sorted(k.symbol for k in c.of(Kline)) == symbols


async def test_planned_reconnect_overlaps_and_loses_or_repeats_nothing():
    """Bars are sent every 10 ms to every open connection, as Binance would; connections
    are replaced every 0.4 s. The bars received are exactly those sent, once each."""
    sent: list[int] = []
    async with trio.open_nursery() as n:
        server = await WsServer().start(n)
        c = await Collector(make(server, planned_reconnect_s=0.4)).start(n)
        await wait_for(lambda: server.conns)

        async def feed() -> None:
            i = 0
            while True:
                t = T + i * M5
                sent.append(t)  # every bar counts, even one no connection was up for
                await server.send_all(kline_frame("ETHUSDT", "5m", t))
                i += 1
                await trio.sleep(0.01)

        n.start_soon(feed)
        await wait_for(lambda: c.stream.status()["planned_reconnects"] >= 3, timeout=5)
        await wait_for(lambda: c.opens("ETHUSDT")[-1:] == sent[-1:])
        n.cancel_scope.cancel()
    got = c.opens("ETHUSDT")
    assert got == sent[:len(got)] and len(got) >= len(sent) - 1  # none missed, none twice
    assert len(got) == len(set(got))
    assert c.of(Disconnected) == []
    handovers = [e for e in c.of(Connected) if e.handover]
    assert len(handovers) >= 3 and c.stream.status()["duplicates"] > 0


async def test_server_pings_are_answered():
    answered: list[bool] = []

    async def on_connect(ws) -> None:
        pong = await ws.ping()
        with trio.move_on_after(2):
            await pong.wait()
        answered.append(pong.is_set())

    async with trio.open_nursery() as n:
        server = await WsServer(on_connect).start(n)
        c = await Collector(make(server)).start(n)
        await wait_for(lambda: answered)
        n.cancel_scope.cancel()
    assert answered == [True] and c.of(Disconnected) == []


def test_constructor_refuses_no_symbols():
    with pytest.raises(ValueError, match="at least one symbol"):
        KlineStream("ws://127.0.0.1:1", [], "5m")
