"""exchange-sim kline streams over real WebSockets (websockets' Trio client): Binance's
payload shape, one closed kline per candle per stream, the routed and legacy URLs, method
frames, the stream limit, pings and the connection max age."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.trio.client import connect

from qtraderd.venues.sim import StreamOptions
from tests.venues.sim.conftest import StartSim
from tests.venues.sim.sim_helpers import (
    IV,
    TIMES,
    XRP,
    renamed_copy,
    rows,
    same_shape,
    shared,
)

CANDLE_S = 0.04


async def recv_json(ws, timeout: float = 5.0) -> dict:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        return json.loads(await ws.recv())


async def collect_until_closed(ws, streams: set[str], last_open: int  # type: ignore[no-untyped-def]
                               ) -> list[dict]:
    """Frames until every stream's closed kline for `last_open` has come."""
    frames, done = [], set()
    while done != streams:
        f = await recv_json(ws)
        frames.append(f)
        data, name = (f["data"], f["stream"]) if "stream" in f else (f, None)
        if data["k"]["x"] and data["k"]["t"] == last_open:
            done.add(name or data["s"].lower() + "@kline_5m")
    return frames


async def test_combined_stream_one_closed_kline_per_candle_per_stream(
        start_sim: StartSim, tmp_path: Path) -> None:
    other = renamed_copy(tmp_path, "XRPBUSD")
    sim = await start_sim(live=6, csv_files=[XRP, other], paused=True,
                          speed=IV / 1000 / CANDLE_S)
    streams = {"xrpusdt@kline_5m", "xrpbusd@kline_5m"}
    url = f"{sim.ws_url}/market/stream?streams=" + "/".join(sorted(streams))
    async with connect(url) as ws:
        sim.resume()
        frames = await collect_until_closed(ws, streams, TIMES[-1])
    closed_shape = shared("market_data/kline_stream_closed.json")
    open_shape = shared("market_data/kline_stream_open.json")
    want = {int(r[0]): [float(x) for x in r[1:6]] for r in rows()[-6:]}
    for name in streams:
        mine = [f["data"] for f in frames if f["stream"] == name]
        closed = [d for d in mine if d["k"]["x"]]
        assert [d["k"]["t"] for d in closed] == TIMES[-6:]  # each candle once, in order
        for d in closed:
            same_shape(d, closed_shape)
            k = d["k"]
            assert [float(k[x]) for x in "ohlcv"] == want[k["t"]]
            assert (k["T"], k["i"], d["E"]) == (k["t"] + IV - 1, "5m", k["t"] + IV)
        opens = [d for d in mine if not d["k"]["x"]]
        assert len(opens) == 3 * 6  # three open updates per candle, before its close
        for d in opens:
            same_shape(d, open_shape)
            k, real = d["k"], want[d["k"]["t"]]
            assert real[2] <= float(k["l"]) <= float(k["h"]) <= real[1]  # o h l c v
            assert float(k["v"]) < real[4]
        seq = [(d["k"]["t"], d["k"]["x"]) for d in mine]
        assert seq == sorted(seq)  # open updates, then the close, candle after candle
    assert sim.closed_klines == 12


async def test_raw_market_route_sends_bare_payloads(start_sim: StartSim) -> None:
    sim = await start_sim(live=2, paused=True, speed=IV / 1000 / CANDLE_S)
    async with connect(f"{sim.ws_url}/market/ws/xrpusdt@kline_5m") as ws:
        sim.resume()
        frames = await collect_until_closed(ws, {"xrpusdt@kline_5m"}, TIMES[-1])
    assert all(f["e"] == "kline" and f["s"] == "XRPUSDT" for f in frames)
    assert [f["k"]["t"] for f in frames if f["k"]["x"]] == TIMES[-2:]


@pytest.mark.parametrize("path", ["/stream?streams=xrpusdt@kline_5m", "/ws/xrpusdt@kline_5m",
                                  "/public/stream?streams=xrpusdt@kline_5m"])
