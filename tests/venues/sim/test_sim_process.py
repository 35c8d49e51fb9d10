"""`qtraderd exchange-sim` as a real subprocess: the listening line and URL file, the end
of data, the linger, exit 0 on its own and on SIGTERM, exit 2 on bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from qtraderd.cli import main
from tests.conftest import REPO
from tests.venues.sim.sim_helpers import TIMES, XRP

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
START = "2021-11-21T22:00Z"  # the last 7 candles of XRPUSDT-5m.csv are live
LIVE = sum(t >= 1637532000000 for t in TIMES)


def sim_cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "qtraderd", "exchange-sim", "--csv", str(XRP), *extra]


async def read_line(proc: trio.Process, buf: bytearray) -> str:
    assert proc.stdout is not None
    while b"\n" not in buf:
        chunk = await proc.stdout.receive_some(4096)
        if not chunk:
            raise AssertionError(f"stdout ended; got {bytes(buf)!r}")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


async def test_serves_ends_lingers_and_exits_0(tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    # LIVE candles of 5 minutes in ~0.6 s of wall time
    speed = str(LIVE * 300 / 0.6)
    proc = await trio.lowlevel.open_process(
        sim_cmd("--start", START, "--speed", speed, "--port", "0", "--url-file", str(url_file),
                "--linger", "0.5"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    buf = bytearray()
    with trio.fail_after(10):
        first = await read_line(proc, buf)
        assert first.startswith("exchange-sim listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[1]
        assert url_file.read_text().strip() == url
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/fapi/v1/time")).json()["serverTime"] >= 1637532000000
            while await read_line(proc, buf) != "exchange-sim data ended":
                pass
            # lingering: still serving, every candle now closed and visible
            got = (await client.get("/fapi/v1/klines", params={
                "symbol": "XRPUSDT", "interval": "5m", "limit": 3})).json()
            assert [r[0] for r in got] == TIMES[-3:]
        t_end = trio.current_time()
        code = await proc.wait()
        assert code == 0
        assert trio.current_time() - t_end >= 0.3  # it lingered before leaving
    rest = bytes(buf) + (await proc.stdout.receive_some(65536) if proc.stdout else b"")
    assert b"exchange-sim stopped" in rest


async def test_hold_keeps_the_clock_at_start_until_the_first_connection() -> None:
    """A daemon started after the simulator misses no live candle: with --hold the clock
    stands at --start until someone connects, then runs."""
    speed = 300_000.0  # one 5m candle per millisecond once running
    proc = await trio.lowlevel.open_process(
        sim_cmd("--start", START, "--speed", str(speed), "--hold", "--linger", "30"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    buf = bytearray()
    try:
        with trio.fail_after(10):
            url = (await read_line(proc, buf)).rsplit(" ", 1)[1]
            await trio.sleep(0.3)  # held: no candle may close meanwhile (nothing to wait for)
            async with httpx.AsyncClient(base_url=url) as client:
                first = (await client.get("/fapi/v1/time")).json()["serverTime"]
                start = 1637532000000
                assert start <= first < start + 300_000 * 100  # 0.3 s running: 90,000 bars
                while (await client.get("/fapi/v1/time")).json()["serverTime"] == first:
                    await trio.sleep(0.01)  # then it runs
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await proc.wait()


async def test_sigterm_exits_0() -> None:
    proc = await trio.lowlevel.open_process(sim_cmd("--speed", "1"), stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, env=ENV)
    with trio.fail_after(10):
        assert (await read_line(proc, bytearray())).startswith("exchange-sim listening")
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
    assert proc.stderr is not None
    assert b"Traceback" not in await proc.stderr.receive_some(65536)


def test_bad_input_exits_2_naming_it_without_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(sim_cmd("--faults", "drop=0.1,boom=1"), capture_output=True,
                          text=True, env=ENV, timeout=30, check=False)
    assert done.returncode == 2
    assert "boom" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stdout == ""


@pytest.mark.parametrize(("args", "named"), [
    (["--csv", "/nonexistent/XRPUSDT-5m.csv"], "/nonexistent/XRPUSDT-5m.csv"),
    (["--csv", str(XRP), "--symbols", "DOGEUSDT"], "DOGEUSDT"),
    (["--csv", str(XRP), "--start", "2030-01-01"], "no candles"),
    (["--csv", str(XRP), "--start", "yesterday"], "--start"),
    (["--csv", str(XRP), "--faults", "stall=0.1:forever"], "forever"),
    (["--csv", str(XRP), "--interval", "1h"], "interval"),
    (["--state-dir", "/nonexistent-state"], "/nonexistent-state"),
])
def test_bad_inputs(args: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["exchange-sim", *args]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_port_in_use_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["exchange-sim", "--csv", str(XRP), "--port", str(port)]) == 2
    assert f"--port {port}" in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["exchange-sim", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--state-dir", "--csv", "--symbols", "--interval", "--start", "--end",
                   "--speed", "--port", "--faults", "--seed", "--url-file", "--linger"):
        assert option in out
