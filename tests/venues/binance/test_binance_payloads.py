"""Binance payload parsers against the real shared payloads, unknown fields, and malformed
input (which must always be a PayloadError, never another exception)."""

from __future__ import annotations

import json
import random

import pytest

from qtraderd.core import instruments as ins
from qtraderd.venues.binance import payloads as p
from tests.conftest import BINANCE

MARKET = BINANCE / "market_data"
HTTP = BINANCE / "http"


def test_closed_and_open_kline_frames_raw_and_combined():
    raw = (MARKET / "kline_stream_closed.json").read_bytes()
    stream, k = p.parse_kline_frame(raw)
    assert stream is None
    assert k == p.Kline("BTCUSDT", "1m", 1638747660000, 1638747719999, 0.001, 0.0025, 0.001,
                        0.002, 1000.0, True)
    assert k.to_bar().open_time == 1638747660000 and k.to_bar().close == 0.002
    data = json.loads((MARKET / "kline_stream_open.json").read_text())
    stream, k = p.parse_kline_frame(json.dumps({"stream": "btcusdt@kline_1m", "data": data}))
    assert stream == "btcusdt@kline_1m" and not k.closed and k.low == 0.0015


def test_unknown_fields_are_ignored():
    data = json.loads((MARKET / "kline_stream_closed.json").read_text())
    data.update({"st": 1, "ps": "BTCUSDT", "new": {"nested": [1, 2]}})
    data["k"]["zz"] = "future field"
    _, k = p.parse_kline_frame(json.dumps({"stream": "s", "data": data, "extra": 3}))
    assert k.closed and k.symbol == "BTCUSDT"


@pytest.mark.parametrize("name", sorted(f.name for f in MARKET.glob("*.json")
                                        if not f.name.startswith("kline")))
def test_other_market_streams_are_unexpected_not_errors(name):
    with pytest.raises(p.UnexpectedPayload, match="not a kline event"):
        p.parse_kline_frame((MARKET / name).read_bytes())


@pytest.mark.parametrize("name", sorted(f.name for f in (BINANCE / "user_data").glob("*.json")))
def test_user_data_events_on_the_market_parser_are_payload_errors(name):
    with pytest.raises(p.PayloadError):
        p.parse_kline_frame((BINANCE / "user_data" / name).read_bytes())


@pytest.mark.parametrize("frame, needle", [
    (b"", "not JSON"),
    (b"garbage", "not JSON"),
    (b'{"result": null, "id": 1}', "not a kline event"),
    (b"[1, 2]", "Expected `object`"),
    (b'{"stream": "x", "data": 5}', "Expected `object`"),
])
def test_malformed_frames(frame, needle):
    with pytest.raises(p.PayloadError, match=None) as err:
        p.parse_kline_frame(frame)
    assert needle in str(err.value)


@pytest.mark.parametrize("field, value, needle", [
    ("x", "yes", "Expected `bool`"),
    ("o", "abc", "open: expected a decimal string, got 'abc'"),
    ("c", "nan", "close: expected a finite number"),
    ("l", "9", "low 9.0 > high"),
    ("t", "1", "Expected `int`"),
    ("T", 1638747660000, "close 1638747660000"),
])
def test_bad_kline_values(field, value, needle):
    data = json.loads((MARKET / "kline_stream_closed.json").read_text())
    data["k"][field] = value
    with pytest.raises(p.PayloadError) as err:
        p.parse_kline_frame(json.dumps(data))
    assert needle in str(err.value)


def test_mutated_frames_only_ever_raise_payload_errors():
    raw = (MARKET / "kline_stream_closed.json").read_bytes()
    rng = random.Random(7)
    ok = 0
    for _ in range(2000):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        try:
            p.parse_kline_frame(bytes(b))
            ok += 1
        except p.PayloadError:
            pass
    assert ok > 0  # some mutations hit whitespace or digits and still parse


