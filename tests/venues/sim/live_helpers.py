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


KEY, SECRET = "live-test-key", "live-test-secret"
# Tiny test models rarely clear the costs: a loose entry rule so that runs trade.
LOOSE = "[sizing]\nmin_edge_pct = -0.5\nmin_confidence = 0.25\n[learning]\nenabled = false\n"


def live_env() -> dict[str, str]:
    """The subprocess environment with the simulator's key pair as the credentials."""
    return {**env(), "QT_BINANCE_API_KEY": KEY, "QT_BINANCE_API_SECRET": SECRET}


def sim_keys() -> list[str]:
    return ["--api-key", KEY, "--api-secret", SECRET, "--balance", "BTC=1"]


async def sim_state(url: str) -> dict:
    """The simulator's book (`GET /sim/state`)."""
    import httpx

    async with httpx.AsyncClient(base_url=url) as http:
        return (await http.get("/sim/state")).json()


def book_problems(state: dict) -> list[str]:
    """What breaks the live invariants on the simulator's book: an order client id
    accepted twice (one intent, at most one order); an open position without exactly one
    stop and one take-profit; an open algo order on a symbol without a position."""
    problems = []
    accepted: dict[str, int] = {}
    for o in state["orders"]:
        if o.get("status") != "REJECTED":
            accepted[o["clientOrderId"]] = accepted.get(o["clientOrderId"], 0) + 1
    problems += [f"order {cid} executed {n} times" for cid, n in accepted.items() if n > 1]
    held = {p["symbol"] for p in state["positions"] if float(p["positionAmt"]) != 0.0}
    open_algos: dict[str, list[str]] = {}
    for a in state["algo_orders"]:
        if a["status"] == "NEW":
            open_algos.setdefault(a["symbol"], []).append(a["type"])
    for sym in held:
        kinds = sorted(open_algos.get(sym, []))
        if kinds != ["STOP_MARKET", "TAKE_PROFIT_MARKET"]:
            problems.append(f"{sym}: open position protected by {kinds}")
    problems += [f"{sym}: algo orders {kinds} without a position"
                 for sym, kinds in open_algos.items() if sym not in held]
    return problems


def sim_positions(state: dict) -> dict[str, float]:
    return {p["symbol"]: float(p["positionAmt"]) for p in state["positions"]
            if float(p["positionAmt"]) != 0.0}
