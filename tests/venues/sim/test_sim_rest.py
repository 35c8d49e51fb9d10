"""exchange-sim REST over real sockets: Binance's shapes, klines paging semantics, the
exchange info filters, error bodies, request weight and 429."""

from __future__ import annotations

from pathlib import Path

import httpx

from qtraderd.store.db import connect
from qtraderd.store.importer import import_file
from qtraderd.venues.sim import SimServer, load_market
from tests.venues.sim.conftest import StartSim
from tests.venues.sim.sim_helpers import IV, TIMES, XRP, rows, same_shape, shared


async def test_time_and_exchange_info_have_binance_shapes(start_sim: StartSim) -> None:
    sim = await start_sim(paused=True)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        t = (await client.get("/fapi/v1/time")).json()
        info = (await client.get("/fapi/v1/exchangeInfo")).json()
    assert t == {"serverTime": TIMES[-6]}  # paused: sim time is the first live open time
    theirs = shared("http/exchange_info.json")
    same_shape(info, theirs)
    assert [s["symbol"] for s in info["symbols"]] == ["XRPUSDT"]
    xrp = info["symbols"][0]
    assert (xrp["status"], xrp["baseAsset"], xrp["quoteAsset"]) == ("TRADING", "XRP", "USDT")
    filters = {f["filterType"]: f for f in xrp["filters"]}
    assert list(filters) == [f["filterType"] for f in theirs["symbols"][0]["filters"]]
    # the candles print 4 price decimals and 1 volume decimal: Binance's XRPUSDT filters
    assert filters["PRICE_FILTER"]["tickSize"] == "0.0001"
    assert (filters["LOT_SIZE"]["stepSize"], filters["LOT_SIZE"]["minQty"]) == ("0.1", "0.1")
    assert filters["MIN_NOTIONAL"]["notional"] == "5"
    assert info["rateLimits"][0]["limit"] == 2400


async def test_klines_shape_and_values_equal_the_candles(start_sim: StartSim) -> None:
    sim = await start_sim(paused=True)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        got = (await client.get("/fapi/v1/klines", params={
            "symbol": "XRPUSDT", "interval": "5m", "limit": 5,
            "endTime": TIMES[-7]})).json()
    same_shape(got, shared("http/klines.json"))
    want = rows()[-11:-6]
    assert [r[0] for r in got] == [int(w[0]) for w in want]
    for r, w in zip(got, want, strict=True):
        assert [float(x) for x in r[1:6]] == [float(x) for x in w[1:6]]
        assert r[6] == r[0] + IV - 1


async def test_klines_paging_start_end_limit(start_sim: StartSim) -> None:
    sim = await start_sim(paused=True)
    now = TIMES[-6]
    visible = [t for t in TIMES if t <= now]  # history plus the candle just opening
    async with httpx.AsyncClient(base_url=sim.url) as client:
        async def times(**params: object) -> list[int]:
            r = await client.get("/fapi/v1/klines", params={"symbol": "XRPUSDT",
                                                            "interval": "5m", **params})
            assert r.status_code == 200, r.text
            return [row[0] for row in r.json()]

        assert await times() == visible[-500:]  # default limit 500: the latest
        assert await times(limit=3) == visible[-3:]
        assert await times(startTime=TIMES[10], limit=4) == TIMES[10:14]
        assert await times(startTime=TIMES[10] + 1, limit=2) == TIMES[11:13]
        assert await times(endTime=TIMES[20], limit=3) == TIMES[18:21]  # end inclusive
        assert await times(startTime=TIMES[5], endTime=TIMES[8]) == TIMES[5:9]
        assert await times(startTime=now + IV) == []  # nothing has opened yet
        # paging forward with startTime = last + 1 walks the whole visible history once
        paged: list[int] = []
        cursor = 0
        while batch := await times(startTime=cursor, limit=1500):
            paged += batch
            cursor = batch[-1] + 1
        assert paged == visible
        # the open candle is there, its close time still ahead of sim time
        last = (await client.get("/fapi/v1/klines", params={
            "symbol": "XRPUSDT", "interval": "5m", "limit": 1})).json()[0]
        assert last[0] == now and last[6] > now
        assert last[1] == last[4] and float(last[5]) == 0.0  # just opened: no moves yet


