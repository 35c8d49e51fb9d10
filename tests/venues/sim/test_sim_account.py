"""exchange-sim's signed account side over real sockets: API key, HMAC signature and
recvWindow checks with Binance's codes, the account endpoints in the shared payloads'
shapes, leverage / margin type / position mode semantics, `/sim/state`, and the random
key pair the real process prints."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import trio

from qtraderd.venues.sim.account import MAX_LEVERAGE, Position, max_notional
from tests.venues.sim.conftest import StartSim
from tests.venues.sim.sim_helpers import TIMES, renamed_copy, same_shape, shared
from tests.venues.sim.test_sim_process import ENV, read_line, sim_cmd

KEY, SECRET = "test-key-0123", "test-secret-4567"
NOW = TIMES[-6]  # paused simulators stand at the first live candle's open time


class Signed:
    """A tiny signed client (the test's own: query string, then its HMAC)."""

    def __init__(self, client: httpx.AsyncClient, key: str = KEY, secret: str = SECRET,
                 ) -> None:
        self.client, self.key, self.secret = client, key, secret

    async def call(self, method: str, path: str, timestamp: int = NOW,
                   signature: str | None = None, **params: Any) -> httpx.Response:
        query = urlencode({**params, "timestamp": timestamp})
        sig = signature or hmac.new(self.secret.encode(), query.encode(),
                                    hashlib.sha256).hexdigest()
        return await self.client.request(method, f"{path}?{query}&signature={sig}",
                                         headers={"X-MBX-APIKEY": self.key})

    async def ok(self, method: str, path: str, **params: Any) -> Any:
        r = await self.call(method, path, **params)
        assert r.status_code == 200, r.text
        return r.json()


async def _sim(start_sim: StartSim, **kw: Any) -> Any:
    return await start_sim(paused=True, api_key=KEY, api_secret=SECRET, **kw)


async def test_key_signature_and_timestamp_are_checked(start_sim: StartSim) -> None:
    sim = await _sim(start_sim)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        good = Signed(client)
        assert (await good.ok("GET", "/fapi/v2/balance"))[0]["asset"] == "USDT"
        r = await client.get("/fapi/v2/balance", params={"timestamp": NOW})
        assert (r.status_code, r.json()["code"]) == (401, -2014)  # no key header
        r = await Signed(client, key="other").call("GET", "/fapi/v2/balance")
        assert (r.status_code, r.json()["code"]) == (401, -2015)
        r = await Signed(client, secret="other").call("GET", "/fapi/v2/balance")
        assert r.status_code == 400
        assert r.json() == {"code": -1022, "msg": "Signature for this request is not valid."}
        # a signature over other parameters is no signature for these
        sig = hmac.new(SECRET.encode(), f"timestamp={NOW}".encode(),
                       hashlib.sha256).hexdigest()
        r = await good.call("GET", "/fapi/v2/positionRisk", signature=sig, symbol="XRPUSDT")
        assert r.json()["code"] == -1022
        r = await good.call("GET", "/fapi/v2/balance", timestamp=NOW - 5001)
        assert r.status_code == 400
        assert r.json() == {"code": -1021, "msg": "Timestamp for this request is outside "
                                                  "of the recvWindow."}
        assert (await good.call("GET", "/fapi/v2/balance", timestamp=NOW - 4000)).is_success
        r = await good.call("GET", "/fapi/v2/balance", timestamp=NOW - 8000, recvWindow=10000)
        assert r.is_success  # a wider recvWindow admits it
        r = await good.call("GET", "/fapi/v2/balance", timestamp=NOW + 2000)
        assert r.json()["code"] == -1021  # more than 1 s ahead of the exchange
        r = await good.call("GET", "/fapi/v2/balance", recvWindow=60001)
        assert r.json()["code"] == -1131
        # the sim clock is the reference: a stamp from /fapi/v1/time passes
        server = (await client.get("/fapi/v1/time")).json()["serverTime"]
        assert (await good.call("GET", "/fapi/v2/account", timestamp=server)).is_success
        # parameters in a form body are signed and read too (query + body, Binance's rule)
        body = urlencode({"symbol": "XRPUSDT", "leverage": 7, "timestamp": NOW})
        sig = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
        r = await client.post("/fapi/v1/leverage", content=f"{body}&signature={sig}",
                              headers={"X-MBX-APIKEY": KEY, "Content-Type":
                                       "application/x-www-form-urlencoded"})
        assert r.json() == {"leverage": 7, "maxNotionalValue": str(max_notional(7)),
                            "symbol": "XRPUSDT"}


async def test_recv_window_counts_wall_time_at_speed(start_sim: StartSim) -> None:
    """At speed 100 a 5000 ms window admits a stamp 100 x 5000 sim ms old (5 wall s)."""
    sim = await _sim(start_sim, speed=100)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        good = Signed(client)
        assert (await good.call("GET", "/fapi/v2/balance", timestamp=NOW - 400_000)).is_success
        r = await good.call("GET", "/fapi/v2/balance", timestamp=NOW - 600_000)
        assert r.json()["code"] == -1021


async def test_endpoints_have_the_shared_payloads_shapes(start_sim: StartSim) -> None:
    sim = await _sim(start_sim)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        s = Signed(client)
        account = await s.ok("GET", "/fapi/v2/account")
        same_shape(account, shared("http/account_info_v2.json"))
        assert account["totalWalletBalance"] == "10000.00000000"
        assert [p["symbol"] for p in account["positions"]] == ["XRPUSDT"]
        balance = await s.ok("GET", "/fapi/v2/balance")
        same_shape(balance, shared("http/balance.json"))
        assert balance[0]["availableBalance"] == "10000.00000000"
        risk = await s.ok("GET", "/fapi/v2/positionRisk")
        same_shape(risk, shared("http/position_risk.json"))
        assert (risk[0]["positionAmt"], risk[0]["leverage"], risk[0]["marginType"],
                risk[0]["positionSide"]) == ("0.0", "20", "cross", "BOTH")
        assert float(risk[0]["markPrice"]) > 0
        assert await s.ok("GET", "/fapi/v1/openOrders") == []
        assert await s.ok("GET", "/fapi/v1/openOrders", symbol="XRPUSDT") == []
        algo = await s.ok("GET", "/fapi/v1/openAlgoOrders")
        assert algo == [] and isinstance(shared("http/open_algo_orders.json"), list)
        for path in ("/fapi/v2/positionRisk", "/fapi/v1/openOrders",
                     "/fapi/v1/openAlgoOrders"):
            r = await s.call("GET", path, symbol="NOPEUSDT")
            assert (r.status_code, r.json()["code"]) == (400, -1121), path
        r = await s.call("POST", "/fapi/v1/leverage", symbol="NOPEUSDT", leverage=5)
        assert r.json()["code"] == -1121
        # weights as Binance counts them: account 5, all open orders 40
        r = await s.call("GET", "/fapi/v2/account")
        before = int(r.headers["X-MBX-USED-WEIGHT-1M"])
        r = await s.call("GET", "/fapi/v1/openOrders")
        assert int(r.headers["X-MBX-USED-WEIGHT-1M"]) == before + 40
        state = (await client.get("/sim/state")).json()  # unsigned
        assert state["funding"]["fees"] == {} and state["faults"] == {}
        assert {k: v for k, v in state.items() if k not in ("faults", "funding")} == {
            "orders": [], "algo_orders": [], "positions": [],
            "balances": {"USDT": "10000.00000000"}}


async def test_balances_option_and_a_position_show_in_every_view(start_sim: StartSim,
                                                                  tmp_path: Any) -> None:
    sim = await _sim(start_sim, balances={"USDT": 250.5, "BNB": 1.0},
                     csv_files=[renamed_copy(tmp_path, "AAAUSDT"),
                                renamed_copy(tmp_path, "XRPUSDT")])
    acc = sim.account
    mark = acc.mark_price("XRPUSDT")
    acc.positions[("XRPUSDT", "BOTH")] = Position("XRPUSDT", "BOTH", -100.0, mark + 0.01, NOW)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        s = Signed(client)
        balance = await s.ok("GET", "/fapi/v2/balance")
        assert [(b["asset"], b["balance"]) for b in balance] == [
            ("USDT", "250.50000000"), ("BNB", "1.00000000")]
        risk = await s.ok("GET", "/fapi/v2/positionRisk", symbol="XRPUSDT")
        assert len(risk) == 1 and risk[0]["positionAmt"] == "-100.0"
        assert float(risk[0]["unRealizedProfit"]) == pytest.approx(1.0)  # short, mark lower
        account = await s.ok("GET", "/fapi/v2/account")
        same_shape(account, shared("http/account_info_v2.json"))
        assert float(account["totalUnrealizedProfit"]) == pytest.approx(1.0)
        assert float(account["totalInitialMargin"]) == pytest.approx(100 * mark / 20)
        state = (await client.get("/sim/state")).json()
        assert state["positions"] == [{"symbol": "XRPUSDT", "positionSide": "BOTH",
                                       "positionAmt": "-100.0",
                                       "entryPrice": f"{mark + 0.01:.4f}"}]
        assert state["balances"] == {"USDT": "250.50000000", "BNB": "1.00000000"}
        # an open position pins the margin type and the position mode
        r = await s.call("POST", "/fapi/v1/marginType", symbol="XRPUSDT",
                         marginType="ISOLATED")
        assert r.json()["code"] == -4048
        r = await s.call("POST", "/fapi/v1/positionSide/dual", dualSidePosition="true")
        assert r.json()["code"] == -4068
        assert (await s.ok("POST", "/fapi/v1/marginType", symbol="AAAUSDT",
                           marginType="ISOLATED"))["code"] == 200


async def test_leverage_margin_type_and_position_mode(start_sim: StartSim) -> None:
    sim = await _sim(start_sim)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        s = Signed(client)
        assert await s.ok("GET", "/fapi/v1/positionSide/dual") == {"dualSidePosition": False}
        r = await s.call("POST", "/fapi/v1/positionSide/dual", dualSidePosition="false")
        assert (r.status_code, r.json()) == (400, {"code": -4059, "msg": "No need to change "
                                                                        "position side."})
        assert (await s.ok("POST", "/fapi/v1/positionSide/dual",
                           dualSidePosition="true"))["code"] == 200
        assert await s.ok("GET", "/fapi/v1/positionSide/dual") == {"dualSidePosition": True}
        risk = await s.ok("GET", "/fapi/v2/positionRisk")
        assert [p["positionSide"] for p in risk] == ["LONG", "SHORT"]
        await s.ok("POST", "/fapi/v1/positionSide/dual", dualSidePosition="false")

        got = await s.ok("POST", "/fapi/v1/leverage", symbol="XRPUSDT", leverage=5)
        assert got == {"leverage": 5, "maxNotionalValue": str(max_notional(5)),
                       "symbol": "XRPUSDT"}
        risk = await s.ok("GET", "/fapi/v2/positionRisk", symbol="XRPUSDT")
        assert (risk[0]["leverage"], risk[0]["maxNotionalValue"]) == ("5", got[
            "maxNotionalValue"])
        assert max_notional(100) < max_notional(20) < max_notional(5)
        for bad in (0, MAX_LEVERAGE + 1):
            r = await s.call("POST", "/fapi/v1/leverage", symbol="XRPUSDT", leverage=bad)
            assert r.json()["code"] == -4028
        r = await s.call("POST", "/fapi/v1/leverage", symbol="XRPUSDT")
        assert r.json()["code"] == -1102

        r = await s.call("POST", "/fapi/v1/marginType", symbol="XRPUSDT",
                         marginType="CROSSED")
        assert (r.status_code, r.json()) == (400, {"code": -4046, "msg": "No need to change "
                                                                        "margin type."})
        assert (await s.ok("POST", "/fapi/v1/marginType", symbol="XRPUSDT",
                           marginType="ISOLATED")) == {"code": 200, "msg": "success"}
        risk = await s.ok("GET", "/fapi/v2/positionRisk", symbol="XRPUSDT")
        assert risk[0]["marginType"] == "isolated"
        account = await s.ok("GET", "/fapi/v2/account")
        assert account["positions"][0]["isolated"] is True
        r = await s.call("POST", "/fapi/v1/marginType", symbol="XRPUSDT",
                         marginType="ISOLATED")
        assert r.json()["code"] == -4046
        r = await s.call("GET", "/fapi/v1/marginType", symbol="XRPUSDT")
        assert r.status_code == 405


@pytest.mark.parametrize(("args", "named"), [
    (("--balance", "USDT=lots"), "USDT=lots"),
    (("--api-key", "k"), "--api-secret"),  # a key without its secret
])
def test_bad_key_or_balance_options_exit_2(args: tuple[str, ...], named: str) -> None:
    proc = subprocess.run(sim_cmd(*args), capture_output=True, text=True, env=ENV,
                          timeout=20)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr


async def test_process_prints_a_generated_key_pair_that_signs() -> None:
    proc = await trio.lowlevel.open_process(
        sim_cmd("--port", "0", "--linger", "0", "--hold", "--balance", "USDT=42"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    buf = bytearray()
    try:
        with trio.fail_after(10):
            url = (await read_line(proc, buf)).rsplit(" ", 1)[1]
            words = (await read_line(proc, buf)).split()
            assert words[:3] == ["exchange-sim", "api", "key"] and words[4] == "secret"
            key, secret = words[3], words[5]
            assert len(key) == len(secret) == 64 and key != secret
            async with httpx.AsyncClient(base_url=url) as client:
                now = (await client.get("/fapi/v1/time")).json()["serverTime"]
                good = Signed(client, key, secret)
                balance = await good.ok("GET", "/fapi/v2/balance", timestamp=now)
                assert balance[0]["balance"] == "42.00000000"
                r = await Signed(client).call("GET", "/fapi/v2/balance", timestamp=now)
                assert r.status_code == 401
    finally:
        proc.terminate()
        with trio.fail_after(10):
            assert await proc.wait() == 0
