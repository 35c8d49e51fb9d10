"""Plugins in the real daemon: replays over real candles with filters, risk rules and
notifiers loaded from a real folder; `ctl plugins`; hot reload while the daemon runs."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
import trio

from qtraderd.control import client as ctl
from qtraderd.core.config import load, with_changes
from qtraderd.runtime.daemon import Daemon
from tests.conftest import REPO
from tests.plugins.plugin_helpers import source, until

LOOSE = {"min_edge_pct": -0.5, "min_confidence": 0.25}  # tiny test models: let them trade
# The test models abstain on their training data (up to 20 January): replay a day of
# warm-up before that and the ten out-of-sample days after it.
START = "2018-01-19"

NO_ETH = source("no_eth", body="""
    def filter_signal(signal):
        return veto("no_eth") if signal.symbol == "ETHBTC" else None
""")
NO_LTC = source("no_ltc", body="""
    def check_order(order, account):
        return deny("ltc_closed") if order.symbol == "LTCBTC" else None
""")
RECORDER = source("recorder", body="""
    events = []
    def notify(event):
        events.append((event.kind, dict(event.data)))
""")
BROKEN_EVERYWHERE = source("broken", body="""
    def filter_signal(signal):
        raise RuntimeError("filter bug")
    def check_order(order, account):
        raise RuntimeError("rule bug")
    async def notify(event):
        raise RuntimeError("notifier bug")
