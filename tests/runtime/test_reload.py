"""Config reload: SIGHUP and `ctl reload` re-read the file, apply what is live, refuse
what is invalid and keep the old configuration; a real daemon, in process and as a
subprocess with a real SIGHUP."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import trio

from qtraderd.control import client as ctl
from qtraderd.core.config import _SECTION_TYPES, LIVE_KEYS, Config, load, to_toml, with_changes
from qtraderd.runtime.daemon import Daemon
from qtraderd.runtime.reload import JOB_CONFIG_NAME, changed_keys, is_live, merge_live
from qtraderd.runtime.systemd import Service
from tests.conftest import REPO, make_store
from tests.notify_listener import Listener, parse

# ----------------------------------------------------------------------------- units


def all_keys() -> list[str]:
    keys = [f.name for f in fields(Config) if f.name not in _SECTION_TYPES]
    return keys + [f"{s}.{g.name}" for s, t in _SECTION_TYPES.items() for g in fields(t)]


def test_every_live_entry_names_a_real_key_or_section():
    """A typo in LIVE_KEYS would silently turn a live setting into a restart-only one."""
    keys = set(all_keys())
    for entry in LIVE_KEYS:
        assert entry in keys or entry in _SECTION_TYPES, entry
    assert is_live("risk.daily_loss_pct") and is_live("sizing.min_confidence")
    assert not is_live("feed.symbols") and not is_live("sizing.take_profit_pct")
    assert not is_live("runtime.channel_capacity") and not is_live("mode")


def test_changes_are_found_per_key_and_only_live_ones_merge():
    old = load(env={})
    new = with_changes(old, risk={"daily_loss_pct": 3.0}, feed={"symbols": ("ETHBTC",)},
                       sizing={"margin": {"BTC": 0.01, "USDT": 300.0}})
    keys = changed_keys(old, new)
    assert keys == ["feed.symbols", "risk.daily_loss_pct", "sizing.margin"]
    merged = merge_live(old, new, [k for k in keys if is_live(k)])
    assert merged.risk.daily_loss_pct == 3.0 and merged.sizing.margin["BTC"] == 0.01
    assert merged.feed.symbols == ()  # needs a restart: the old value stays in force
    assert changed_keys(old, old) == []


@pytest.mark.parametrize("changes", [
    {},
    {"feed": {"speed": 60.0, "symbols": ("ETHBTC", "LTCBTC"), "start": "2018-01-10"},
     "sizing": {"margin": {"*": 0.02}}, "risk": {"max_order_notional": {"USDT": 1e-5}},
     "rl": {"multipliers": (0.5, 1.0)}, "runtime": {"log_level": "DEBUG"},
     "plugins": {"settings": {"hook": {"url": "https://example.org/x?a=\"b\"", "n": 3,
                                       "on": True, "tags": ["a", "b"]}}}},
])
def test_the_job_snapshot_reads_back_to_the_same_config(tmp_path, changes):
    cfg = with_changes(load(env={}), **changes)
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg, "snapshot"))
    assert load(p, env={}) == cfg


# ----------------------------------------------------------------------------- the daemon


@pytest.fixture
def small(tmp_path):
    make_store(tmp_path / "state", limit=1500)
    sock_dir = Path(tempfile.mkdtemp(prefix="qtr", dir="/tmp"))
    yield {"state": tmp_path / "state", "models": tmp_path / "models",
           "sock": sock_dir / "d.sock", "root": tmp_path, "sock_dir": sock_dir}
    shutil.rmtree(sock_dir, ignore_errors=True)


BASE = """\
[feed]
exit_at_end = false
[learning]
enabled = true
[rl]
enabled = false
"""


async def test_ctl_reload_applies_live_keys_and_refuses_a_bad_file(small, caplog):
    caplog.set_level(logging.INFO, logger="qtraderd.runtime.reload")
    cfg_file = small["root"] / "qtraderd.toml"
    cfg_file.write_text(BASE)
    listener = Listener.bind()
    d = Daemon(load(cfg_file), small["state"], small["models"], socket_path=small["sock"],
               progress_every_s=0, models={}, config_path=cfg_file,
               service=Service(listener.notifier(), status_every_s=0.05))
    root_level = logging.getLogger().level

    async def ask(cmd: str) -> dict[str, Any]:
        return await trio.to_thread.run_sync(ctl.request, small["sock"], cmd)

    try:
        async with listener.listening(), trio.open_nursery() as nursery:
            await nursery.start(d.run)
            await listener.wait_key("READY", "1")
            job_cfg = small["state"] / JOB_CONFIG_NAME
            assert load(job_cfg, env={}) == d.cfg  # learner jobs read this, not our file
            cfg_file.write_text("""\
