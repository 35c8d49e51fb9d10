"""The daemon's control socket as configured: where it binds under systemd, its group and
mode, and the [control] limits reaching the server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest
import trio

from qtraderd.control import client as ctl
from qtraderd.core.config import load, with_changes
from qtraderd.runtime.daemon import Daemon


@pytest.fixture
def world(trained, tmp_path):
    shutil.copytree(trained["state"], tmp_path / "state")
    shutil.copytree(trained["models"], tmp_path / "models")
    run_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="qtrd"))
    yield {"state": tmp_path / "state", "models": tmp_path / "models", "run": run_dir}
    shutil.rmtree(run_dir, ignore_errors=True)


def _raw_ask(path: Path, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(line)
        buf = b""
        while b"\n" not in buf and (chunk := s.recv(65536)):
            buf += chunk
    return json.loads(buf.partition(b"\n")[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
async def test_socket_in_runtime_directory_with_group_and_limits(world, monkeypatch):
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(world["run"]))
    cfg = with_changes(load(env={}), feed={"exit_at_end": False, "speed": 1.0},
                       learning={"enabled": False}, rl={"enabled": False},
                       control={"group": "nogroup", "max_request_bytes": 512})
    d = Daemon(cfg, world["state"], world["models"], progress_every_s=0)
    sock = world["run"] / "qtraderd.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        assert d.socket_path == sock and not (world["state"] / "qtraderd.sock").exists()
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 65534
        # ctl finds it through $RUNTIME_DIRECTORY, like the service's own tools would
        status = await trio.to_thread.run_sync(ctl.request, ctl.socket_path_for(), "status")
        assert status["ok"] and status["result"]["credentials"] == "none"
        big = json.dumps({"cmd": "status", "args": {"pad": "x" * 600}}).encode() + b"\n"
        reply = await trio.to_thread.run_sync(_raw_ask, sock, big)
        assert reply == {"ok": False, "error": "request too large"}
        d.request_stop("test over")
    assert not sock.exists()
