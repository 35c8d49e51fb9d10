"""The example plugins shipped in plugins/: each one does its job, and the webhook really
posts to an HTTP server on the loopback interface."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trio

from qtraderd.plugins.host import ACTIVE, REJECTED
from tests.conftest import REPO
from tests.plugins.plugin_helpers import TS, check_call, filter_call, host, intent, step

EXAMPLES = REPO / "plugins"


def install(pdir, name, **settings):
    shutil.copy(EXAMPLES / f"{name}.py", pdir / f"{name}.py")
    h = host(pdir, settings={name: settings} if settings else {})
    h.load_all()
    return h, h.states[pdir / f"{name}.py"]


def test_every_shipped_plugin_loads_with_its_defaults(caplog):
    caplog.set_level(logging.INFO)
    h = host(EXAMPLES)
    h.load_all()
    assert {s.name: s.state for s in h.states.values()} == {
        "regime_cooldown": ACTIVE, "max_trades_per_day": ACTIVE, "webhook_notifier": ACTIVE}
    assert "webhook_notifier: no url configured: idle" in caplog.text


# ------------------------------------------------------------------ regime_cooldown


def bars(h, n, regime="range", start=0):
    return [filter_call(h, step(regime=regime, ts=TS + (start + i) * 300_000, seq=start + i))
            for i in range(n)]


def test_regime_cooldown_vetoes_the_first_bars_of_a_regime(pdir):
    h, _ = install(pdir, "regime_cooldown", bars=2)
    out = bars(h, 4) + bars(h, 3, "high_vol", start=4)
    veto = (0.0, "plugin:regime_cooldown:new_regime")
    assert out == [veto, veto, (1.0, ""), (1.0, ""), veto, veto, (1.0, "")]


def test_regime_cooldown_can_scale_instead_and_only_for_some_regimes(pdir):
    h, _ = install(pdir, "regime_cooldown", bars=1, scale=0.5, regimes=["high_vol"])
    out = bars(h, 2) + bars(h, 2, "high_vol", start=2)
    assert out == [(1.0, ""), (1.0, ""), (0.5, "plugin:regime_cooldown:new_regime"),
                   (1.0, "")]


@pytest.mark.parametrize("settings, needle", [
    ({"bars": -1}, "bars must be an integer"),
    ({"regimes": ["sideways"]}, "regimes must be a list"),
    ({"scale": 1.5}, "scale must be a number in [0, 1)"),
    ({"bar": 3}, "unknown settings ['bar']"),
])
def test_regime_cooldown_rejects_bad_settings(pdir, settings, needle):
    _, st = install(pdir, "regime_cooldown", **settings)
    assert st.state == REJECTED and needle in st.last_error


# --------------------------------------------------------------- max_trades_per_day


def test_max_trades_per_day_caps_each_symbol_and_the_total(pdir):
    h, _ = install(pdir, "max_trades_per_day", limit=2, total=3, symbols={"ltcbtc": 1})
    s = step()
    results = []
    for sym in ("ETHBTC", "ETHBTC", "ETHBTC", "LTCBTC", "LTCBTC", "XMRBTC", "XMRBTC"):
        code = check_call(h, intent(sym))
        results.append(code)
        if code is None:
            h.note_entry(sym, s.close_ts)  # what risk does with an approved entry
    assert results == [None, None, "plugin:max_trades_per_day:symbol_daily_limit", None,
                       "plugin:max_trades_per_day:symbol_daily_limit",
                       "plugin:max_trades_per_day:daily_limit",
                       "plugin:max_trades_per_day:daily_limit"]
    tomorrow = step(ts=TS + 86_400_000)
    assert check_call(h, intent("ETHBTC"), tomorrow) is None


def test_max_trades_per_day_rejects_bad_settings(pdir):
    _, st = install(pdir, "max_trades_per_day", limit="many")
    assert st.state == REJECTED and "limit must be an integer" in st.last_error


# ----------------------------------------------------------------- webhook_notifier


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        srv: Any = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        srv.received.append({"path": self.path, "json": json.loads(body),
                             "auth": self.headers.get("Authorization")})
        self.send_response(srv.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    srv.received = []  # type: ignore[attr-defined]
    srv.status = 204  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv: ThreadingHTTPServer, path: str = "/hook") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


async def deliver(h, *events):
    async with trio.open_nursery() as n:
        await n.start(h.run)
        for kind, data in events:
            h.emit(kind, TS, data)
        assert await h.notifications.drain(10.0)
        n.cancel_scope.cancel()


async def test_webhook_posts_events_to_a_real_server(pdir, server, monkeypatch):
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    h, st = install(pdir, "webhook_notifier", url=url(server), events=["trade_closed",
                                                                        "risk_state"],
                    headers={"Authorization": "Bearer t0ken"})
    await deliver(h, ("trade_opened", {"symbol": "ETHBTC"}),
                  ("trade_closed", {"symbol": "ETHBTC", "net_pnl": -0.0012}),
                  ("risk_state", {"state": "HALTED", "prev_state": "ACTIVE"}))
    got = server.received  # type: ignore[attr-defined]
    assert [g["json"]["event"] for g in got] == ["trade_closed", "risk_state"]  # filtered
    first = got[0]
    assert first["path"] == "/hook" and first["auth"] == "Bearer t0ken"
    assert first["json"]["source"] == "qtraderd" and first["json"]["ts"] == TS
    assert first["json"]["data"] == {"symbol": "ETHBTC", "net_pnl": -0.0012}
    assert st.plugin.module.sent == 2 and st.errors == 0 and st.calls == 3


async def test_webhook_errors_are_counted_and_disable_it(pdir, server, monkeypatch):
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.setenv("QT_TEST_HOOK", url(server))
    server.status = 500  # type: ignore[attr-defined]
    shutil.copy(EXAMPLES / "webhook_notifier.py", pdir)
    h = host(pdir, max_errors=2, settings={"webhook_notifier": {"url_env": "QT_TEST_HOOK"}})
    h.load_all()
    await deliver(h, *[("trade_closed", {"i": i}) for i in range(3)])
    st = h.states[pdir / "webhook_notifier.py"]
    assert len(server.received) == 2  # type: ignore[attr-defined]
    assert st.state == "disabled" and "HTTPStatusError" in st.last_error


async def test_webhook_without_a_url_is_idle(pdir, server):
    h, st = install(pdir, "webhook_notifier")
    await deliver(h, ("trade_closed", {}))
    assert server.received == [] and st.errors == 0  # type: ignore[attr-defined]


def test_webhook_rejects_a_url_that_is_not_http(pdir):
    _, st = install(pdir, "webhook_notifier", url="ftp://example.org/x")
    assert st.state == REJECTED and "must start with http" in st.last_error