async def test_legacy_urls_accept_and_deliver_no_klines(start_sim: StartSim, path: str) -> None:
    sim = await start_sim(live=3, paused=True, speed=IV / 1000 / CANDLE_S)
    async with connect(sim.ws_url + path) as legacy, \
            connect(f"{sim.ws_url}/market/stream?streams=xrpusdt@kline_5m") as market:
        await legacy.send(json.dumps({"method": "SUBSCRIBE", "params": ["xrpusdt@kline_5m"],
                                      "id": 7}))
        assert await recv_json(legacy) == {"result": None, "id": 7}  # accepted ...
        sim.resume()
        await collect_until_closed(market, {"xrpusdt@kline_5m"}, TIMES[-1])
        with trio.move_on_after(0.2) as quiet:  # ... and silent, while klines flowed
            got = await legacy.recv()
        assert quiet.cancelled_caught, f"legacy URL delivered {got[:80]}"


async def test_subscribe_list_unsubscribe(start_sim: StartSim) -> None:
    sim = await start_sim(live=3, paused=True, speed=IV / 1000 / CANDLE_S)
    async with connect(f"{sim.ws_url}/market/ws") as ws:
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["xrpusdt@kline_5m",
                                                                    "ethusdt@kline_5m"],
                                  "id": 1}))
        assert await recv_json(ws) == {"result": None, "id": 1}
        await ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["ethusdt@kline_5m"],
                                  "id": 2}))
        assert await recv_json(ws) == {"result": None, "id": 2}
        await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
        assert await recv_json(ws) == {"result": ["xrpusdt@kline_5m"], "id": 3}
        await ws.send("not json")
        assert "error" in await recv_json(ws)
        sim.resume()
        frames = await collect_until_closed(ws, {"xrpusdt@kline_5m"}, TIMES[-1])
    assert [f["k"]["t"] for f in frames if f["k"]["x"]] == TIMES[-3:]


async def test_stream_limit_per_connection(start_sim: StartSim) -> None:
    sim = await start_sim(stream_options=StreamOptions(max_streams=2))
    three = "/".join(f"s{i}usdt@kline_5m" for i in range(3))
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{sim.ws_url}/market/stream?streams={three}"):
            pass
    assert refused.value.response.status_code == 400
    async with connect(f"{sim.ws_url}/market/stream?streams=a@kline_5m/b@kline_5m") as ws:
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["c@kline_5m"], "id": 4}))
        reply = await recv_json(ws)
    assert reply["id"] == 4 and "too many streams" in reply["error"]["msg"]


async def test_unknown_stream_path_is_refused(start_sim: StartSim) -> None:
    sim = await start_sim()
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{sim.ws_url}/market/nothing"):
            pass
    assert refused.value.response.status_code == 404


async def test_pings_and_max_age(start_sim: StartSim) -> None:
    sim = await start_sim(live=2, stream_options=StreamOptions(ping_interval_s=0.05,
                                                               max_age_s=0.4))
    async with connect(f"{sim.ws_url}/market/ws/nothing@kline_5m") as ws:
        (session,) = sim.hub.sessions
        opened = trio.current_time()
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(5):
            await ws.recv()
        lived = trio.current_time() - opened
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert 0.3 < lived < 2.0
    # the client answered the server's pings: pongs came back over the socket
    assert session.ws.last_pong > session.ws.opened_at + 0.04


async def test_a_client_that_never_answers_pings_is_dropped(start_sim: StartSim) -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import Ping, Request

    sim = await start_sim(stream_options=StreamOptions(ping_interval_s=0.05,
                                                       pong_timeout_s=0.1))
    stream = await trio.open_tcp_stream("127.0.0.1", sim.port)
    client = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(client.send(Request(host="127.0.0.1", target="/market/ws")))
    pings, t0 = 0, trio.current_time()
    with trio.fail_after(5):
        while data := await stream.receive_some(4096):
            client.receive_data(data)
            pings += sum(isinstance(ev, Ping) for ev in client.events())  # never answered
    assert pings >= 2
    assert 0.1 < trio.current_time() - t0 < 2.0
    await stream.aclose()


async def test_a_client_too_far_behind_is_dropped(start_sim: StartSim) -> None:
    sim = await start_sim(live=6, paused=True, speed=IV / 1000 / CANDLE_S, faults="stall=1:5s",
                          stream_options=StreamOptions(queue_frames=4))
    async with connect(f"{sim.ws_url}/market/ws/xrpusdt@kline_5m") as ws:
        sim.resume()
        with pytest.raises(ConnectionClosed), trio.fail_after(2):  # well before the stall ends
            await ws.recv()
    assert not sim.hub.sessions
