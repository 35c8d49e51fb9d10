"""Plugin code cannot take the daemon down: exits and interrupts raised by plugins, hooks
and imports that never return, notifiers that hang, a relative plugins directory, secrets
in a notifier's settings, and rejected files that are deleted."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
import trio

from qtraderd.plugins.host import ACTIVE, DISABLED, REJECTED
from qtraderd.plugins.isolation import Lane, Overrun, PluginFailed
from qtraderd.runtime import logs, secrets
from tests.plugins.plugin_helpers import TS, check_call, filter_call, host, source, step, until
from tests.plugins.test_examples import EXAMPLES, server, url  # noqa: F401 (fixture)

KEEP = source("zz_keep", body="""
    def filter_signal(signal):
        return veto("kept_running")
""")


def spinner(name: str, where: str = "filter_signal") -> str:
    if where == "import":
        return source(name, body="""
            while True:
                pass
            def filter_signal(signal):
                return None
        """)
    return source(name, body=f"""
        def {where}(*args):
            while True:
                pass
    """)


# ------------------------------------------------------------------ B3: exits, interrupts


@pytest.mark.parametrize("raise_", ["SystemExit(3)", "KeyboardInterrupt()",
                                    "__import__('sys').exit(7)"])
def test_an_exit_at_import_rejects_the_file_and_later_files_still_load(pdir, raise_, caplog):
    (pdir / "a_exit.py").write_text(source("a_exit", body=f"""
        raise {raise_}
        def filter_signal(signal):
            return None
    """))
    (pdir / "b_keep.py").write_text(KEEP)
    h = host(pdir)
    h.load_all()  # returns: no SystemExit / KeyboardInterrupt escapes
    st = h.states[pdir / "a_exit.py"]
    assert st.state == REJECTED and "a plugin cannot stop the daemon" in st.last_error
    assert h.states[pdir / "b_keep.py"].state == ACTIVE
    assert filter_call(h, step()) == (0.0, "plugin:zz_keep:kept_running")
    assert "plugin rejected: a_exit" in caplog.text


@pytest.mark.parametrize("where", ["setup", "Plugin"])
def test_an_exit_in_setup_or_the_constructor_rejects_the_file(pdir, where):
    body = ("def setup(settings):\n    raise SystemExit(2)\n"
            "def filter_signal(signal):\n    return None\n" if where == "setup" else
            "class Plugin:\n    def __init__(self, settings):\n        raise KeyboardInterrupt\n"
            "    def filter_signal(self, signal):\n        return None\n")
    (pdir / "x.py").write_text(source("x", body=body))
    h = host(pdir)
    h.load_all()
    assert h.states[pdir / "x.py"].state == REJECTED


def test_an_exit_in_a_hook_disables_the_plugin_at_once(pdir, caplog):
    (pdir / "f.py").write_text(source("f", body="""
        import sys
        def filter_signal(signal):
            sys.exit(4)
    """))
    (pdir / "r.py").write_text(source("r", body="""
        def check_order(order, account):
            raise KeyboardInterrupt
    """))
    h = host(pdir, max_errors=100)  # not the error budget: the exit attempt disables
    h.load_all()
    assert filter_call(h, step()) == (1.0, "")  # fails open
    assert check_call(h) is None
    f, r = h.states[pdir / "f.py"], h.states[pdir / "r.py"]
    assert f.state == DISABLED and r.state == DISABLED
    assert "SystemExit: 4 (a plugin cannot stop the daemon)" in f.last_error
    assert "KeyboardInterrupt" in r.last_error
    assert "plugin disabled: f 1.0" in caplog.text and "filter_signal raised SystemExit" \
        in caplog.text


@pytest.mark.parametrize("kind", ["def", "async def"])
async def test_an_exit_in_a_notifier_disables_it_and_delivery_goes_on(pdir, kind):
    (pdir / "a.py").write_text(source("a", body=f"""
        {kind} notify(event):
            raise SystemExit(9)
    """))
    (pdir / "b.py").write_text(source("b", body="""
        got = []
        def notify(event):
            got.append(event.kind)
    """))
    h = host(pdir)
    h.load_all()
    async with trio.open_nursery() as n:
        await n.start(h.run)
        h.emit("trade_opened", TS, {})
        h.emit("trade_closed", TS, {})
        assert await h.notifications.drain(10.0)
        n.cancel_scope.cancel()
    assert h.states[pdir / "a.py"].state == DISABLED
    assert h.states[pdir / "b.py"].plugin.module.got == ["trade_opened", "trade_closed"]


# ----------------------------------------------------------------- B4: deadlines, overruns


def test_a_looping_filter_overruns_is_abandoned_and_disabled(pdir, caplog):
    (pdir / "spin.py").write_text(spinner("spin"))
    (pdir / "z.py").write_text(KEEP)
    h = host(pdir, hook_timeout_ms=50.0, max_overruns=3, max_errors=0)
    h.load_all()
    st = h.states[pdir / "spin.py"]
    t0 = time.monotonic()
    for _ in range(3):
        assert filter_call(h, step()) == (0.0, "plugin:zz_keep:kept_running")
    assert time.monotonic() - t0 < 5.0  # three deadlines, not forever
    assert st.state == DISABLED and "timed out after 0.05 s" in st.last_error
    assert "3 overruns in a row" in caplog.text
    filter_call(h, step())
    assert st.calls == 3  # disabled: not called again
    # the abandoned threads were told to stop, and a pure Python loop does
    deadline = time.monotonic() + 10
    while st.lane is not None and st.lane.stuck() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert st.lane.stuck() == 0
    assert not [t for t in threading.enumerate() if t.name == "plugin spin" and t.is_alive()]


def test_a_success_within_the_deadline_ends_a_run_of_overruns(pdir):
    (pdir / "slow.py").write_text(source("slow", body="""
        import time
        calls = [0]
        def check_order(order, account):
            calls[0] += 1
            if calls[0] % 2:
                time.sleep(30)
            return None
    """))
    h = host(pdir, hook_timeout_ms=50.0, max_overruns=2, max_errors=0)
    h.load_all()
    st = h.states[pdir / "slow.py"]
    for _ in range(3):  # overrun, success, overrun: never two in a row
        check_call(h)
    assert st.state == ACTIVE and st.errors == 2
    check_call(h)  # success
    check_call(h)  # overrun
    assert st.state == ACTIVE
    # a sleep ignores the stop request: its threads stay stuck; too many disable it
    for _ in range(8):
        check_call(h)
    assert st.state == DISABLED
    assert "abandoned calls are still running" in st.row()["last_error"]


def test_a_looping_import_is_rejected_at_start_and_the_others_load(pdir, caplog):
    (pdir / "a_spin.py").write_text(spinner("a_spin", "import"))
    (pdir / "b_keep.py").write_text(KEEP)
    h = host(pdir, load_timeout_s=0.5)
    t0 = time.monotonic()
    h.load_all()
    assert time.monotonic() - t0 < 5.0
    st = h.states[pdir / "a_spin.py"]
    assert st.state == REJECTED and "import did not finish within 0.5 s" in st.last_error
    assert h.states[pdir / "b_keep.py"].state == ACTIVE


async def test_a_looping_import_does_not_hold_up_other_hot_loads(pdir):
    h = host(pdir, load_timeout_s=60.0)
    async with trio.open_nursery() as n:
        await n.start(h.run)
        (pdir / "a_spin.py").write_text(spinner("a_spin", "import"))
        keep = pdir / "b_keep.py"
        # b_keep loads while a_spin's import still loops (it has 60 s left)
        await until(lambda: keep in h.states and h.states[keep].state == ACTIVE, 20.0,
                    poke=lambda: keep.write_text(KEEP))
        assert pdir / "a_spin.py" not in h.states
        n.cancel_scope.cancel()


async def test_hung_notifiers_do_not_starve_the_others(pdir):
    for i in range(6):  # more than the four threads that were once shared by all
        (pdir / f"hung{i}.py").write_text(source(f"hung{i}", body="""
            import threading
            def notify(event):
                threading.Event().wait()  # ignores the stop request: stays stuck
        """))
    (pdir / "zz_good.py").write_text(source("zz_good", body="""
        got = []
        def notify(event):
            got.append(event.ts)
    """))
    h = host(pdir, notify_timeout_s=0.1, max_errors=0, max_overruns=0)
    h.load_all()
    async with trio.open_nursery() as n:
        await n.start(h.run)
        for i in range(3):
            h.emit("trade_closed", TS + i, {})
        assert await h.notifications.drain(30.0)
        n.cancel_scope.cancel()
    good = h.states[pdir / "zz_good.py"]
    assert good.plugin.module.got == [TS, TS + 1, TS + 2] and good.errors == 0
    assert all(h.states[pdir / f"hung{i}.py"].errors >= 1 for i in range(6))


async def test_an_async_notifier_that_blocks_cannot_freeze_the_loop(pdir):
    (pdir / "blocker.py").write_text(source("blocker", body="""
        import time
        async def notify(event):
            time.sleep(3600)  # blocking inside async def
    """))
    h = host(pdir, notify_timeout_s=0.1)
    h.load_all()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with trio.open_nursery() as n:
        await n.start(h.run)
        n.start_soon(ticker)
        h.emit("trade_closed", TS, {})
        assert await h.notifications.drain(10.0)
        n.cancel_scope.cancel()
    assert ticks > 0 and "timed out after 0.35 s" in h.states[pdir / "blocker.py"].last_error


def test_lane_transports_results_and_exceptions():
    lane = Lane("t")
    assert lane.call(5.0, lambda a, b: a + b, 1, 2) == 3
    with pytest.raises(PluginFailed) as info:
        lane.call(5.0, lambda: (_ for _ in ()).throw(SystemExit(5)))
    assert isinstance(info.value.error, SystemExit)
    with pytest.raises(Overrun):
        lane.call(0.05, time.sleep, 0.5)
    assert lane.call(5.0, lambda: 7) == 7  # a fresh thread after the abandoned one
    lane.close()


# --------------------------------------------------------------- B2: a relative directory


async def test_hot_reload_works_with_a_relative_plugins_directory(tmp_path, monkeypatch):
    (tmp_path / "plugins").mkdir()
    monkeypatch.chdir(tmp_path)
    h = host(Path("plugins"))  # the default, `plugins`, relative to the working directory
    f = tmp_path / "plugins" / "late.py"
    async with trio.open_nursery() as n:
        await n.start(h.run)
        assert h.watching
        await until(lambda: any(s.state == ACTIVE for s in h.states.values()),
                    poke=lambda: f.write_text(KEEP))
        n.cancel_scope.cancel()
    assert filter_call(h, step()) == (0.0, "plugin:zz_keep:kept_running")
    assert h.status()["directory"] == str(tmp_path / "plugins")


# ------------------------------------------------------- B13: deleted rejected plugins


async def test_a_deleted_rejected_file_is_no_longer_listed(pdir, caplog):
    caplog.set_level(logging.INFO, logger="qtraderd.plugins")
    bad = pdir / "bad.py"
    bad.write_text("this is not python(")
    (pdir / "ok.py").write_text(KEEP)
    h = host(pdir)
    h.load_all()
    assert sorted(r["state"] for r in h.status()["plugins"]) == [ACTIVE, REJECTED]
    async with trio.open_nursery() as n:
        await n.start(h.run)
        edits = iter(range(1, 10_000))  # until the watcher (in a thread) demonstrably runs
        await until(lambda: h.reloads > 0,
                    poke=lambda: (pdir / "ok.py").write_text(KEEP + f"# {next(edits)}\n"))
        bad.unlink()
        await until(lambda: len(h.status()["plugins"]) == 1)
        n.cancel_scope.cancel()
    assert [r["name"] for r in h.status()["plugins"]] == ["zz_keep"]
    assert h.summary() == "1 active"
    assert "plugin removed: bad - (" in caplog.text and "(it was rejected)" in caplog.text


# ---------------------------------------------------------------- B9: notifier secrets


@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    yield
    secrets.forget_all()


async def test_webhook_errors_and_httpx_lines_never_show_the_url_or_headers(
        pdir, server, no_proxy, caplog):  # noqa: F811 (fixture)
    token, header = "s3cr3t-t0ken-123", "Bearer h3ad3r-value-456"
    root = logging.getLogger()
    level = root.level
    logs.setup("INFO")  # what the daemon does (it replaces the root handlers) ...
    root.addHandler(caplog.handler)  # ... so put the capture back
    try:
        shutil.copy(EXAMPLES / "webhook_notifier.py", pdir)
        h = host(pdir, max_errors=0, settings={"webhook_notifier": {
            "url": url(server, f"/hook?token={token}"),
            "headers": {"Authorization": header}}})
        h.load_all()
        server.status = 200  # type: ignore[attr-defined]

        async def deliver() -> None:
            async with trio.open_nursery() as n:
                await n.start(h.run)
                h.emit("trade_closed", TS, {})
                assert await h.notifications.drain(10.0)
                n.cancel_scope.cancel()

        await deliver()
        assert len(server.received) == 1  # type: ignore[attr-defined]
        server.status = 500  # type: ignore[attr-defined]
        await deliver()
    finally:
        root.setLevel(level)
        for hd in list(root.handlers):
            if hd is not caplog.handler:
                root.removeHandler(hd)
    st = h.states[pdir / "webhook_notifier.py"]
    assert "answered 500" in st.last_error and token not in st.last_error
    assert "plugin error: webhook_notifier" in caplog.text
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "httpcore"))]
    text = caplog.text + "".join(str(r.exc_info) for r in caplog.records)
    assert token not in text and header not in text


def test_secret_looking_settings_are_masked_in_the_log(pdir, caplog, no_proxy):
    (pdir / "s.py").write_text(source("s", body="""
        import logging
        def setup(settings):
            logging.getLogger("qtraderd.plugins.s").warning("settings %s", settings)
        def filter_signal(signal):
            return None
    """))
    h = host(pdir, settings={"s": {"url": "https://hook.example/abc-secret-path",
                                   "url_env": "HOOK_URL_VAR",
                                   "headers": {"Authorization": "Bearer abc-123-xyz",
                                               "Content-Type": "application/json"}}})
    h.load_all()  # setup logs them: masked already
    last = [r.getMessage() for r in caplog.records if r.getMessage().startswith("settings")]
    assert "abc-secret-path" not in last[-1] and "abc-123-xyz" not in last[-1]
    assert "HOOK_URL_VAR" in last[-1] and "application/json" in last[-1]
