"""README's "Try live mode locally", run exactly as written: its two commands (taken from
the README itself) — the simulator, then the daemon on examples/sim.toml — give a dry run
that predicts and paper-trades from its first live step, and both stop cleanly."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from qtraderd.control.client import CtlError, request
from tests.conftest import REPO
from tests.venues.sim.live_helpers import env


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("### Try live mode locally", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 2 and all(ln.startswith("qtraderd ") for ln in lines), lines
    return [[sys.executable, "-m", *shlex.split(ln.removesuffix("&").strip())]
            for ln in lines]


@pytest.mark.slow
async def test_the_readme_two_commands_dry_run_on_the_simulator(tmp_path: Path) -> None:
    sim_cmd, run_cmd = readme_commands()
    assert sim_cmd[3] == "exchange-sim" and run_cmd[3:6] == ["run", "--config",
                                                           "examples/sim.toml"]
    # the paths in the commands are relative to a checkout: give them one in a fresh place
    (tmp_path / "qtraderd").mkdir()
    (tmp_path / "qtraderd" / "data").symlink_to(REPO / "qtraderd" / "data")
    (tmp_path / "examples").symlink_to(REPO / "examples")
    sim = await trio.lowlevel.open_process(sim_cmd, cwd=tmp_path, env=env(),
                                           stdout=(tmp_path / "sim.log").open("wb"),
                                           stderr=subprocess.STDOUT)
    daemon: trio.Process | None = None
    sock = tmp_path / "sim-state" / "qtraderd.sock"
    seen: dict = {}
    try:
        with trio.fail_after(20):
            while "listening" not in (tmp_path / "sim.log").read_text():
                assert sim.poll() is None, (tmp_path / "sim.log").read_text()
                await trio.sleep(0.05)
        daemon = await trio.lowlevel.open_process(run_cmd, cwd=tmp_path, env=env(),
                                                  stdout=(tmp_path / "run.log").open("wb"),
                                                  stderr=subprocess.STDOUT)

        def status() -> dict:
            try:
                reply = request(sock, "status", timeout_s=2)
            except CtlError:
                return {}
            return reply.get("result") or {}

        with trio.fail_after(90):  # warm-up, first training, then a bar every 5 s
            while True:
                assert daemon.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
                st = await trio.to_thread.run_sync(status)
                pred = st.get("actors", {}).get("predictor", {})
                if st.get("feed", {}).get("connected") and pred.get("predictions", 0) >= 4:
                    seen = st
                    break
                await trio.sleep(0.2)
        daemon.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await daemon.wait() == 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        sim.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            sim_code = await sim.wait()
    log = (tmp_path / "run.log").read_text()
    assert sim_code == 0
    assert seen["source"] == "binance" and seen["mode"] == "paper"
    assert "warm-up done:" in log and "training the initial models" in log
    assert "out of sample from 2018-01-20" in log  # predictions start at the first step
    assert "Traceback" not in log