""")


@pytest.fixture
def world(trained, tmp_path):
    shutil.copytree(trained["state"], tmp_path / "state")
    sock_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="qt"))
    pdir = tmp_path / "plugins"
    pdir.mkdir()
    yield {"state": tmp_path / "state", "models": trained["models"], "plugins": pdir,
           "sock": sock_dir / "s.sock", "root": tmp_path}
    shutil.rmtree(sock_dir, ignore_errors=True)


def daemon(world, plugins_dir=None, **sections):
    sections.setdefault("sizing", LOOSE)
    sections.setdefault("learning", {"enabled": False})
    sections.setdefault("rl", {"enabled": False})
    sections["feed"] = {"start": START, **sections.get("feed", {})}
    plugins = {"settle_ms": 20.0, "notify_queue": 100_000, **sections.pop("plugins", {})}
    cfg = with_changes(load(env={}), plugins=plugins, **sections)
    return Daemon(cfg, world["state"], world["models"], socket_path=world["sock"],
                  progress_every_s=0, plugins_dir=plugins_dir)


def rows(db: Path, sql: str, *args):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def plugin_module(d: Daemon, name: str):
    return next(s for s in d.plugins.states.values() if s.name == name).plugin.module


async def test_veto_filter_risk_rule_and_notifier_in_a_real_replay(world):
    for name, text in (("no_eth", NO_ETH), ("no_ltc", NO_LTC), ("recorder", RECORDER)):
        (world["plugins"] / f"{name}.py").write_text(text)
    d = daemon(world, world["plugins"])
    assert await d.run() == 0
    db, run = world["state"] / "qtraderd.db", d.run_id

    def count(sql, *args):
        return rows(db, sql, run, *args)[0][0]

    # the filter vetoed every ETHBTC entry; the signals say so, and nothing was traded
    assert count("SELECT count(*) FROM signals WHERE run_id=? AND symbol='ETHBTC' AND "
                 "action='veto' AND reason='plugin:no_eth:no_eth'") > 0
    assert count("SELECT count(*) FROM signals WHERE run_id=? AND symbol='ETHBTC' AND "
                 "action='enter'") == 0
    assert count("SELECT count(*) FROM trades WHERE run_id=? AND symbol='ETHBTC'") == 0
    # the rule denied every LTCBTC entry, recorded like a built-in denial
    ltc = rows(db, "SELECT risk_action, risk_reason, approved_qty FROM orders WHERE "
                   "run_id=? AND symbol='LTCBTC' AND purpose='entry'", run)
    assert ltc and set(ltc) == {("deny", "plugin:no_ltc:ltc_closed", 0.0)}
    assert count("SELECT count(*) FROM trades WHERE run_id=? AND symbol='LTCBTC'") == 0
    # the third pair trades as usual
    assert count("SELECT count(*) FROM trades WHERE run_id=? AND symbol='XMRBTC'") > 3
    # the notifier saw every entry fill and every closed trade, in order
    events = plugin_module(d, "recorder").events
    opened = [e for k, e in events if k == "trade_opened"]
    closed = [e for k, e in events if k == "trade_closed"]
    assert len(opened) == count("SELECT count(*) FROM fills WHERE run_id=? AND reason='entry'")
    assert [e["id"] for e in closed] == [r[0] for r in rows(
        db, "SELECT id FROM trades WHERE run_id=? ORDER BY exit_ts, id", run)]
    assert {e["symbol"] for e in opened} == {"XMRBTC"}
    assert d.plugins.notifications.dropped == 0
    assert all(a["restarts"] == 0 for a in d.supervisor.status().values())
    assert d.sizer.status()["plugin_vetoes"] > 0


async def test_broken_plugins_are_disabled_and_the_replay_trades_as_without_them(
        world, tmp_path, caplog):
    def orders(w):
        return rows(w["state"] / "qtraderd.db", "SELECT id, symbol, side, qty, risk_action, "
                    "risk_reason, approved_qty FROM orders ORDER BY id")

    base = dict(world, state=tmp_path / "base")
    shutil.copytree(world["state"], base["state"])
    assert await daemon(base).run() == 0
    (world["plugins"] / "broken.py").write_text(BROKEN_EVERYWHERE)
    d = daemon(world, world["plugins"], plugins={"max_errors": 3})
    assert await d.run() == 0
    st = next(iter(d.plugins.states.values()))
    assert st.state == "disabled" and st.errors == 3 and st.calls == 3
    assert all(a["restarts"] == 0 for a in d.supervisor.status().values())
    # errors fail open and the plugin is gone after three: same decisions, same trades
    assert len(orders(world)) > 10 and orders(world) == orders(base)
    assert caplog.text.count("plugin error: broken") == 1
    assert caplog.text.count("plugin disabled: broken 1.0") == 1


async def test_example_plugins_in_a_real_replay(world):
    for name in ("regime_cooldown", "max_trades_per_day"):
        shutil.copy(REPO / "plugins" / f"{name}.py", world["plugins"])
    d = daemon(world, world["plugins"], plugins={"settings": {
        "max_trades_per_day": {"limit": 1}, "regime_cooldown": {"bars": 3}}})
    assert await d.run() == 0
    db, run = world["state"] / "qtraderd.db", d.run_id
    vetoes = rows(db, "SELECT count(*) FROM signals WHERE run_id=? AND action='veto' AND "
                      "reason='plugin:regime_cooldown:new_regime'", run)[0][0]
    denied = rows(db, "SELECT count(*) FROM orders WHERE run_id=? AND risk_action='deny' AND "
                      "risk_reason='plugin:max_trades_per_day:symbol_daily_limit'", run)[0][0]
    assert vetoes > 0 and denied > 0
    per_day = rows(db, "SELECT symbol, (ts + 300000) / 86400000 AS day, count(*) FROM orders "
                       "WHERE run_id=? AND purpose='entry' AND risk_action != 'deny' "
                       "GROUP BY symbol, day", run)
    assert per_day and max(n for _s, _d, n in per_day) == 1


async def test_ctl_plugins_and_hot_reload_in_a_running_daemon(world, capsys):
    pdir = world["plugins"]
    (pdir / "recorder.py").write_text(RECORDER)
    d = daemon(world, pdir, feed={"exit_at_end": False})
    sock = world["sock"]

    async def ask(cmd, **args):
        return await trio.to_thread.run_sync(ctl.request, sock, cmd, args)

    async def plugin_rows():
        return {r["name"]: r for r in (await ask("plugins"))["result"]["plugins"]}

    async with trio.open_nursery() as n:
        await n.start(d.run)
        await until(lambda: d.feed.done, timeout=30)
        listing = await plugin_rows()
        assert listing["recorder"]["state"] == "active"
        assert listing["recorder"]["hooks"] == "notify" and listing["recorder"]["errors"] == 0
        # a new file is picked up by the running daemon; a broken update keeps it running
        new = pdir / "no_eth.py"
        new.write_text(NO_ETH)
        with trio.fail_after(10):
            while "no_eth" not in await plugin_rows():
                await trio.sleep(0.05)
        new.write_text(NO_ETH.replace("PLUGIN_API = 1", "PLUGIN_API = 2"))
        with trio.fail_after(10):
            while "unsupported plugin API" not in (await plugin_rows())["no_eth"][
                    "last_error"]:
                await trio.sleep(0.05)
        assert (await plugin_rows())["no_eth"]["state"] == "active"
        # a command-caused risk change reaches the notifiers at once
        assert (await ask("halt", reason="test"))["ok"]
        events = plugin_module(d, "recorder").events
        await until(lambda: any(k == "risk_state" and e["state"] == "HALTED"
                                for k, e in events))
        modules = {m["module"]: m for m in (await ask("modules"))["result"]}
        assert modules["plugins"]["detail"] == "2 active"
        # the CLI renders the listing as a table
        code = await trio.to_thread.run_sync(ctl.main, ["--socket", str(sock), "plugins"])
        out = capsys.readouterr().out
        assert code == 0 and "name" in out and "no_eth" in out and "recorder" in out
        d.request_stop("test over")
    assert d.exit_code == 0


async def test_plugins_can_be_switched_off(world):
    (world["plugins"] / "no_eth.py").write_text(NO_ETH)
    d = daemon(world, world["plugins"], plugins={"enabled": False},
               feed={"exit_at_end": False})
    async with trio.open_nursery() as n:
        await n.start(d.run)
        reply = await trio.to_thread.run_sync(ctl.request, world["sock"], "plugins", {})
        assert reply["ok"] is False and "disabled" in reply["error"]
        d.request_stop("test over")
    assert d.plugins is None