[feed]
exit_at_end = false
symbols = ["ETHBTC"]
[learning]
enabled = true
mode = "ADVISORY"
[rl]
enabled = false
[risk]
daily_loss_pct = 3
[sizing]
min_confidence = 0.4
[runtime]
log_level = "WARNING"
[labels]
horizon_bars = 24
""")
            reply = await ask("reload")
            assert reply["ok"], reply
            res = reply["result"]
            assert res["applied"] == ["learning.mode", "risk.daily_loss_pct",
                                      "runtime.log_level", "sizing.min_confidence"]
            assert res["needs_restart"] == ["feed.symbols", "labels.horizon_bars"]
            st = (await ask("status"))["result"]
            assert st["actors"]["risk"]["daily_loss_limit_pct"] == 3.0
            assert d.sizer.cfg.min_confidence == 0.4 and d.learner.lc.mode == "ADVISORY"
            assert logging.getLogger().level == logging.WARNING
            assert d.cfg.feed.symbols == () and d.cfg.labels.horizon_bars == 48  # restart
            assert load(job_cfg, env={}) == d.cfg  # the snapshot follows what is in force
            # systemd saw the reload bracketed: RELOADING=1, then READY=1 again
            await listener.wait_key("READY", "1", count=2)
            order = [k for m in listener.messages for k in m.fields if k in ("READY",
                                                                           "RELOADING")]
            assert order == ["READY", "RELOADING", "READY"]

            cfg_file.write_text("[risk]\ndaily_loss_pct = 500\n")  # out of bounds
            bad = await ask("reload")
            assert not bad["ok"] and "config reload rejected" in bad["error"]
            assert "'risk.daily_loss_pct'" in bad["error"] and "<= 100" in bad["error"]
            cfg_file.write_text("[risk\n")  # not TOML at all
            worse = await ask("reload")
            assert not worse["ok"] and "not valid TOML" in worse["error"]
            assert d.risk.cfg.daily_loss_pct == 3.0 and d.sizer.cfg.min_confidence == 0.4
            assert (await ask("status"))["result"]["actors"]["risk"][
                "daily_loss_limit_pct"] == 3.0
            await listener.wait_key("READY", "1", count=4)  # every reload ends in READY=1
            d.request_stop("test over")
    finally:
        listener.close()
        logging.getLogger().setLevel(root_level)
    assert ("config reloaded from" in caplog.text and "4 settings applied live "
            "(learning.mode, risk.daily_loss_pct, runtime.log_level, sizing.min_confidence); "
            "2 need a restart (feed.symbols, labels.horizon_bars)" in caplog.text)
    assert "config reload rejected: config key 'risk.daily_loss_pct'" in caplog.text


async def test_reload_without_a_config_file_says_there_is_nothing_to_read(small):
    cfg = with_changes(load(env={}), feed={"exit_at_end": False}, learning={"enabled": False})
    d = Daemon(cfg, small["state"], small["models"], socket_path=small["sock"],
               progress_every_s=0, models={})
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        reply = await trio.to_thread.run_sync(ctl.request, small["sock"], "reload")
        assert not reply["ok"] and "started without --config" in reply["error"]
        d.request_stop("test over")


# ----------------------------------------------------------------------------- SIGHUP


def _recv_until(sock: socket.socket, key: str, deadline: float) -> dict[str, str]:
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        msg = parse(sock.recv(65536))  # socket.timeout past the deadline fails the test
        if key in msg:
            return msg


def test_sighup_reloads_a_running_daemon_process(small):
    cfg_file = small["root"] / "qtraderd.toml"
    cfg_file.write_text("[feed]\nexit_at_end = false\n[learning]\nenabled = false\n")
    listener = Listener.bind()
    log_file = small["root"] / "stderr.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env.update(NOTIFY_SOCKET=listener.env_value, RUNTIME_DIRECTORY=str(small["sock_dir"]))
    sock = small["sock_dir"] / "qtraderd.sock"
    with open(log_file, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qtraderd", "run", "--config", str(cfg_file),
             "--state-dir", str(small["state"]), "--models-dir", str(small["models"]),
             "--no-train"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        _recv_until(listener.raw, "READY", deadline)
        cfg_file.write_text("[feed]\nexit_at_end = false\nspeed = 100\n[learning]\n"
                            "enabled = false\n[risk]\ndaily_loss_pct = 2.5\n")
        os.kill(proc.pid, signal.SIGHUP)
        assert _recv_until(listener.raw, "RELOADING", deadline)["RELOADING"] == "1"
        assert _recv_until(listener.raw, "READY", deadline)["READY"] == "1"
        st = ctl.request(sock, "status")["result"]
        assert st["actors"]["risk"]["daily_loss_limit_pct"] == 2.5

        cfg_file.write_text("[risk]\nmax_drawdown_pct = -1\n")
        out = subprocess.run([sys.executable, "-m", "qtraderd", "ctl", "--socket", str(sock),
                              "reload"], capture_output=True, text=True, cwd=REPO, env=env)
        assert out.returncode == 1 and "config reload rejected" in out.stderr
        assert "'risk.max_drawdown_pct'" in out.stderr
        os.kill(proc.pid, signal.SIGHUP)  # the same bad file by signal: logged, not fatal
        _recv_until(listener.raw, "RELOADING", deadline)
        _recv_until(listener.raw, "READY", deadline)
        st = ctl.request(sock, "status")["result"]
        assert st["actors"]["risk"]["daily_loss_limit_pct"] == 2.5
        assert st["actors"]["risk"]["drawdown_limit_pct"] == 15.0

        proc.send_signal(signal.SIGTERM)
        assert _recv_until(listener.raw, "STOPPING", deadline)["STOPPING"] == "1"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    log = log_file.read_text()
    assert ("config reloaded from " in log and "1 setting applied live (risk.daily_loss_pct); "
            "1 needs a restart (feed.speed)" in log)
    assert log.count("qtraderd.runtime.reload: config reload rejected: config key "
                     "'risk.max_drawdown_pct'") == 2
