"""Signed REST requests against a loopback exchange that verifies them like Binance does:
the API key header, the HMAC-SHA256 signature over the raw query (recomputed here with
hashlib, independently of the client's code), and the timestamp against its own clock and
the recvWindow (-1021). Also: Binance's published signing example, -1021 resync-once, a
POST whose outcome is unknown never sent twice, and no secret or signature in any message.

Time is Trio's MockClock, as in test_binance_rest.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import pickle
import socket
import traceback
from urllib.parse import parse_qsl

import pytest
import trio
from trio.testing import MockClock

from qtraderd.venues.binance.rest import (
    BinanceAPIError,
    RestClient,
    RestUnavailable,
    RestUncertain,
)
from qtraderd.venues.binance.signing import ApiCredentials, redact, sign
from tests.venues.binance.servers import HttpServer, Reply, Seen

T0 = 1_700_000_000_000
KEY = "kq7VtX2mJp9LwR4sN8cF1dH6gB3zY5aE0uI7oK2nM4xC6vB8"
SECRET = "Zr3Ws9Qe1Ty7Ui5Op2As8Df4Gh6Jk0LzXc3Vb9Nm1Qw7Er5Ty"

# Binance USD-M "General Info", SIGNED endpoint examples, Example 1 (query string).
DOC_KEY = "dbefbc809e3e83c283a984c3a1459732ea7db1360ca80c5c2c8867408d28cc83"
DOC_SECRET = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
DOC_QUERY = ("symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC"
             "&recvWindow=5000&timestamp=1591702613943")
DOC_SIGNATURE = "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"


@pytest.fixture
def clock():
    return MockClock(autojump_threshold=0.05)


def wall() -> int:
    return T0 + int(trio.current_time() * 1000)


class Exchange:
    """Answers /fapi/v1/time; every other path is a signed endpoint, checked like Binance:
    -2015 bad key, -1022 bad signature, -1021 timestamp outside recvWindow; then `script`
    (Replies popped in order), else 200 echoing the decoded parameters."""

    def __init__(self) -> None:
        self.skew_ms = 0  # exchange clock - wall()
        self.force_1021 = 0  # answer -1021 to the next N signed requests regardless
        self.script: list[Reply] = []
        self.accepted: list[Seen] = []

    def now(self) -> int:
        return wall() + self.skew_ms

    def __call__(self, seen: Seen) -> Reply:
        if seen.path == "/fapi/v1/time":
            return Reply(body={"serverTime": self.now()})
        if seen.headers.get("x-mbx-apikey") != KEY:
            return Reply(401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions "
                                                     "for action."})
        total, sep, sig = seen.raw_query.rpartition("&signature=")
        good = hmac.new(SECRET.encode(), total.encode(), hashlib.sha256).hexdigest()
        if not sep or not hmac.compare_digest(good, sig):
            return Reply(400, {"code": -1022, "msg": "Signature for this request is not valid."})
        ts, window, now = int(seen.query["timestamp"]), int(seen.query["recvWindow"]), self.now()
        if self.force_1021 > 0 or ts >= now + 1000 or now - ts > window:
            self.force_1021 -= 1
            return Reply(400, {"code": -1021, "msg": "Timestamp for this request is outside "
                                                     "of the recvWindow."})
        self.accepted.append(seen)
        if self.script:
            return self.script.pop(0)
        return Reply(body={"method": seen.method, "params": dict(parse_qsl(total))})


def client(server: HttpServer, secret: str = SECRET, **kw) -> RestClient:
    kw.setdefault("now_ms", wall)
    kw.setdefault("timeout_s", 2.0)
    return RestClient(server.url, credentials=ApiCredentials(KEY, secret), **kw)


def signed_requests(server: HttpServer, method: str | None = None) -> list[Seen]:
    return [r for r in server.requests if r.path != "/fapi/v1/time"
            and (method is None or r.method == method)]


# ------------------------------------------------------------------------ signing


def test_signature_matches_binance_published_example():
    assert sign(DOC_SECRET, DOC_QUERY) == DOC_SIGNATURE
    creds = ApiCredentials(DOC_KEY, DOC_SECRET)
    params = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": 1,
              "price": 9000, "timeInForce": "GTC"}
    assert creds.signed_query(params, 1591702613943, 5000) == \
        f"{DOC_QUERY}&signature={DOC_SIGNATURE}"
    assert creds.headers() == {"X-MBX-APIKEY": DOC_KEY}


def test_credentials_never_show_the_secret():
    creds = ApiCredentials(KEY, SECRET)
    for text in (repr(creds), str(creds), f"{creds}", f"{creds!r:>10}", repr([creds])):
        assert SECRET not in text and KEY not in text and "****" in text
    with pytest.raises(TypeError):
        pickle.dumps(creds)
    with pytest.raises(ValueError, match="both a key and a secret"):
        ApiCredentials(KEY, "")


def test_redact_masks_signatures_wherever_they_are():
    text = (f"GET http://h/fapi/v2/account?timestamp=1&signature={DOC_SIGNATURE} failed; "
            f"url='http://h/x?signature={DOC_SIGNATURE[:20]}&a=1'")
    out = redact(text)
    assert DOC_SIGNATURE[:20] not in out and out.count("signature=****") == 2
    assert "timestamp=1" in out and "&a=1" in out


# ------------------------------------------------------------------ signed requests


async def test_every_method_is_signed_and_verified_by_the_exchange(clock):
    exchange = Exchange()
    exchange.skew_ms = 3_000  # the exchange clock is ahead: timestamps must follow it
    server = HttpServer(exchange)
    params = {"symbol": "ETHUSDT", "newClientOrderId": "qt:7/a_b.c-1", "reduceOnly": True,
              "quantity": "0.010", "price": None}
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server, recv_window=2500) as rest:
            bodies = [json.loads(await rest.signed(m, "/fapi/v1/order", params))
                      for m in ("GET", "POST", "PUT", "DELETE")]
        n.cancel_scope.cancel()
    assert server.paths()[0] == "/fapi/v1/time"  # the clock is measured before signing
    assert [b["method"] for b in bodies] == ["GET", "POST", "PUT", "DELETE"]
    for b in bodies:
        assert b["params"]["newClientOrderId"] == "qt:7/a_b.c-1"
        assert b["params"]["reduceOnly"] == "true" and "price" not in b["params"]
        assert b["params"]["recvWindow"] == "2500"
    assert len(exchange.accepted) == 4
    assert all(abs(int(s.query["timestamp"]) - exchange.now()) < 1000
               for s in exchange.accepted)


async def test_a_wrong_secret_is_refused_by_the_verifier(clock):
    server = HttpServer(Exchange())
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server, secret=SECRET[::-1]) as rest:
            with pytest.raises(BinanceAPIError) as err:
                await rest.signed("GET", "/fapi/v2/account")
        n.cancel_scope.cancel()
    assert err.value.code == -1022 and err.value.method == "GET"
    assert len(signed_requests(server)) == 1  # a Binance error is not retried


async def test_1021_resyncs_the_clock_and_retries_once(clock, caplog):
    exchange = Exchange()
    server = HttpServer(exchange)
    caplog.set_level(logging.INFO, "qtraderd.binance.rest")
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server) as rest:
            await rest.server_time()
            exchange.skew_ms = 20_000  # the exchange clock jumps: our estimate is stale
            body = json.loads(await rest.signed("GET", "/fapi/v2/account"))
            st = rest.status()
        n.cancel_scope.cancel()
    assert body["method"] == "GET"
    assert server.paths() == ["/fapi/v1/time", "/fapi/v2/account", "/fapi/v1/time",
                              "/fapi/v2/account"]
    assert st["resyncs"] == 1 and abs(rest.offset_ms - 20_000) <= 5
    assert any("-1021" in r.getMessage() and "retrying once" in r.getMessage()
               for r in caplog.records)


async def test_1021_twice_raises_after_the_one_retry(clock):
    exchange = Exchange()
    exchange.force_1021 = 2
    server = HttpServer(exchange)
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server) as rest:
            with pytest.raises(BinanceAPIError) as err:
                await rest.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDT"})
        n.cancel_scope.cancel()
    assert err.value.code == -1021 and err.value.status == 400
    assert server.paths() == ["/fapi/v1/time", "/fapi/v1/order", "/fapi/v1/time",
                              "/fapi/v1/order"]


@pytest.mark.parametrize("reply", [Reply(body={}, delay=30), Reply(close=True),
                                   Reply(503, {"code": -1000, "msg": "Unknown error"}),
                                   Reply(408, "")], ids=["timeout", "dropped", "503", "408"])
async def test_an_order_post_with_unknown_outcome_is_never_resent(clock, reply):
    exchange = Exchange()
    exchange.script = [reply]
    server = HttpServer(exchange)
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server) as rest:
            with pytest.raises(RestUncertain) as err:
                await rest.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDT",
                                                              "newClientOrderId": "qt-1"})
            st = rest.status()
        n.cancel_scope.cancel()
    assert len(signed_requests(server, "POST")) == 1 and st["retries"] == 0
    assert "outcome unknown" in str(err.value) and "client id" in str(err.value)
    assert err.value.method == "POST" and err.value.path == "/fapi/v1/order"


async def test_get_and_delete_are_retried_after_a_timeout_or_5xx(clock):
    exchange = Exchange()
    exchange.script = [Reply(body={}, delay=30), Reply(502, "")]
    server = HttpServer(exchange)
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server) as rest:
            get = json.loads(await rest.signed("GET", "/fapi/v1/order", {"symbol": "X"}))
            exchange.script = [Reply(close=True)]
            delete = json.loads(await rest.signed("DELETE", "/fapi/v1/order", {"symbol": "X"}))
        n.cancel_scope.cancel()
    assert get["method"] == "GET" and delete["method"] == "DELETE"
    assert [r.method for r in signed_requests(server)] == ["GET", "GET", "GET", "DELETE",
                                                           "DELETE"]
    # retries are signed afresh: a later timestamp, another signature
    for method, count in (("GET", 3), ("DELETE", 2)):
        seen = signed_requests(server, method)
        assert len({r.query["signature"] for r in seen}) == count
        assert len({r.query["timestamp"] for r in seen}) == count


async def test_a_post_that_never_left_is_retried(clock):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rest = RestClient(f"http://127.0.0.1:{port}", credentials=ApiCredentials(KEY, SECRET),
                      now_ms=wall, timeout_s=2.0, max_attempts=3)
    rest.offset_ms = 0
    async with rest:
        with pytest.raises(RestUnavailable, match="failed after 3 attempts: ConnectError"):
            await rest.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDT"})


async def test_unsigned_client_refuses_signed_calls(clock):
    async with RestClient("http://127.0.0.1:9", now_ms=wall) as rest:
        with pytest.raises(Exception, match="no API credentials"):
            await rest.signed("GET", "/fapi/v2/account")
        with pytest.raises(ValueError, match="PATCH"):
            await rest.signed("PATCH", "/fapi/v2/account")


# ----------------------------------------------------------------------- no leaks


async def test_no_secret_or_signature_in_logs_errors_or_status(clock, caplog):
    exchange = Exchange()

    def echo_url(seen: Seen) -> Reply:  # a proxy's error page quoting the request URL
        return Reply(400, f"<html>Bad request: {seen.path}?{seen.raw_query}</html>")

    exchange.script = [Reply(500, ""), Reply(500, ""), Reply(close=True)]
    server = HttpServer(exchange)
    caplog.set_level(logging.DEBUG)  # everything, httpx's request lines included
    # the daemon quiets httpx (webhook URLs are secrets): a daemon run earlier in this
    # worker process leaves that level behind, so ask for httpx's lines explicitly
    caplog.set_level(logging.DEBUG, logger="httpx")
    caplog.set_level(logging.DEBUG, logger="httpcore")
    texts: list[str] = []
    async with trio.open_nursery() as n:
        await server.start(n)
        async with client(server, max_attempts=2) as rest:
            for call, kind in [(lambda: rest.signed("GET", "/fapi/v2/account"),
                                RestUnavailable),
                               (lambda: rest.signed("POST", "/fapi/v1/order",
                                                    {"symbol": "ETHUSDT"}), RestUncertain)]:
                with pytest.raises(kind) as err:
                    await call()
                texts += [str(err.value), "".join(traceback.format_exception(err.value)),
                          json.dumps(rest.status())]
            server.handler = echo_url
            with pytest.raises(BinanceAPIError) as err:
                await rest.signed("DELETE", "/fapi/v1/order", {"symbol": "ETHUSDT"})
            texts += [str(err.value), "".join(traceback.format_exception(err.value)),
                      json.dumps(rest.status()), err.value.msg]
        n.cancel_scope.cancel()
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    signatures = [r.query["signature"] for r in signed_requests(server)]
    assert len(signatures) == 4 and all(len(s) == 64 for s in signatures)
    for text in texts:
        assert SECRET not in text
        assert not any(s in text for s in signatures), text
    # the leaks were real: httpx logged the URLs, the proxy page quoted one; both masked
    assert any(r.name == "httpx" and "signature=****" in r.getMessage()
               for r in caplog.records)
    assert "signature=****" in err.value.msg
