"""The real daemon (`python -m qtraderd run`, a subprocess) on the Binance feed against the
fake market on loopback: a dry run that ends complete in the bars table with the feed's
state in `ctl status`, and start-up refusing unknown or not-TRADING symbols (exit 2)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import trio

from qtraderd.control.client import CtlError, request
from qtraderd.core.clock import iso
from tests.venues.binance.market import Market
from tests.venues.sim.live_helpers import daemon_cmd, env

M1 = 60_000


def write_config(path: Path, market: Market, symbols: tuple[str, ...], *, end_ms: int,
                 warmup_bars: int) -> Path:
    path.write_text(f"""
mode = "paper"
[feed]
source = "binance"
symbols = {list(symbols)!r}
interval = "{market.interval}"
speed = {market.speed}
end = "{iso(end_ms)}"
[exchange]
environment = "custom"
base_url = "{market.http.url}"
ws_url = "{market.ws.url}"
warmup_days = {warmup_bars * M1 / 86_400_000!r}
close_deadline_s = 1.0
[learning]
eval_every_hours = 5000
[plugins]
enabled = false
""".replace("'", '"'))
    return path


def command(cfg: Path, state: Path) -> list[str]:
    return daemon_cmd(cfg, state, state / "models", "--no-train")


async def test_dry_run_daemon_on_the_binance_feed(tmp_path: Path) -> None:
    symbols = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
    # 1m bars at 1200x: one every 50 ms; 200 bars of history, 80 live (4 s: a start-up
    # of up to 3 s on a loaded machine still leaves the 20 live steps asserted below)
    m = Market(symbols, history=200, live=80, speed=1200.0)
    end = m.open_time(79)
    state = tmp_path / "state"
    log = (tmp_path / "daemon.log").open("wb")
    statuses: list[dict] = []
    async with trio.open_nursery() as n:
        await m.start(n)
        cfg = write_config(tmp_path / "c.toml", m, symbols, end_ms=end, warmup_bars=150)
        proc = await trio.lowlevel.open_process(command(cfg, state), stdout=log,
                                                stderr=subprocess.STDOUT, env=env(),
                                                cwd=tmp_path)
        sock = state / "qtraderd.sock"

        def ask() -> dict | None:
            try:
                reply = request(sock, "status", timeout_s=2)
            except CtlError:
                return None
            return reply.get("result") if reply.get("ok") else None

        with trio.fail_after(40):
            while proc.poll() is None:  # polling ctl status until the feed has steps
                st = await trio.to_thread.run_sync(ask)
                if st and st.get("steps", 0) > 3 and st["feed"]["connected"]:
                    statuses.append({**st, "market_ms": m.now_ms()})
                    break
                await trio.sleep(0.1)
            code = await proc.wait()
        n.cancel_scope.cancel()
    log.close()
    out = (tmp_path / "daemon.log").read_text()
    assert code == 0, out[-3000:]
    assert statuses, "ctl status never showed a connected feed with steps\n" + out[-3000:]
    st = statuses[0]
    assert st["source"] == "binance" and st["mode"] == "paper"
    feed = st["feed"]
    # 150 closed bars per symbol, less the newest when the warm-up asked within the clock
    # guard of its close (a candle is taken as closed only when it surely is on the
    # exchange's clock; the backfill after connect fetches it): the gap check below holds
    assert feed["connected"] is True and feed["warmup_bars"] >= 3 * (150 - 1)
    assert isinstance(feed["clock_offset_ms"], int) and feed["last_frame_age_s"] is not None
    assert feed["rest_weight_used"] >= 0 and feed["late_bars"] == 0
    assert abs(st["clock_ms"] - st["market_ms"]) < 300_000  # the exchange's clock (1200x)
    assert "warm-up done:" in out and "backfill after connect:" in out
    db = sqlite3.connect(state / "qtraderd.db")
    for sym in symbols:
        times = [r[0] for r in db.execute(
            "SELECT open_time FROM bars WHERE symbol=? AND interval='1m' ORDER BY open_time",
            (sym,))]
        assert times[-1] == end, sym
        assert times == list(range(times[0], end + M1, M1)), f"{sym}: gap in bars"
        assert times[0] < m.open_time(0) and len(times) >= 150 + 20  # warm-up + live
    run = db.execute("SELECT status, bars, last_ts, source FROM runs").fetchone()
    assert run[0] == "finished" and run[2] == end and run[3] == "binance"
    assert run[1] % 3 == 0 and run[1] >= 3 * 20  # whole steps, every symbol in each
    db.close()


async def test_unknown_or_halted_symbol_exits_2_naming_it(tmp_path: Path) -> None:
    m = Market(("BTCUSDT", "ETHUSDT"), history=5, live=50, statuses={"ETHUSDT": "BREAK"})
    async with trio.open_nursery() as n:
        await m.start(n)
        cfg = write_config(tmp_path / "c.toml", m, ("BTCUSDT", "ETHUSDT", "NOPEUSDT"),
                           end_ms=m.open_time(40), warmup_bars=5)
        with trio.fail_after(30):
            done = await trio.run_process(command(cfg, tmp_path / "state"), env=env(),
                                          capture_stdout=True, capture_stderr=True,
                                          check=False, cwd=tmp_path)
        n.cancel_scope.cancel()
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "config key 'feed.symbols': ETHUSDT is not trading on" in err
    assert "(status BREAK)" in err and "NOPEUSDT is not listed on" in err
    assert "Traceback" not in err
    assert not any(p.path == "/fapi/v1/klines" for p in m.http.requests)  # no warm-up
