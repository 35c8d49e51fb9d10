"""Instruments: the exchangeInfo parser on a real payload, bundled and state-dir definitions,
and the refusal of a symbol nobody defined."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qtraderd.core import instruments as ins
from qtraderd.venues.replay import stored_symbols
from tests.conftest import DEMO_SYMBOLS, OHLCV


def test_exchange_info_parser_on_the_shared_payload(binance_dir: Path) -> None:
    payload = json.loads((binance_dir / "http" / "exchange_info.json").read_text())
    defs = ins.from_exchange_info(payload)
    assert set(defs) == {"BTCUSDT", "ETHUSDT", "BTCUSDT_220325"}
    btc = defs["BTCUSDT"]
    assert (btc.base, btc.quote) == ("BTC", "USDT")
    assert (btc.tick_size, btc.step_size, btc.min_qty, btc.min_notional) == (
        0.1, 0.001, 0.001, 10.0)
    raw = {f["filterType"]: f for f in payload["symbols"][1]["filters"]}
    eth = defs["ETHUSDT"]
    assert eth.tick_size == float(raw["PRICE_FILTER"]["tickSize"])
    assert eth.step_size == float(raw["LOT_SIZE"]["stepSize"])
    assert eth.min_notional == float(raw["MIN_NOTIONAL"]["notional"])


def test_every_bundled_and_shared_candle_file_has_a_definition() -> None:
    bundled = ins.bundled()
    shared = {p.name.split("-")[0] for p in OHLCV.glob("*.csv")}
    demo = {p.name.split("-")[0] for p in
            (Path(ins.__file__).parents[1] / "data").glob("*.csv.gz")}
    assert shared | demo | set(DEMO_SYMBOLS) <= set(bundled)
    assert ins.quote_asset("ETHBTC") == "BTC" and ins.instrument("XRPUSDT").base == "XRP"
    # their filters are unknown: 0, never invented
    assert all(i.tick_size == i.step_size == i.min_notional == 0.0 for i in bundled.values())


def test_unknown_symbol_is_refused_with_how_to_define_it() -> None:
    with pytest.raises(ins.InstrumentError) as err:
        ins.quote_asset("FOOBAR")
    msg = str(err.value)
    assert "'FOOBAR' has no instrument definition" in msg
    assert "STATE_DIR/instruments.toml" in msg and "[FOOBAR]" in msg
    # no guessing from the suffix: a plausible name is refused just the same
    with pytest.raises(ins.InstrumentError, match="DOGEBTC"):
        ins.instrument("DOGEBTC")


def test_state_dir_definitions_round_trip(tmp_path: Path) -> None:
    defs = [ins.Instrument("ZZZ1BTC", "ZZZ1", "BTC"),
            ins.Instrument("ZZZUSDT", "ZZZ", "USDT", 0.01, 0.1, 0.1, 5.0)]
    ins.write_file(tmp_path / ins.FILE_NAME, defs)
    assert list(ins.read_file(tmp_path / ins.FILE_NAME).values()) == defs
    assert ins.load_state_dir(tmp_path) == 2
    assert ins.quote_asset("ZZZ1BTC") == "BTC" and ins.instrument("ZZZUSDT") == defs[1]
    assert ins.load_state_dir(tmp_path / "none") == 0


@pytest.mark.parametrize(("text", "msg"), [
    ('[AB]\nbase = "A"\n', "needs base and quote"),
    ('[AB]\nbase = "A"\nquote = "B"\ntick = 1\n', "unknown key"),
    ('[AB]\nbase = "A"\nquote = "B"\ntick_size = "x"\n', "AB"),
    ('[AB\n', "instruments.toml"),
])
def test_bad_definition_files_name_the_problem(tmp_path: Path, text: str, msg: str) -> None:
    (tmp_path / ins.FILE_NAME).write_text(text)
    with pytest.raises(ins.InstrumentError, match=msg):
        ins.load_state_dir(tmp_path)


def test_the_daemon_refuses_a_stored_symbol_without_a_definition(tmp_path: Path) -> None:
    import trio

    from qtraderd.core.config import load, with_changes
    from qtraderd.runtime.daemon import Daemon, DaemonError
    from qtraderd.store.db import connect
    from tests.helpers import read_ohlcv, store_bars

    conn = connect(tmp_path / "s")
    store_bars(conn, "QQQXBTC", "5m", read_ohlcv(OHLCV / "ETHBTC-5m.csv")[:50])
    assert stored_symbols(conn, "5m") == ["QQQXBTC"]
    conn.close()
    d = Daemon(with_changes(load(env={}), learning={"enabled": False}), tmp_path / "s",
               tmp_path / "m", socket_path=tmp_path / "x.sock", progress_every_s=0)
    with pytest.raises(DaemonError, match="'QQQXBTC' has no instrument definition"):
        trio.run(d.run)
