"""exchange-sim faults, each observed from a real client: the spec syntax, seeding, and
every stream and REST fault."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from websockets.exceptions import ConnectionClosedError
from websockets.trio.client import connect

from qtraderd.venues.sim import FaultSpec, FaultSpecError
from qtraderd.venues.sim.faults import Faults
from tests.venues.sim.conftest import StartSim
from tests.venues.sim.sim_helpers import IV, TIMES

FAST = IV / 1000 / 0.04  # a 5m candle in 40 ms of wall time
STREAM = "xrpusdt@kline_5m"


def test_fault_spec_syntax() -> None:
    spec = FaultSpec.parse("drop=0.01, stall=0.005:10s,garbage=0.01,dup=0.01,reorder=0.01,"
                           "http429=0.02,http418=0.001,http5xx=0.02,slow=0.05:250ms")
    assert spec.faults["stall"].duration_s == 10.0
    assert spec.faults["slow"].duration_s == 0.25
    assert spec.faults["http418"].duration_s == 5.0  # the default ban
    assert spec.faults["drop"].probability == 0.01
    for bad, named in [("explode=0.1", "explode"), ("drop=2", "drop=2"),
                       ("drop=x", "drop=x"), ("stall=0.1:ten", "ten"), ("drop", "drop")]:
        with pytest.raises(FaultSpecError, match=named):
            FaultSpec.parse(bad)


def test_faults_are_seeded() -> None:
    def rolls(seed: int) -> list[bool]:
        f = Faults("drop=0.3", seed)
        return [f.roll("drop") is not None for _ in range(200)]

    assert rolls(7) == rolls(7)
    assert rolls(7) != rolls(8)
    assert 30 < sum(rolls(7)) < 90


async def test_drop_closes_abruptly(start_sim: StartSim) -> None:
    sim = await start_sim(live=3, paused=True, speed=FAST, faults="drop=1")
    async with connect(f"{sim.ws_url}/market/ws/{STREAM}") as ws:
        sim.resume()
        with pytest.raises(ConnectionClosedError) as gone, trio.fail_after(5):
            await ws.recv()
    assert gone.value.rcvd is None  # no close frame: the TCP link just ended
    assert sim.faults.counts["drop"] == 1


async def test_garbage_sends_a_malformed_frame_first(start_sim: StartSim) -> None:
    sim = await start_sim(live=2, paused=True, speed=FAST, faults="garbage=1")
    async with connect(f"{sim.ws_url}/market/ws/{STREAM}") as ws:
        sim.resume()
        with trio.fail_after(5):
            bad, good = await ws.recv(), await ws.recv()
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad)
    assert json.loads(good)["e"] == "kline"
    assert good.startswith(bad)


async def test_dup_repeats_closed_klines_only(start_sim: StartSim) -> None:
    sim = await start_sim(live=3, paused=True, speed=FAST, faults="dup=1")
    frames = []
    async with connect(f"{sim.ws_url}/market/ws/{STREAM}") as ws:
        sim.resume()
        with trio.fail_after(5):
            while len([f for f in frames if f["k"]["x"]]) < 6:
                frames.append(json.loads(await ws.recv()))
    closed = [f["k"]["t"] for f in frames if f["k"]["x"]]
    assert closed == [t for t in TIMES[-3:] for _ in (1, 2)]
    assert len(frames) == 6 + 3 * 3  # open updates not repeated


async def test_reorder_swaps_frames_and_loses_none(start_sim: StartSim) -> None:
    sim = await start_sim(live=3, paused=True, speed=FAST, faults="reorder=1")
    frames = []
    async with connect(f"{sim.ws_url}/market/ws/{STREAM}") as ws:
        sim.resume()
        with trio.fail_after(5):
            while len(frames) < 4 * 3:
                frames.append(json.loads(await ws.recv()))
    order = [(f["k"]["t"], f["E"]) for f in frames]
    assert order != sorted(order)  # out of order on the wire ...
    assert sorted(order) == sorted(set(order))  # ... each exactly once
    assert sim.faults.counts["reorder"] >= 1


async def test_stall_silences_both_directions_then_resumes(start_sim: StartSim) -> None:
    sim = await start_sim(live=3, paused=True, speed=FAST, faults="stall=1:0.4s")
    async with connect(f"{sim.ws_url}/market/ws/{STREAM}") as ws:
        t0 = trio.current_time()
        sim.resume()
        with trio.fail_after(5):
            while not sim.faults.counts["stall"]:
                await trio.sleep(0.005)
        sim.set_faults(None)
        pong = await ws.ping()
        with trio.move_on_after(0.2) as waited:
            await pong.wait()
        assert waited.cancelled_caught, "a stalled connection answered a ping"
        with trio.fail_after(5):
            first = json.loads(await ws.recv())
            await pong.wait()  # answered once the stall ended
        assert trio.current_time() - t0 >= 0.4
        assert first["k"]["t"] == TIMES[-3]
        with trio.fail_after(5):  # the same connection carries on
            while not (f := json.loads(await ws.recv()))["k"]["x"]:
                pass
        assert f["k"]["t"] == TIMES[-3]


async def test_http429_and_http5xx(start_sim: StartSim) -> None:
    sim = await start_sim(faults="http429=1:2s")
    async with httpx.AsyncClient(base_url=sim.url) as client:
        r = await client.get("/fapi/v1/time")
        assert (r.status_code, r.headers["Retry-After"], r.json()["code"]) == (429, "2", -1003)
        assert "X-MBX-USED-WEIGHT-1M" in r.headers
        sim.set_faults("http5xx=1")
        r = await client.get("/fapi/v1/time")
        assert r.status_code in (500, 502, 503, 504) and r.json()["code"] == -1001
        sim.set_faults(None)
        assert (await client.get("/fapi/v1/time")).status_code == 200


async def test_http418_bans_every_request_until_it_ends(start_sim: StartSim) -> None:
    sim = await start_sim(faults="http418=1:0.3s")
    async with httpx.AsyncClient(base_url=sim.url) as client:
        t0 = trio.current_time()
        r = await client.get("/fapi/v1/time")
        assert r.status_code == 418 and int(r.headers["Retry-After"]) >= 1
        sim.set_faults(None)
        r = await client.get("/fapi/v1/exchangeInfo")
        assert r.status_code == 418  # still banned, though the fault is off
        with trio.fail_after(5):
            while (await client.get("/fapi/v1/time")).status_code == 418:
                await trio.sleep(0.02)
        assert trio.current_time() - t0 >= 0.3


async def test_slow_delays_answers(start_sim: StartSim) -> None:
    sim = await start_sim(faults="slow=1:0.3s")
    async with httpx.AsyncClient(base_url=sim.url) as client:
        t0 = trio.current_time()
        r = await client.get("/fapi/v1/time")
        assert r.status_code == 200 and trio.current_time() - t0 >= 0.3


async def test_fault_sequence_is_seeded_over_the_wire(start_sim: StartSim) -> None:
    async def statuses(seed: int) -> list[int]:
        sim = await start_sim(faults="http5xx=0.5", seed=seed)
        async with httpx.AsyncClient(base_url=sim.url) as client:
            return [(await client.get("/fapi/v1/time")).status_code for _ in range(30)]

    first = await statuses(11)
    assert first == await statuses(11)
    assert {200} < set(first)  # some failed, some did not
