"""Account setup at a live start, against exchange-sim on loopback: one-way mode checked
(hedge mode refused with what to change), Multi-Assets mode noted (and ISOLATED refused
under it), margin type and leverage set per symbol and visible in the simulator's state,
-4046 "No need to change margin type" taken as success, a margin type locked by an open
position kept with a warning, Binance refusals named; one log line per fact. Also the
`exchange.margin_type` config key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from qtraderd.core.config import ConfigError, load
from qtraderd.venues.binance.account_setup import (
    AccountSetupError,
    exchange_leverage,
    setup_account,
)
from qtraderd.venues.binance.rest import BinanceAPIError, RestClient
from qtraderd.venues.binance.signing import ApiCredentials
from qtraderd.venues.sim import SimServer, load_market
from tests.venues.sim.sim_helpers import TIMES, XRP, renamed_copy
from tests.venues.sim.test_sim_account import KEY, SECRET

SYMS = ["XRPUSDT", "ALTUSDT"]


async def _sim(nursery: trio.Nursery, tmp_path: Path) -> SimServer:
    market = load_market(csv=[XRP, renamed_copy(tmp_path, "ALTUSDT")], start_ms=TIMES[-6])
    sim = SimServer(market, paused=True, api_key=KEY, api_secret=SECRET)
    await nursery.start(sim.serve)
    return sim


def _rest(sim: SimServer) -> RestClient:
    return RestClient(sim.url, credentials=ApiCredentials(KEY, SECRET))


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "qtraderd.binance.account"]


async def test_sets_leverage_and_margin_type_per_symbol(
        nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sim = await _sim(nursery, tmp_path)
    assert sim.account.settings["XRPUSDT"].margin_type == "CROSSED"  # the sim's default
    async with _rest(sim) as rest:
        got = await setup_account(rest, SYMS, leverage=3, margin_type="ISOLATED")
        assert (got.position_mode, got.multi_assets) == ("one-way", False)
        assert [(b.asset, b.wallet_balance) for b in got.balances] == [("USDT", 10_000.0)]
        assert {s: (x.leverage, x.margin_type) for s, x in got.symbols.items()} == {
            "XRPUSDT": (3, "ISOLATED"), "ALTUSDT": (3, "ISOLATED")}
        for s in SYMS:  # the exchange's own state, not only what we were told
            st = sim.account.settings[s]
            assert (st.leverage, st.margin_type) == (3, "ISOLATED")
        assert _lines(caplog) == [
            f"account setup: account of API key ...{KEY[-4:]} at {sim.url}",
            "account setup: position mode one-way, multi-assets off",
            "account setup: balances USDT 10000.00 (available 10000.00)",
            "account setup: XRPUSDT leverage 3x ISOLATED",
            "account setup: ALTUSDT leverage 3x ISOLATED"]
        # a restart: the margin type is already ISOLATED, Binance answers -4046: success
        again = await setup_account(rest, SYMS, leverage=5, margin_type="ISOLATED")
        assert again.symbols["ALTUSDT"].leverage == 5
        assert sim.account.settings["ALTUSDT"].leverage == 5


async def test_no_need_to_change_margin_type_is_success(nursery: trio.Nursery,
                                                        tmp_path: Path) -> None:
    sim = await _sim(nursery, tmp_path)
    async with _rest(sim) as rest:  # the sim starts CROSSED: the first call gets -4046
        got = await setup_account(rest, ["XRPUSDT"], leverage=2, margin_type="crossed")
    assert list(got.symbols) == ["XRPUSDT"]
    assert (got.symbols["XRPUSDT"].margin_type, sim.account.settings["XRPUSDT"].leverage) \
        == ("CROSSED", 2)


async def test_hedge_mode_is_refused_with_what_to_change(nursery: trio.Nursery,
                                                         tmp_path: Path) -> None:
    sim = await _sim(nursery, tmp_path)
    async with _rest(sim) as rest:
        await rest.signed("POST", "/fapi/v1/positionSide/dual",
                          {"dualSidePosition": "true"})
        with pytest.raises(AccountSetupError) as e:
            await setup_account(rest, SYMS, leverage=3, margin_type="ISOLATED")
    msg = str(e.value)
    assert "hedge position mode" in msg and "one-way" in msg
    assert "dualSidePosition=false" in msg
    assert sim.account.settings["XRPUSDT"].leverage == 20  # nothing was changed


async def test_multi_assets_mode_is_noted_and_refuses_isolated(
        nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sim = await _sim(nursery, tmp_path)
    sim.account.multi_assets = True
    async with _rest(sim) as rest:
        with pytest.raises(AccountSetupError, match=r'exchange\.margin_type = "CROSSED"'):
            await setup_account(rest, SYMS, leverage=3, margin_type="ISOLATED")
        assert sim.account.settings["XRPUSDT"].margin_type == "CROSSED"
        got = await setup_account(rest, SYMS, leverage=3, margin_type="CROSSED")
        assert got.multi_assets
        # the simulator refuses ISOLATED under Multi-Assets the way Binance does
        with pytest.raises(BinanceAPIError) as e:
            await rest.signed("POST", "/fapi/v1/marginType",
                              {"symbol": "XRPUSDT", "marginType": "ISOLATED"})
        assert e.value.code == -4168
    assert "account setup: position mode one-way, multi-assets on" in _lines(caplog)


async def test_locked_margin_type_is_kept_and_refusals_are_named(
        nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sim = await _sim(nursery, tmp_path)
    async with _rest(sim) as rest:
        await rest.signed("POST", "/fapi/v1/order", {"symbol": "ALTUSDT", "side": "BUY",
                                                     "type": "MARKET", "quantity": "100"})
        got = await setup_account(rest, SYMS, leverage=4, margin_type="ISOLATED")
        # an open position locks ALTUSDT's margin type (-4048): kept, warned, not fatal
        assert {s: x.margin_type for s, x in got.symbols.items()} == {
            "XRPUSDT": "ISOLATED", "ALTUSDT": "CROSSED"}
        assert got.symbols["ALTUSDT"].leverage == 4
        assert any("ALTUSDT margin type not changed to ISOLATED" in m and "(-4048)" in m
                   for m in _lines(caplog))
        with pytest.raises(AccountSetupError) as e:
            await setup_account(rest, ["NOPEUSDT"], leverage=4, margin_type="ISOLATED")
        assert "NOPEUSDT" in str(e.value) and "-1121" in str(e.value)
        with pytest.raises(ValueError, match="leverage"):
            await setup_account(rest, SYMS, leverage=126, margin_type="ISOLATED")
        with pytest.raises(ValueError, match="margin_type"):
            await setup_account(rest, SYMS, leverage=3, margin_type="PORTFOLIO")


def test_exchange_leverage_rounds_up() -> None:
    assert [exchange_leverage(x) for x in (1.0, 2.5, 3.0, 0.5)] == [1, 3, 3, 1]
    with pytest.raises(ValueError):
        exchange_leverage(0.0)


def test_margin_type_config_key(tmp_path: Path) -> None:
    assert load(env={}).exchange.margin_type == "ISOLATED"
    assert load(env={"QT_EXCHANGE_MARGIN_TYPE": "CROSSED"}).exchange.margin_type == "CROSSED"
    p = tmp_path / "c.toml"
    p.write_text("[exchange]\nmargin_type = 'cross'\n")
    with pytest.raises(ConfigError) as e:
        load(p, env={})
    assert "exchange.margin_type" in str(e.value) and "'ISOLATED', 'CROSSED'" in str(e.value)