async def test_klines_errors_use_binance_codes(start_sim: StartSim) -> None:
    sim = await start_sim()
    cases = [
        ({"symbol": "DOGEUSDT", "interval": "5m"}, -1121),
        ({"interval": "5m"}, -1102),
        ({"symbol": "XRPUSDT"}, -1102),
        ({"symbol": "XRPUSDT", "interval": "7m"}, -1120),
        ({"symbol": "XRPUSDT", "interval": "1h"}, -1120),  # valid, but not served
        ({"symbol": "XRPUSDT", "interval": "5m", "limit": "0"}, -1130),
        ({"symbol": "XRPUSDT", "interval": "5m", "limit": "1501"}, -1130),
        ({"symbol": "XRPUSDT", "interval": "5m", "limit": "ten"}, -1100),
        ({"symbol": "XRPUSDT", "interval": "5m", "startTime": "-5"}, -1100),
        ({"symbol": "XRPUSDT", "interval": "5m", "startTime": 9, "endTime": 8}, -1023),
    ]
    async with httpx.AsyncClient(base_url=sim.url) as client:
        for params, code in cases:
            r = await client.get("/fapi/v1/klines", params=params)
            assert (r.status_code, r.json()["code"]) == (400, code), params
            assert isinstance(r.json()["msg"], str)
        r = await client.get("/fapi/v1/nothing")
        assert r.status_code == 404
        r = await client.post("/fapi/v1/time")
        assert r.status_code == 405


async def test_weight_header_and_429_when_over_the_limit(start_sim: StartSim) -> None:
    sim = await start_sim(weight_limit=30)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        used = []
        for path, params in [("/fapi/v1/time", {}), ("/fapi/v1/exchangeInfo", {}),
                             ("/fapi/v1/klines", {"symbol": "XRPUSDT", "interval": "5m",
                                                  "limit": 99}),
                             ("/fapi/v1/klines", {"symbol": "XRPUSDT", "interval": "5m",
                                                  "limit": 100}),
                             ("/fapi/v1/klines", {"symbol": "XRPUSDT", "interval": "5m"}),
                             ("/fapi/v1/klines", {"symbol": "XRPUSDT", "interval": "5m",
                                                  "limit": 1001})]:
            r = await client.get(path, params=params)
            assert r.status_code == 200
            used.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
        # weights: time 1, exchangeInfo 1, klines by limit 1 / 2 / 5 / 10
        assert [b - a for a, b in zip([used[0] - 1, *used[:-1]], used, strict=True)] == \
            [1, 1, 1, 2, 5, 10]
        over = None
        for _ in range(20):
            r = await client.get("/fapi/v1/klines", params={"symbol": "XRPUSDT",
                                                            "interval": "5m"})
            if r.status_code == 429:
                over = r
                break
        assert over is not None, "the weight limit was never enforced"
        assert over.json()["code"] == -1003
        assert 1 <= int(over.headers["Retry-After"]) <= 60
        assert int(over.headers["X-MBX-USED-WEIGHT-1M"]) > 30


async def test_serves_a_state_dir_store_like_the_csv(tmp_path: Path,
                                                     nursery: object) -> None:
    conn = connect(tmp_path)
    import_file(conn, XRP)
    conn.close()
    sim = SimServer(load_market(state_dir=tmp_path, start_ms=TIMES[-3]), paused=True)
    await nursery.start(sim.serve)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=sim.url) as client:
        got = (await client.get("/fapi/v1/klines", params={
            "symbol": "XRPUSDT", "interval": "5m", "startTime": 0, "limit": 3})).json()
    assert [[float(x) for x in r[:6]] for r in got] == \
        [[float(x) for x in w] for w in rows()[:3]]
