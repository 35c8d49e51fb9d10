"""The REST client against a loopback HTTP server that answers exactly what each test says:
weight throttling, 429 Retry-After, 418 bans, 5xx / timeout retries, Binance errors,
paging of closed klines, the clock offset.

Time is Trio's MockClock (autojumping only after 50 ms of real idleness, so loopback I/O
never lets it jump past a pending HTTP timeout); the client's wall clock is derived from
it, so minute windows and bans are measured in the same virtual time."""

from __future__ import annotations

import itertools
import logging

import pytest
import trio
from trio.testing import MockClock

from qtraderd.venues.binance.rest import (
    BinanceAPIError,
    RestClient,
    RestUnavailable,
    klines_weight,
)
from tests.conftest import BINANCE
from tests.venues.binance.servers import HttpServer, KlineBook, Reply, Seen

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000  # a minute boundary, epoch ms


@pytest.fixture
def clock():
    return MockClock(autojump_threshold=0.05)


def wall() -> int:
    return T0 + int(trio.current_time() * 1000)


def client(server: HttpServer, **kw) -> RestClient:
    kw.setdefault("now_ms", wall)
    kw.setdefault("timeout_s", 2.0)
    return RestClient(server.url, **kw)


async def test_server_time_tracks_the_offset_and_logs_changes(clock, caplog):
    skew = {"ms": 5000}
    server = HttpServer(lambda s: Reply(body={"serverTime": wall() + skew["ms"]}))
    caplog.set_level(logging.INFO, "qtraderd.binance.rest")
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server) as rest:
            assert await rest.server_time() == wall() + 5000
            assert rest.offset_ms == 5000 and abs(rest.server_now_ms() - wall() - 5000) <= 1
            await rest.server_time()
            skew["ms"] = -1500
            await rest.server_time()
            assert rest.offset_ms == -1500 and rest.status()["offset_ms"] == -1500
        n.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "clock offset" in r.getMessage()]
    assert lines == ["exchange clock offset +5000 ms (round trip 0 ms)",
                     "exchange clock offset -1500 ms (round trip 0 ms)"]


async def test_weight_is_throttled_before_the_limit(clock):
    """The server counts weight per minute like Binance; the client never exceeds its
    budget (limit less the margin) and waits for the next minute instead."""
    used: dict[int, int] = {}

    def handler(seen: Seen) -> Reply:
        minute = wall() // 60_000
        used[minute] = used.get(minute, 0) + 1
        return Reply(body={"serverTime": wall()},
                     headers={"X-MBX-USED-WEIGHT-1M": str(used[minute])})

    server = HttpServer(handler)
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server, weight_limit=20, weight_margin=0.25) as rest:
            for _ in range(40):
                await rest.server_time()
            st = rest.status()
        n.cancel_scope.cancel()
    assert sorted(used.values()) == [10, 15, 15]  # budget 15 per minute; first minute waits
    assert max(used.values()) <= 15 and st["throttled"] == 2 and st["weight_limit"] == 20
    assert all(s.at >= 60 for s in server.requests[15:])  # the 16th waited for minute 1


async def test_weight_header_from_other_clients_counts(clock):
    """Another process on the same IP used most of the minute: the header says so."""
    server = HttpServer(lambda s: Reply(body=[] if s.path == "/fapi/v1/klines" else
                                        {"serverTime": wall()},
                                        headers={"X-MBX-USED-WEIGHT-1M": "2150"}))
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server) as rest:  # 2400/min, 10 % margin: budget 2160
            await rest.server_time()
            assert rest.status()["weight_used"] == 2150
            await rest.klines("BTCUSDT", "1m", limit=1500)  # weight 10: 2160, still in budget
            t = trio.current_time()
            await rest.server_time()  # 2161 > 2160: waits for the next minute
            assert trio.current_time() >= 60 > t
        n.cancel_scope.cancel()
    assert [klines_weight(n) for n in (99, 100, 499, 500, 1000, 1001, 1500)] == [1, 2, 2, 5, 5,
                                                                                  10, 10]


async def test_429_retry_after_pauses_every_call(clock):
    answers = iter([Reply(429, {"code": -1003, "msg": "Too many requests"},
                          {"Retry-After": "7"})])

    def handler(seen: Seen) -> Reply:
        return next(answers, Reply(body={"serverTime": wall()}))

    server = HttpServer(handler)
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server) as rest:
            first_done = trio.Event()

            async def second() -> None:
                await first_done.wait()
                await rest.server_time()

            async with trio.open_nursery() as calls:
                calls.start_soon(rest.server_time)
                await trio.sleep(1)  # (virtual) the 429 has arrived, the pause is on
                first_done.set()
                calls.start_soon(second)
            st = rest.status()
        n.cancel_scope.cancel()
    times = [r.at for r in server.requests]
    assert len(times) == 3 and times[0] < 1
    assert all(t >= 7 for t in times[1:])  # the retry and the other call both waited
    assert st["rate_limited"] == 1 and st["bans"] == 0


