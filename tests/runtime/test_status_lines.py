"""What systemd shows (STATUS=) around stops and reloads, and the `stopping:` log line
(issue 11, B12). A real datagram socket stands in for systemd; the daemon is the real one.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from qtraderd.core.config import load, with_changes
from qtraderd.runtime.daemon import Daemon
from qtraderd.runtime.reload import ReloadRejected, reload_config
from qtraderd.runtime.systemd import Notifier, Service
from tests.conftest import make_store
from tests.notify_listener import Listener


@pytest.fixture
def listener():
    lst = Listener.bind()
    yield lst
    lst.close()


def statuses(listener: Listener) -> list[str]:
    return [m.fields["STATUS"] for m in listener.with_key("STATUS")]


async def test_no_progress_status_replaces_stopping(listener):
    service = Service(listener.notifier(), status_every_s=0.01)
    ticks = iter(range(10**9))
    sup = SimpleNamespace(started=trio.Event(), handles={})
    sup.started.set()
    async with listener.listening(), trio.open_nursery() as nursery:
        nursery.start_soon(service.run, sup, lambda: f"progress {next(ticks)}")
        await listener.wait_key("STATUS", count=5)  # the progress line is moving
        service.stopping("received SIGTERM")
        stop = await listener.wait_key("STOPPING", "1")
        n = len(listener.with_key("STATUS"))
        with trio.move_on_after(0.3):  # thirty status periods: none may come
            await listener.wait_key("STATUS", count=n + 1)
        nursery.cancel_scope.cancel()
    assert stop.fields["STATUS"] == "stopping: received SIGTERM"
    assert statuses(listener)[-1] == "stopping: received SIGTERM"
    assert not service.notifier.status("progress again")


def test_after_stopping_ready_and_reloading_leave_the_status_alone(listener):
    n = listener.notifier()
    n.status("progress 1")
    n.stopping("stopping: end of data")
    assert n.ready("progress 2") and n.reloading()
    msgs = [listener.raw.recv(65536).decode() for _ in range(4)]
    assert "STATUS=stopping: end of data" in msgs[1]
    assert msgs[2] == "READY=1" and "STATUS" not in msgs[3]


def test_a_status_that_was_not_delivered_is_sent_again(listener):
    n = Notifier("/nonexistent/notify")  # every send fails
    assert not n.status("progress 1")
    n.address = listener.notifier().address
    assert n.status("progress 1")  # not taken for shown when it never left
    assert listener.raw.recv(65536) == b"STATUS=progress 1"


@pytest.mark.parametrize("content", [b"[risk]\ndaily_loss_pct = 500\n",  # out of range
                                     b"\xff\xfe not even text"])  # an unexpected error
def test_a_refused_reload_puts_back_the_status_shown_before(listener, tmp_path, content,
                                                            caplog):
    cfg_file = tmp_path / "qtraderd.toml"
    cfg_file.write_bytes(content)
    service = Service(listener.notifier())
    service.ready = True
    daemon = SimpleNamespace(service=service, config_path=cfg_file, cfg=load(env={}),
                             progress_line=lambda final=False: "progress 2 (moved on)")
    service.notifier.status("progress 1")
    with pytest.raises(ReloadRejected):
        reload_config(daemon)  # type: ignore[arg-type]
    got = [listener.raw.recv(65536).decode() for _ in range(3)]
    assert got[0] == "STATUS=progress 1"
    assert got[1].startswith("RELOADING=1") and "STATUS=reloading" in got[1]
    assert got[2] == "READY=1\nSTATUS=progress 1"
    assert "config reload rejected" in caplog.text


@pytest.fixture
def small(tmp_path):
    make_store(tmp_path / "state", limit=600)
    sock_dir = Path(tempfile.mkdtemp(prefix="qtsl", dir="/tmp"))
    yield {"state": tmp_path / "state", "models": tmp_path / "models",
           "sock": sock_dir / "d.sock"}
    shutil.rmtree(sock_dir, ignore_errors=True)


async def test_end_of_data_is_a_stopping_line_and_status(small, listener, caplog):
    caplog.set_level(logging.INFO, logger="qtraderd")
    cfg = with_changes(load(env={}), learning={"enabled": False}, rl={"enabled": False})
    d = Daemon(cfg, small["state"], small["models"], socket_path=small["sock"],
               progress_every_s=0, models={}, service=Service(listener.notifier(),
                                                              status_every_s=0.05))
    async with listener.listening():
        with trio.fail_after(120):
            assert await d.run() == 0
        await listener.wait_key("STOPPING", "1")
    stopping = [r.getMessage() for r in caplog.records if r.getMessage().startswith(
        "stopping:")]
    assert stopping == ["stopping: end of data"]
    assert statuses(listener)[-1] == "stopping: end of data"
