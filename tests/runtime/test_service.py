"""systemd integration: sd_notify over a real datagram socket, and the watchdog.

The notify socket is a real AF_UNIX datagram socket bound in /tmp (and one in the
abstract namespace); the daemon is the real one on a small store. Nothing waits with a
sleep: tests wait for a message, a state or a deadline.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from qtraderd.actors.monitor import MonitorActor
from qtraderd.core.config import load, with_changes
from qtraderd.core.messages import Step
from qtraderd.runtime import daemon as daemon_mod
from qtraderd.runtime.daemon import Daemon
from qtraderd.runtime.supervisor import StepActor, Supervisor, pass_on
from qtraderd.runtime.systemd import Notifier, Service, Watchdog, notify_address, watchdog_interval
from tests.conftest import make_store
from tests.notify_listener import Listener, parse

# ----------------------------------------------------------------------------- Notifier


def _recv(sock: socket.socket) -> dict[str, str]:
    sock.settimeout(5.0)
    return parse(sock.recv(65536))


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_speaks_the_protocol_to_a_path_and_an_abstract_socket(abstract):
    listener = Listener.bind(abstract=abstract)
    sock = listener.raw
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value})
        assert n.enabled
        assert n.ready("up\nand running")
        assert _recv(sock) == {"READY": "1", "STATUS": "up and running"}
        assert n.status("working") and _recv(sock) == {"STATUS": "working"}
        assert not n.status("working")  # unchanged: nothing sent
        assert n.watchdog() and _recv(sock) == {"WATCHDOG": "1"}
        assert n.reloading()
        msg = _recv(sock)
        assert msg["RELOADING"] == "1" and int(msg["MONOTONIC_USEC"]) > 0
        assert n.stopping("stopping: test") and _recv(sock) == {
            "STOPPING": "1", "STATUS": "stopping: test"}
        assert n.extend_timeout(1.5) and _recv(sock) == {"EXTEND_TIMEOUT_USEC": "1500000"}
    finally:
        listener.close()


def test_without_notify_socket_everything_is_a_no_op():
    n = Notifier.from_env({})
    assert not n.enabled and n.watchdog_s is None
    assert not n.ready("x") and not n.watchdog() and not n.stopping() and not n.reloading()
    assert notify_address("vsock:2:1234") is None  # not a transport a host service uses


def test_a_vanished_socket_is_logged_once_and_never_raises(caplog):
    n = Notifier("/nonexistent/notify")
    with caplog.at_level(logging.WARNING):
        assert not n.ready() and not n.watchdog()
    assert caplog.text.count("cannot notify systemd") == 1


def test_watchdog_settings_belong_to_the_process_they_name():
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}) == 30.0
    # a child that inherited the parent's environment must not ping
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid + 1)}) \
        is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({}) is None
    n = Notifier.from_env({"WATCHDOG_USEC": "2000000"})  # no socket: nobody to ping
    assert n.watchdog_s is None


# ----------------------------------------------------------------------------- Watchdog


class Sticky(StepActor):
    """Passes steps on, except that it hangs on the steps named in `stick_on`."""

    name = "sticky"

    def __init__(self, inbox, outbox) -> None:
        super().__init__(inbox, outbox)
        self.stick_on: set[int] = set()
        self.release = trio.Event()

    async def run(self) -> None:
        async for step in self.inbox:
            if step.seq in self.stick_on:
                await self.release.wait()
            self.processed += 1
            await pass_on(self.outbox, step)


def _step(seq: int) -> Step:
    return Step(seq=seq, ts=seq, close_ts=seq + 1, bars=())


async def test_pings_every_half_interval_and_stop_while_an_actor_is_wedged(autojump_clock):
    listener = Listener.bind()
    in_tx, in_rx = trio.open_memory_channel[Step](4)
    out_tx, _out_rx = trio.open_memory_channel[Step](1000)
    actor = Sticky(in_rx, out_tx)
    sup = Supervisor(intensity=3, period_s=60, backoff_s=0, backoff_max_s=0)
    wd = Watchdog(listener.notifier(10.0), sup, 10.0)
    pings = lambda: [m.at for m in listener.with_key("WATCHDOG")]  # noqa: E731
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.collect)
            nursery.start_soon(sup.run, [actor])
            await sup.started.wait()
            t0 = trio.current_time()
            nursery.start_soon(wd.run)
            for seq in range(1, 21):  # busy: a step every 3 s for a minute
                await in_tx.send(_step(seq))
                await trio.sleep(3)
            await trio.sleep(59)  # then idle with an empty inbox: still healthy
            assert actor.processed == 20
            healthy = pings()
            assert len(healthy) == 23  # every 5 s for 119 s
            assert [round(b - a, 6) for a, b in zip([t0, *healthy], healthy, strict=False)] \
                == [5.0] * 23
            # wedge: the actor hangs on step 21 while step 22 waits in its inbox
            actor.stick_on = {21}
            wedged_at = trio.current_time()
            await in_tx.send(_step(21))
            await in_tx.send(_step(22))
            await trio.sleep(100)
            assert wd.problems and "actor sticky has 1 waiting message" in wd.problems[0]
            late = [t for t in pings() if t > wedged_at]
            # pings go on until the stall is older than the interval, then stop for good
            assert late and max(late) <= wedged_at + 10 + 5
            before = len(pings())
            actor.release.set()
            await listener.wait_key("WATCHDOG", count=before + 1)
            assert not wd.problems and actor.processed == 22
            nursery.cancel_scope.cancel()
    finally:
        listener.close()


async def test_a_deliberate_wait_is_not_a_wedge(autojump_clock):
    """A learner job holding the replay clock stalls the chain on purpose (bounded)."""
    listener = Listener.bind()
    in_tx, in_rx = trio.open_memory_channel[Step](4)
    out_tx, _out_rx = trio.open_memory_channel[Step](10)
    actor = Sticky(in_rx, out_tx)
    actor.stick_on = {1}
    sup = Supervisor(intensity=3, period_s=60, backoff_s=0, backoff_max_s=0)
    wd = Watchdog(listener.notifier(10.0), sup, 10.0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.collect)
            nursery.start_soon(sup.run, [actor])
            await sup.started.wait()
            nursery.start_soon(wd.run)
            actor.busy_until = trio.current_time() + 300
            await in_tx.send(_step(1))
            await in_tx.send(_step(2))
            await trio.sleep(288)
            assert not wd.problems and len(listener.with_key("WATCHDOG")) == 57
            await trio.sleep(30)  # the declared wait is over and nothing moved: wedged
            assert wd.problems
            nursery.cancel_scope.cancel()
    finally:
        listener.close()


async def test_ready_waits_until_every_actor_runs(autojump_clock):
    listener = Listener.bind()
    sup = Supervisor(intensity=3, period_s=60, backoff_s=0, backoff_max_s=0)
    _in_tx, in_rx = trio.open_memory_channel[Step](1)
    actor = Sticky(in_rx, trio.open_memory_channel[Step](1)[0])
    service = Service(listener.notifier(4.0), status_every_s=1.0)
    try:
        async with listener.listening(), trio.open_nursery() as nursery:
            nursery.start_soon(service.run, sup, lambda: "the status line")
            await trio.sleep(30)  # the service waits as long as it takes
            assert listener.messages == [] and service.watchdog is None
            nursery.start_soon(sup.run, [actor])
            ready = await listener.wait_key("READY", "1")
            assert ready.fields["STATUS"] == "the status line"
            assert sup.started.is_set() and sup.handles["sticky"].state == "running"
            await listener.wait_key("WATCHDOG", "1")  # pings only from READY on
            assert service.summary()["ready_sent"]
            nursery.cancel_scope.cancel()
    finally:
        listener.close()


async def test_a_blocked_event_loop_sends_no_pings(caplog):
    """Real time: while the loop is blocked nothing is sent, and the gap is logged."""
    listener = Listener.bind()
    sup = Supervisor(intensity=3, period_s=60, backoff_s=0, backoff_max_s=0)
    idle_rx = trio.open_memory_channel[Step](1)[1]
    actor = Sticky(idle_rx, trio.open_memory_channel[Step](1)[0])
    wd = Watchdog(listener.notifier(0.1), sup, 0.1)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.collect)
            nursery.start_soon(sup.run, [actor])
            await sup.started.wait()
            nursery.start_soon(wd.run)
            await listener.wait_key("WATCHDOG", count=2)
            time.sleep(0.5)  # the code under test: a loop blocked by a synchronous call
            unblocked = trio.current_time()
            n = len(listener.with_key("WATCHDOG"))
            await listener.wait_key("WATCHDOG", count=n + 2)
            times = [m.at for m in listener.with_key("WATCHDOG")]
            assert max(b - a for a, b in itertools.pairwise(times)) >= 0.5
            assert all(t <= unblocked - 0.5 or t >= unblocked for t in times)
            after = [t for t in times if t >= unblocked]
            assert after[1] - after[0] >= 0.8 * wd.period_s  # no catch-up ping at once
            nursery.cancel_scope.cancel()
    finally:
        listener.close()
    assert "watchdog: the event loop was blocked" in caplog.text


# ----------------------------------------------------------------------------- the daemon


@pytest.fixture
def small(tmp_path):
    """A small store (3 pairs, 1500 bars each) and an empty models directory."""
    make_store(tmp_path / "state", limit=1500)
    sock_dir = Path(tempfile.mkdtemp(prefix="qts", dir="/tmp"))
    yield {"state": tmp_path / "state", "models": tmp_path / "models",
           "sock": sock_dir / "d.sock", "root": tmp_path}
    shutil.rmtree(sock_dir, ignore_errors=True)


def make_daemon(world: dict[str, Any], listener: Listener, watchdog_s: float | None = None,
                **sections: Any) -> Daemon:
    sections.setdefault("learning", {"enabled": False})
    sections.setdefault("rl", {"enabled": False})
    sections.setdefault("feed", {"exit_at_end": False})
    cfg = with_changes(load(env={}), **sections)
    service = Service(listener.notifier(watchdog_s), status_every_s=0.05)
    return Daemon(cfg, world["state"], world["models"], socket_path=world["sock"],
                  progress_every_s=0, models={}, service=service,
                  config_path=world.get("config"))


async def test_ready_after_actors_started_then_status_and_stopping(small, monkeypatch):
    listener = Listener.bind(abstract=True)
    d = make_daemon(small, listener)
    at_ready: list[Any] = []
    real = Notifier.notify

    def spy(self, *fields):
        if "READY=1" in fields:  # what the daemon looked like at the moment it said READY
            at_ready.append((d.supervisor.started.is_set(),
                             {n: h.state for n, h in d.supervisor.handles.items()}))
        return real(self, *fields)

    monkeypatch.setattr(Notifier, "notify", spy)
    try:
        async with listener.listening(), trio.open_nursery() as nursery:
            await nursery.start(d.run)
            ready = await listener.wait_key("READY", "1")
            started, states = at_ready[0]
            assert started and set(states) == {"feed", "execution", "monitor", "predictor",
                                               "sizer", "risk", "recorder"}
            assert all(s == "running" for s in states.values())
            assert ready.fields["STATUS"].startswith("progress: ")
            # the status follows the work: bars go up until the replay ends
            await listener.wait_for(lambda ms: any(
                "progress: 4,500 bars" in m.fields.get("STATUS", "") for m in ms))
            statuses = [m.fields["STATUS"] for m in listener.with_key("STATUS")]
            assert statuses[0] == ready.fields["STATUS"] and len(set(statuses)) >= 2
            assert not listener.with_key("STOPPING")
            d.request_stop("test over")
            stop = await listener.wait_key("STOPPING", "1")
            assert stop.fields["STATUS"] == "stopping: test over"
    finally:
        listener.close()
    assert len(listener.with_key("READY")) == 1  # READY once: no reload happened
    assert d.exit_code == 0


async def test_watchdog_pings_at_the_configured_interval_in_a_real_daemon(small):
    listener = Listener.bind()
    d = make_daemon(small, listener, watchdog_s=0.4)
    try:
        async with listener.listening(), trio.open_nursery() as nursery:
            await nursery.start(d.run)
            await listener.wait_key("READY", "1")
            first = await listener.wait_key("WATCHDOG", "1")
            last = await listener.wait_key("WATCHDOG", "1", count=8)
            times = [m.at for m in listener.with_key("WATCHDOG")]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert min(gaps) >= 0.15  # never faster than every WatchdogSec / 2 = 0.2 s
            assert (last.at - first.at) / 7 < 0.6  # and not much slower on a busy machine
            assert d.status()["systemd"]["watchdog_pings"] >= 8
            d.request_stop("test over")
    finally:
        listener.close()


class WedgingMonitor(MonitorActor):
    """Hangs on its 50th step until released: awaiting something that never comes."""

    release: trio.Event

    async def run(self) -> None:
        async for step in self.inbox:
            if self.processed == 50:
                await self.release.wait()
            out = self.handle(step)
            self.processed += 1
            await pass_on(self.outbox, out)
        await self.outbox.aclose()


async def test_pings_stop_when_an_actor_is_wedged_and_resume_when_it_recovers(
        small, monkeypatch, caplog):
    release = trio.Event()
    monkeypatch.setattr(WedgingMonitor, "release", release, raising=False)
    monkeypatch.setattr(daemon_mod, "MonitorActor", WedgingMonitor)
    listener = Listener.bind()
    d = make_daemon(small, listener, watchdog_s=0.4)
    try:
        async with listener.listening(), trio.open_nursery() as nursery:
            await nursery.start(d.run)
            await listener.wait_key("WATCHDOG", "1", count=2)
            with trio.fail_after(30):  # polling a state, with a deadline
                while d.service.watchdog is None or not d.service.watchdog.problems:
                    await trio.sleep(0.02)
            assert d.monitor.processed == 50 and not d.feed.done
            n = len(listener.with_key("WATCHDOG"))
            with trio.move_on_after(1.0):  # five ping periods: none may come
                await listener.wait_key("WATCHDOG", count=n + 1)
            assert len(listener.with_key("WATCHDOG")) == n
            status = listener.with_key("STATUS")[-1].fields["STATUS"]
            assert "WEDGED: actor execution" in status
            release.set()
            await listener.wait_key("WATCHDOG", count=n + 1, timeout=10)
            with trio.fail_after(30):
                while not d.feed.done:
                    await trio.sleep(0.02)
            d.request_stop("test over")
    finally:
        listener.close()
    assert "watchdog: withholding keep-alive pings" in caplog.text
    assert "monitor 50" in caplog.text  # the line names every actor's count: who lags
    assert "watchdog: healthy again" in caplog.text


async def test_a_learner_job_that_holds_the_clock_declares_its_wait(tmp_path, monkeypatch):
    """The one deliberate long wait in the chain tells the watchdog how long it may take."""
    from qtraderd.actors.learner import Job, LearnerActor
    from qtraderd.core.clock import ReplayClock

    class Registry:
        def __init__(self) -> None:
            self.entries: dict = {}

        def champion(self, family):
            return None

    cfg = with_changes(load(env={}), learning={"job_timeout_s": 100.0})
    chan = trio.open_memory_channel  # the learner only needs channels to exist
    learner = LearnerActor(cfg, None, tmp_path, tmp_path / "m", ReplayClock(0), Registry(),
                           chan(1)[1], chan(1)[0], chan(1)[0], chan(1)[0], chan(1)[1],
                           hold_clock=True)
    seen: list[float] = []

    async def job(job, ts):
        seen.append(learner.busy_until - trio.current_time())

    monkeypatch.setattr(learner, "_run_job", job)
    learner.queue.append(Job("xgboost", ["test"], 0))
    await learner._maybe_start_job(0)
    assert seen and seen[0] > 100  # the job's timeout and then some
    assert learner.busy_until is None  # and the wait is over when the job is