def test_rest_klines_rows_and_closedness():
    body = (HTTP / "klines.json").read_bytes()
    row = json.loads(body)[0]
    [k] = p.parse_klines(body, symbol="BTCUSDT", interval="1w", server_now_ms=row[6] + 1)
    assert (k.symbol, k.interval, k.open_time, k.close_time) == ("BTCUSDT", "1w", row[0], row[6])
    assert (k.open, k.high, k.low, k.close, k.volume) == tuple(float(x) for x in row[1:6])
    assert k.closed
    # its last millisecond is still part of the candle
    [k] = p.parse_klines(body, symbol="BTCUSDT", interval="1w", server_now_ms=row[6])
    assert not k.closed
    for bad in (b'{"a": 1}', b"[[1, 2]]", b'[[1,"a","1","1","1","1",2]]', b"[nope"):
        with pytest.raises(p.PayloadError, match=r"klines.* of BTCUSDT|klines for BTCUSDT 1w"):
            p.parse_klines(bad, symbol="BTCUSDT", interval="1w", server_now_ms=0)


def test_a_forming_candle_is_closed_only_beyond_the_clock_guard_or_a_later_row():
    """Taking a still-forming last candle for closed would store partial values for good:
    the last row needs its close time more than `guard_ms` behind our estimate of the
    exchange's clock; a row followed by a later one has closed whatever our clock says."""
    row = json.loads((HTTP / "klines.json").read_bytes())[0]
    nxt = [row[6] + 1, *row[1:6], row[6] + 1 + (row[6] - row[0]), *row[7:]]
    one = json.dumps([row])
    assert not p.parse_klines(one, symbol="BTCUSDT", interval="1w",
                              server_now_ms=row[6] + 500, guard_ms=1000)[0].closed
    assert p.parse_klines(one, symbol="BTCUSDT", interval="1w",
                          server_now_ms=row[6] + 1001, guard_ms=1000)[0].closed
    both = p.parse_klines(json.dumps([row, nxt]), symbol="BTCUSDT", interval="1w",
                          server_now_ms=0, guard_ms=1000)  # a clock far behind
    assert [k.closed for k in both] == [True, False]


def test_exchange_info_statuses_filters_and_weight_limit():
    body = (HTTP / "exchange_info.json").read_bytes()
    info = p.parse_exchange_info(body)
    assert info.server_time == 1645233611962 and info.weight_limit == 6000
    assert set(info.symbols) == {"BTCUSDT", "ETHUSDT", "BTCUSDT_220325"}
    btc = info.symbols["BTCUSDT"]
    assert (btc.status, btc.contract_type) == ("TRADING", "PERPETUAL")
    assert btc.instrument == ins.Instrument("BTCUSDT", "BTC", "USDT", 0.1, 0.001, 0.001, 10.0)
    # one filter mapping: the dict parser the daemon uses for files agrees
    assert {s: i.instrument for s, i in info.symbols.items()} == \
        ins.from_exchange_info(json.loads(body))
    data = json.loads(body)
    data["symbols"][0]["filters"][0]["tickSize"] = "ten"
    with pytest.raises(p.PayloadError, match="filters of BTCUSDT"):
        p.parse_exchange_info(json.dumps(data))
    del data["symbols"][0]["status"]
    with pytest.raises(p.PayloadError, match="status"):
        p.parse_exchange_info(json.dumps(data))


def test_server_time_and_error_bodies():
    assert p.parse_server_time(b'{"serverTime": 1499827319559}') == 1499827319559
    with pytest.raises(p.PayloadError, match="server time"):
        p.parse_server_time(b'{"serverTime": "soon"}')
    err = p.parse_error(b'{"code": -1121, "msg": "Invalid symbol."}')
    assert err == p.BinanceError(-1121, "Invalid symbol.")
    assert p.parse_error(b"<html>502 Bad Gateway</html>") is None
