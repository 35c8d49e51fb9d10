"""The plugin host: hot reload from a really watched folder, error isolation, hook
semantics (order, veto, scale, deny codes), notifier delivery and its bounded queue."""

from __future__ import annotations

import logging
import os
import textwrap

import pytest
import trio

from qtraderd.core.config import load, with_changes
from qtraderd.plugins.host import ACTIVE, DISABLED, REJECTED, REMOVED
from qtraderd.plugins.loader import PluginRejected, load_plugin
from tests.plugins.plugin_helpers import (
    TS,
    check_call,
    filter_call,
    host,
    intent,
    source,
    step,
    until,
)

VETO_ALL = """
def filter_signal(signal):
    return veto("v{n}")
"""


def vetoer(n: int, name: str = "hot") -> str:
    return source(name, f"{n}.0", VETO_ALL.format(n=n))


def messages(caplog, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


async def test_hot_reload_add_change_break_rename_delete(pdir, caplog):
    caplog.set_level(logging.INFO, logger="qtraderd.plugins")
    h = host(pdir)
    f = pdir / "hot.py"
    async with trio.open_nursery() as n:
        await n.start(h.run)
        # add: rewritten until the watcher (started in a thread) demonstrably sees it
        await until(lambda: any(s.state == ACTIVE for s in h.states.values()),
                    poke=lambda: f.write_text(vetoer(1)))
        assert filter_call(h, step()) == (0.0, "plugin:hot:v1")
        assert f"plugin loaded: hot 1.0 ({f}): hooks filter_signal" in messages(
            caplog, "plugin loaded")
        # change: the new version replaces the old one
        f.write_text(vetoer(2))
        await until(lambda: h.states[f].version == "2.0")
        assert filter_call(h, step()) == (0.0, "plugin:hot:v2")
        # a half-written / broken version is rejected and version 2 keeps running
        f.write_text(vetoer(3)[:-6])  # ends in "return veto("
        await until(lambda: "syntax error" in h.states[f].note)
        assert h.states[f].state == ACTIVE and filter_call(h, step()) == (0.0, "plugin:hot:v2")
        assert any("plugin rejected: hot (" in m and "version 2.0 keeps running" in m
                   for m in messages(caplog, "plugin rejected"))
        # ... until the file is complete again
        f.write_text(vetoer(3))
        await until(lambda: h.states[f].version == "3.0")
        assert h.states[f].note == "" and filter_call(h, step()) == (0.0, "plugin:hot:v3")
        # rename: the old file is removed, the same NAME loads from the new file
        g = pdir / "renamed.py"
        f.rename(g)
        await until(lambda: g in h.states and h.states[g].state == ACTIVE)
        assert h.states[f].state == REMOVED and len(h.filters) == 1
        # delete: removed, the filter no longer runs
        g.unlink()
        await until(lambda: h.states[g].state == REMOVED)
        assert filter_call(h, step()) == (1.0, "") and not h.filters
        assert messages(caplog, "plugin removed")
        rows = h.status()["plugins"]
        assert {r["state"] for r in rows} == {REMOVED}
        n.cancel_scope.cancel()


async def test_editor_temp_files_and_helpers_are_ignored(pdir):
    h = host(pdir)
    probe = pdir / "probe.py"
    async with trio.open_nursery() as n:
        await n.start(h.run)
        for name in (".hot.py.swp", "hot.py~", "#hot.py#", "_helper.py", "hot.py.tmp",
                     "notes.txt"):
            (pdir / name).write_text(vetoer(1))
        # a real plugin written afterwards is seen, the temp files before it never were
        await until(lambda: probe in h.states, poke=lambda: probe.write_text(
            source("probe", body="def notify(e):\n    pass\n")))
        assert set(h.states) == {probe}
        n.cancel_scope.cancel()


async def test_a_touch_with_the_same_bytes_does_not_reload(pdir):
    f = pdir / "same.py"
    f.write_text(vetoer(1, "same"))
    h = host(pdir)
    h.load_all()
    first = h.states[f]
    await h.reload(f)  # what a watcher event for an unchanged file leads to
    assert h.states[f] is first and h.reloads == 0


def test_start_up_loads_in_name_order_and_rejects_bad_files(pdir, caplog):
    (pdir / "b.py").write_text(source("bravo", body="def filter_signal(s):\n"
                                      "    return scale(0.5, 'half')\n"))
    (pdir / "a.py").write_text(source("alpha", body="def filter_signal(s):\n"
                                      "    return scale(0.5, 'halfa')\n"))
    (pdir / "c.py").write_text(source("charlie", api=99))
    (pdir / "d.py").write_text(source("alpha", body="def notify(e):\n    pass\n"))
    h = host(pdir)
    h.load_all()
    assert [s.name for s in h.filters] == ["alpha", "bravo"]
    # scales multiply; the reason names the last filter that scaled
    assert filter_call(h, step()) == (0.25, "plugin:bravo:half")
    st = {s.path.name: s for s in h.states.values()}
    assert st["c.py"].state == REJECTED and "unsupported plugin API version 99" in (
        st["c.py"].last_error)
    assert st["d.py"].state == REJECTED and "already used by a.py" in st["d.py"].last_error
    assert any(m.startswith("plugin rejected: charlie (") for m in
               (r.getMessage() for r in caplog.records))


def test_a_veto_stops_the_chain_of_filters(pdir):
    (pdir / "a.py").write_text(source("a", body="def filter_signal(s):\n"
                                      "    return veto('no')\n"))
    (pdir / "b.py").write_text(source("b", body="calls = []\ndef filter_signal(s):\n"
                                      "    calls.append(s)\n"))
    h = host(pdir)
    h.load_all()
    assert filter_call(h, step()) == (0.0, "plugin:a:no")
    assert h.states[pdir / "b.py"].calls == 0


def test_signal_view_is_read_only_and_complete(pdir):
    (pdir / "v.py").write_text(source("v", body="""
        seen = []
        def filter_signal(s):
            seen.append(s)
            s.models["evil"] = (1.0, 0.0)
    """))
    h = host(pdir)
    h.load_all()
    for i in range(3):
        filter_call(h, step(seq=i, ts=TS + i * 300_000))
    filter_call(h, step(regime="high_vol", ts=TS + 3 * 300_000))
    mod = h.states[pdir / "v.py"].plugin.module
    first, last = mod.seen[0], mod.seen[-1]
    assert (first.symbol, first.side, first.price, first.regime) == ("ETHBTC", 1, 0.05, "range")
    assert first.models == {"xgboost": (0.7, 0.1)} and first.features["ret_1"] == 0.0
    assert [s.bars_in_regime for s in mod.seen] == [1, 2, 3, 1]  # reset by the new regime
    assert last.regime == "high_vol"
    with pytest.raises(AttributeError):
        first.confidence = 1.0  # frozen
    assert h.states[pdir / "v.py"].errors == 4  # writing to the mapping raised: counted


async def test_a_raising_plugin_is_disabled_after_max_errors_and_a_touch_revives_it(
        pdir, caplog):
    f = pdir / "bad.py"
    f.write_text(source("bad", body="""
        def filter_signal(s):
            raise RuntimeError("kaput")
        def check_order(o, a):
            return "not a verdict"
    """))
    h = host(pdir, max_errors=3)
    h.load_all()
    st = h.states[f]
    assert filter_call(h, step()) == (1.0, "")  # fails open: no opinion
    assert check_call(h) is None  # nonsense result: an error too, fails open
    assert (st.errors, st.consecutive, st.state) == (2, 2, ACTIVE)
    filter_call(h, step())
    assert st.state == DISABLED and not h.filters and not h.rules
    assert st.calls == 3 and filter_call(h, step()) == (1.0, "") and st.calls == 3
    errors = messages(caplog, "plugin error: bad 1.0")
    assert len(errors) == 1 and "kaput" in errors[0]  # once per burst
    disabled = messages(caplog, "plugin disabled: bad 1.0")
    assert len(disabled) == 1 and "3 errors in a row" in disabled[0]
    assert "RuntimeError: kaput" in st.row()["last_error"]
    os.utime(f)  # touching a disabled plugin's file reloads it
    await h.reload(f)
    assert h.states[f].state == ACTIVE and h.states[f].errors == 0


def test_a_success_ends_an_error_burst(pdir, caplog):
    (pdir / "flaky.py").write_text(source("flaky", body="""
        n = [0]
        def filter_signal(s):
            n[0] += 1
            if n[0] % 2:
                raise ValueError("odd")
    """))
    h = host(pdir, max_errors=2)
    h.load_all()
    for _ in range(6):
        filter_call(h, step())
    st = h.states[pdir / "flaky.py"]
    assert st.state == ACTIVE and st.errors == 3  # never two in a row
    assert len(messages(caplog, "plugin error: flaky")) == 3  # each burst logged once


def test_risk_rules_deny_with_their_code_and_see_entries_today(pdir):
    (pdir / "cap.py").write_text(source("cap", body="""
        seen = []
        def check_order(order, account):
            seen.append((order, account))
            return deny("too_many") if account.entries_today >= 2 else None
    """))
    h = host(pdir)
    h.load_all()
    s = step()
    assert check_call(h) is None
    h.note_entry("ETHBTC", s.close_ts)
    assert check_call(h) is None
    h.note_entry("ETHBTC", s.close_ts)
    assert check_call(h) == "plugin:cap:too_many"
    assert check_call(h, intent("LTCBTC")) is None  # per symbol
    order, account = h.states[pdir / "cap.py"].plugin.module.seen[-1]
    assert (order.symbol, order.qty, order.notional) == ("LTCBTC", 1.5, pytest.approx(0.075))
    assert account.entries_today == 0 and account.entries_today_total == 2
    next_day = step(ts=TS + 86_400_000)
    assert check_call(h, s=next_day) is None  # a new UTC day starts from zero
    assert h.states[pdir / "cap.py"].plugin.module.seen[-1][1].entries_today == 0


EVIL = """
class Evil:
    def __repr__(self):
        raise ValueError("repr")
    __str__ = __repr__
    def __bool__(self):
        raise ValueError("bool")
    def __le__(self, other):
        raise ValueError("le")
    __ge__ = __lt__ = __gt__ = __le__
"""


@pytest.mark.parametrize(("hook", "value"), [
    ("filter_signal", "Verdict(factor='x')"),  # was a TypeError in the sizer
    ("filter_signal", "Verdict(factor=Evil())"),  # comparison raises
    ("filter_signal", "Evil()"),  # repr raises inside the host's error message
    ("filter_signal", "Verdict(factor=0.0, reason=Evil())"),  # bool() raises
    ("check_order", "RiskVerdict(allowed=Evil())"),  # bool() raises
    ("check_order", "RiskVerdict(allowed='no', code=5)"),  # no bool, no str
    ("check_order", "Evil()"),
])
def test_a_nonsense_answer_is_the_plugins_error_not_the_callers(pdir, hook, value):
    """Found by fuzzing (issue 11, B14): answers were read, compared and repr'd outside
    the protected call, so a bad one raised in the sizer or risk actor. Now they are
    checked in the plugin's lane: an error counted to the plugin, named in last_error,
    and the decision falls back to keep/allow."""
    args = "signal" if hook == "filter_signal" else "order, account"
    (pdir / "bad.py").write_text(source("bad", body=EVIL + textwrap.dedent(f"""
        from qtraderd.plugins.api import RiskVerdict, Verdict
        def {hook}({args}):
            return {value}
    """)))
    h = host(pdir, max_errors=0)
    h.load_all()
    st = h.states[pdir / "bad.py"]
    for _ in range(2):
        assert filter_call(h, step()) == (1.0, "")
        assert check_call(h) is None
    assert st.state == ACTIVE and st.errors == 2, st
    assert st.last_error.startswith(f"{hook}: returned "), st.last_error
    if value.startswith("Evil"):
        assert "<Evil object: its repr() raised ValueError>" in st.last_error


def test_an_exception_whose_str_raises_is_reported_by_type(pdir):
    (pdir / "bad.py").write_text(source("bad", body=EVIL + textwrap.dedent("""
        def filter_signal(signal):
            raise RuntimeError(Evil())
    """)))
    h = host(pdir, max_errors=0)
    h.load_all()
    assert filter_call(h, step()) == (1.0, "")
    st = h.states[pdir / "bad.py"]
    assert st.errors == 1 and st.last_error == (
        "filter_signal: RuntimeError: <RuntimeError object: its str() raised ValueError>")


async def test_notifiers_get_events_sync_in_a_thread_async_on_the_loop(pdir):
    (pdir / "s.py").write_text(source("s", body="""
        import threading
        got = []
        def notify(event):
            got.append((event.kind, threading.current_thread() is threading.main_thread()))
    """))
    (pdir / "a.py").write_text(source("a", body="""
        got = []
        async def notify(event):
            got.append(event.to_dict())
    """))
    h = host(pdir)
    h.load_all()
    async with trio.open_nursery() as n:
        await n.start(h.run)
        h.emit("trade_closed", TS, {"symbol": "ETHBTC", "net_pnl": 0.001})
        h.emit("risk_state", TS, {"state": "HALTED"})
        assert await h.notifications.drain(5.0)
        n.cancel_scope.cancel()
    sync = h.states[pdir / "s.py"].plugin.module.got
    asyn = h.states[pdir / "a.py"].plugin.module.got
    assert sync == [("trade_closed", False), ("risk_state", False)]  # worker thread
    assert [e["event"] for e in asyn] == ["trade_closed", "risk_state"]
    assert asyn[0]["data"] == {"symbol": "ETHBTC", "net_pnl": 0.001}
    assert asyn[0]["time"].endswith("Z") and asyn[0]["ts"] == TS
    assert h.status()["events_delivered"] == 2


async def test_a_full_queue_drops_and_counts_and_a_hung_notifier_times_out(pdir, caplog):
    (pdir / "slow.py").write_text(source("slow", body="""
        import trio
        async def notify(event):
            await trio.sleep(60)
    """))
    h = host(pdir, notify_queue=2, notify_timeout_s=0.2, max_errors=2)
    h.load_all()
    for i in range(5):  # nobody drains yet: 2 queued, 3 dropped, never blocking
        h.emit("trade_opened", TS + i, {"i": i})
    assert h.notifications.dropped == 3 and h.notifications.queued == 2
    assert len(messages(caplog, "plugin notifier queue full")) == 1
    async with trio.open_nursery() as n:
        await n.start(h.run)
        assert await h.notifications.drain(5.0)  # two timeouts, not two minutes
        n.cancel_scope.cancel()
    st = h.states[pdir / "slow.py"]
    assert st.state == DISABLED and "timed out after 0.2 s" in st.last_error


def test_no_events_are_queued_without_notifiers(pdir):
    h = host(pdir)
    h.load_all()
    h.emit("trade_opened", TS, {})
    assert h.notifications.queued == 0 and h.notifications.dropped == 0


async def test_changed_settings_reload_the_plugin(pdir):
    (pdir / "cfg.py").write_text(source("cfg", body="""
        limit = [0]
        def setup(settings):
            limit[0] = settings.get("limit", 0)
        def check_order(o, a):
            return deny("lim") if limit[0] else None
    """))
    h = host(pdir)
    h.load_all()
    assert check_call(h) is None
    cfg = with_changes(load(env={}), plugins={"settle_ms": 20.0,
                                               "settings": {"cfg": {"limit": 1}}})
    async with trio.open_nursery() as n:
        await n.start(h.run)
        h.reconfigure(cfg)
        await until(lambda: h.reloads == 1 and h.states[pdir / "cfg.py"].state == ACTIVE)
        n.cancel_scope.cancel()
    assert check_call(h) == "plugin:cfg:lim"


def test_a_missing_directory_means_no_plugins(tmp_path, caplog):
    h = host(tmp_path / "nope")
    h.load_all()
    assert not h.states and "does not exist" in caplog.text
    assert h.status()["plugins"] == []


async def test_a_file_refused_for_a_taken_name_loads_once_the_name_is_free(pdir):
    (pdir / "a.py").write_text(vetoer(1, "twin"))
    (pdir / "b.py").write_text(vetoer(2, "twin"))
    h = host(pdir)
    h.load_all()
    assert h.states[pdir / "b.py"].state == REJECTED
    async with trio.open_nursery() as n:
        await n.start(h.run)
        h.remove(pdir / "a.py")  # what the watcher does when a.py is deleted
        await until(lambda: h.states[pdir / "b.py"].state == ACTIVE)
        n.cancel_scope.cancel()
    assert filter_call(h, step()) == (0.0, "plugin:twin:v2")


async def test_a_refusal_of_a_half_written_file_does_not_hide_the_finished_one(pdir):
    """The watcher may read a file mid-write (here: empty); by the time the refusal is
    recorded the file is complete. The refusal is of the bytes read, so the complete
    file still loads on its own event."""
    f = pdir / "race.py"
    f.write_text("")
    try:
        load_plugin(f, lambda _n: {})
    except PluginRejected as exc:
        refused = exc
    f.write_text(vetoer(1, "race"))  # the writer finishes ...
    h = host(pdir)
    h.install(f, refused)  # ... before the refusal of the empty read is installed
    assert h.states[f].state == REJECTED and "missing PLUGIN_API" in h.states[f].last_error
    await h.reload(f)  # the finished file's own change event
    assert h.states[f].state == ACTIVE
