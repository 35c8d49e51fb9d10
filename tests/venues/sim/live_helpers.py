"""The simulator and the daemon as real subprocesses on loopback, for the live proofs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import trio

from tests.conftest import REPO

DATA = REPO / "qtraderd" / "data"
M5 = 300_000


def env() -> dict[str, str]:
    """The test environment without the daemon's own variables (a QT_* set for the test
    run must not leak into the subprocesses)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("QT_")
           and k not in ("CREDENTIALS_DIRECTORY", "RUNTIME_DIRECTORY", "NOTIFY_SOCKET")}
    out["PYTHONPATH"] = str(REPO)
    return out


async def start_sim(args: list[str], tmp: Path, log_name: str = "sim.log"
                    ) -> tuple[trio.Process, str, Path]:
    """`qtraderd exchange-sim ARGS --port 0 --url-file F` started; (process, url, log)."""
    url_file, log = tmp / "sim.url", tmp / log_name
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "qtraderd", "exchange-sim", *args, "--port", "0",
         "--url-file", str(url_file)], stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env=env())
    with trio.fail_after(20):
        while not url_file.exists():  # written atomically before the listening line
            assert proc.poll() is None, log.read_text()
            await trio.sleep(0.02)
    return proc, url_file.read_text().strip(), log


def live_config(path: Path, url: str, symbols: tuple[str, ...], *, speed: float, end: str,
                exchange: str = "", extra: str = "") -> Path:
    """A dry run on the simulator: paper mode, the Binance feed at its URL and speed;
    `exchange`: more [exchange] keys, `extra`: more sections."""
    ws = url.replace("http://", "ws://")
    path.write_text(f"""
mode = "paper"
[feed]
source = "binance"
symbols = {list(symbols)!r}
interval = "5m"
speed = {speed!r}
end = "{end}"
[exchange]
environment = "custom"
base_url = "{url}"
ws_url = "{ws}"
{exchange}
[plugins]
enabled = false
{extra}
""".replace("'", '"'))
    return path


def daemon_cmd(cfg: Path, state: Path, models: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qtraderd", "run", "--config", str(cfg), "--state-dir",
            str(state), "--models-dir", str(models), *extra]


def outages(log_text: str) -> list[float]:
    """Seconds each dropped stream connection stayed down, from the daemon's log."""
    return [float(x) for x in re.findall(r"stream connection \d+ up .* after ([\d.]+) s down",
                                         log_text)]