async def test_418_ban_stops_all_calls_until_it_ends_with_one_error_line(clock, caplog):
    banned = {"n": 0}

    def handler(seen: Seen) -> Reply:
        if trio.current_time() < 120 and banned["n"] < 3:
            banned["n"] += 1
            return Reply(418, {"code": -1003, "msg": "Way too many requests; IP banned"},
                         {"Retry-After": "120"})
        return Reply(body={"serverTime": wall()})

    server = HttpServer(handler)
    caplog.set_level(logging.INFO, "qtraderd.binance.rest")
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server) as rest:
            async with trio.open_nursery() as calls:
                for _ in range(3):
                    calls.start_soon(rest.server_time)
            st = rest.status()
        n.cancel_scope.cancel()
    at = [r.at for r in server.requests]
    assert len(at) == 6 and all(t < 1 for t in at[:3]) and all(t >= 120 for t in at[3:])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "HTTP 418" in errors[0] and "120 s" in errors[0]
    assert any("REST ban over" in r.getMessage() for r in caplog.records)
    assert st["bans"] == 3 and not st["banned"]


async def test_5xx_and_timeouts_are_retried_with_backoff_then_succeed(clock):
    answers = iter([Reply(503, "Service Unavailable"), Reply(body={}, delay=30),
                    Reply(502, "<html>bad gateway</html>")])

    def handler(seen: Seen) -> Reply:
        return next(answers, Reply(body={"serverTime": wall()}))

    server = HttpServer(handler)
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server, backoff_s=1.0, seed=3) as rest:
            assert await rest.server_time() > 0
            st = rest.status()
        n.cancel_scope.cancel()
    at = [r.at for r in server.requests]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert len(at) == 4 and st["retries"] == 3
    # backoff 1, 2 (+ the 2 s timeout), 4 s, each between half and all of it
    assert 0.5 <= gaps[0] <= 1.0 and 2 + 1.0 <= gaps[1] <= 2 + 2.0 and 2.0 <= gaps[2] <= 4.0
    assert "HTTP 502" in st["last_error"]


async def test_retries_are_bounded_then_a_clear_error(clock):
    server = HttpServer(lambda s: Reply(500, ""))
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server, max_attempts=4) as rest:
            with pytest.raises(RestUnavailable) as err:
                await rest.exchange_info()
        n.cancel_scope.cancel()
    assert len(server.requests) == 4
    assert f"GET {server.url}/fapi/v1/exchangeInfo failed after 4 attempts: HTTP 500" == \
        str(err.value)


async def test_binance_4xx_errors_are_typed_and_not_retried(clock):
    server = HttpServer(lambda s: Reply(400, {"code": -1121, "msg": "Invalid symbol."}))
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server) as rest:
            with pytest.raises(BinanceAPIError) as err:
                await rest.klines("NOPE", "5m", limit=10)
        n.cancel_scope.cancel()
    assert (err.value.status, err.value.code, err.value.msg) == (400, -1121, "Invalid symbol.")
    assert "GET /fapi/v1/klines: HTTP 400, Binance error -1121: Invalid symbol." in str(err.value)
    assert len(server.requests) == 1


async def test_exchange_info_adopts_the_stated_weight_limit(clock):
    body = (BINANCE / "http" / "exchange_info.json").read_bytes()
    server = HttpServer(lambda s: Reply(body=body))
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server) as rest:
            info = await rest.exchange_info()
        n.cancel_scope.cancel()
    assert info.symbols["ETHUSDT"].instrument.tick_size == 0.01
    assert rest.weight_limit == 6000 and server.paths() == ["/fapi/v1/exchangeInfo"]


async def test_closed_klines_pages_by_1500_and_stops_at_the_open_candle(clock):
    first = T0 - 4000 * 60_000
    now = {"ms": first + 3500 * 60_000 + 30_000}  # inside candle 3500
    book = KlineBook("ETHUSDT", "1m", first, 4000, lambda: now["ms"])
    server = HttpServer(book)
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server) as rest:
            pages = [p async for p in rest.closed_klines("ETHUSDT", "1m", first, first + 10**9)]
            # end exclusive: [first+100, first+250) is 150 candles
            part = [k async for p in rest.closed_klines("ETHUSDT", "1m", first + 100 * 60_000,
                                                        first + 250 * 60_000) for k in p]
        n.cancel_scope.cancel()
    assert [len(p) for p in pages] == [1500, 1500, 500]
    opens = [k.open_time for p in pages for k in p]
    assert opens == [first + i * 60_000 for i in range(3500)]  # no gap, no duplicate
    assert all(k.closed and k.symbol == "ETHUSDT" for p in pages for k in p)
    assert [k.open_time for k in part] == [first + i * 60_000 for i in range(100, 250)]
    klines = [r for r in server.requests if r.path == "/fapi/v1/klines"]
    assert server.paths()[0] == "/fapi/v1/time"  # the offset first, to judge closedness
    assert {r.query["limit"] for r in klines} == {"1500"}
    assert [int(r.query["startTime"]) for r in klines[:3]] == [
        first, first + 1500 * 60_000 - 59_999, first + 3000 * 60_000 - 59_999]
