"""`qtraderd ctl` client: word parsing, and main() against a real control server.

The sync client runs in a worker thread (trio.to_thread.run_sync) while the server runs in
the test's Trio loop, so both sides use real Unix sockets.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from qtraderd.control.client import (
    COMMANDS,
    CtlError,
    UsageError,
    daemon_socket_path,
    instance_socket,
    main,
    parse_command,
    request,
    socket_path_for,
)
from qtraderd.control.server import ControlError, ControlServer
from tests.as_user import NOBODY, needs_root, run_as


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """Short directory: Unix socket paths are limited to 107 bytes."""
    d = tempfile.mkdtemp(prefix="qtctl", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize(("words", "expected"), [
    (["status"], ("status", {})),
    (["modules"], ("modules", {})),
    (["positions"], ("positions", {})),
    (["pnl"], ("pnl", {})),
    (["models"], ("models", {})),
    (["resume"], ("resume", {})),
    (["flatten"], ("flatten", {})),
    (["halt"], ("halt", {})),
    (["halt", "too", "volatile"], ("halt", {"reason": "too volatile"})),
    (["pause", "ethbtc"], ("pause", {"symbol": "ETHBTC"})),
    (["resume-symbol", "EthBtc"], ("resume-symbol", {"symbol": "ETHBTC"})),
    (["trades"], ("trades", {})),
    (["trades", "20"], ("trades", {"limit": 20})),
    (["frobnicate", "family=xgb", "version=3", "dry=true", "note=a=b"],
     ("frobnicate", {"family": "xgb", "version": 3, "dry": True, "note": "a=b"})),
    (["frobnicate"], ("frobnicate", {})),
    (["promote", "xgboost", "20180125T000000Z-ab12"],
     ("promote", {"model": "xgboost", "version": "20180125T000000Z-ab12"})),
    (["rollback", "lightgbm"], ("rollback", {"model": "lightgbm"})),
    (["retrain"], ("retrain", {})),
    (["retrain", "nhits"], ("retrain", {"model": "nhits"})),
    (["learning"], ("learning", {})),
    (["rl"], ("rl", {})),
    (["positions", "symbol=BTCUSDT"], ("positions", {"symbol": "BTCUSDT"})),
])
def test_parse_command(words: list[str], expected: tuple[str, dict[str, Any]]) -> None:
    assert parse_command(words) == expected


@pytest.mark.parametrize("words", [
    [], ["pause"], ["pause", "A", "B"], ["resume-symbol"], ["trades", "x"], ["trades", "0"],
    ["trades", "1", "2"], ["status", "verbose"], ["promote", "xgb"], ["rollback"],
    ["retrain", "a", "b"], ["frobnicate", "=3"],
])
def test_parse_command_rejects(words: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_command(words)


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for usage, desc in COMMANDS.values():
        assert f"{usage}  " in out and desc in out
    assert "risk HALTED" in out and "close every position at the next bar" in out


STATUS = {"mode": "replay", "bars": 1234, "risk": {"state": "ACTIVE"},
          "actors": [{"name": "feed", "restarts": 0}, {"name": "predictor", "restarts": 2}]}


class Recorder:
    """Handlers that remember what the client sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def handlers(self) -> dict[str, Any]:
        async def status(args: dict[str, Any]) -> Any:
            self.calls.append(("status", args))
            return STATUS

        async def halt(args: dict[str, Any]) -> Any:
            self.calls.append(("halt", args))
            return {"state": "HALTED", "reason": args.get("reason")}

        async def flatten(args: dict[str, Any]) -> Any:
            raise ControlError("no open positions")

        return {"status": status, "halt": halt, "flatten": flatten}


@asynccontextmanager
async def daemon(path: Path, rec: Recorder) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, rec.handlers()).serve)
        yield
        nursery.cancel_scope.cancel()


async def run_main(argv: list[str]) -> int:
    return await trio.to_thread.run_sync(main, argv)


async def test_status_prints_tables(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder()
    async with daemon(state_dir / "qtraderd.sock", rec):
        assert await run_main(["--state-dir", str(state_dir), "status"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "mode  replay" in lines and "bars  1234" in lines
    assert "== actors ==" in lines
    assert any(line.split() == ["predictor", "2"] for line in lines)
    assert rec.calls == [("status", {})]


async def test_json_output_is_the_result(state_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = state_dir / "other.sock"
    async with daemon(path, Recorder()):
        assert await run_main(["--socket", str(path), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


async def test_args_reach_the_daemon(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder()
    path = state_dir / "qtraderd.sock"
    async with daemon(path, rec):
        # Options after the reason words must not swallow or break them.
        assert await run_main(["--socket", str(path), "halt", "too", "--json", "volatile"]) == 0
    assert rec.calls == [("halt", {"reason": "too volatile"})]
    assert json.loads(capsys.readouterr().out) == {"state": "HALTED", "reason": "too volatile"}


async def test_error_reply_exits_1(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = state_dir / "qtraderd.sock"
    async with daemon(path, Recorder()):
        assert await run_main(["--socket", str(path), "flatten"]) == 1
        err = capsys.readouterr().err
        assert err.strip() == "error: no open positions"
        assert await run_main(["--socket", str(path), "bogus", "x=1"]) == 1
        err = capsys.readouterr().err
        assert "unknown command 'bogus'" in err and "flatten, halt, status" in err


async def test_no_daemon_exits_3(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_main(["--state-dir", str(state_dir), "status"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: no daemon listening on ")
    assert str(state_dir / "qtraderd.sock") in err and "is qtraderd running?" in err


def test_stale_socket_exits_3(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state_dir / "qtraderd.sock"))
    stale.close()
    assert main(["--state-dir", str(state_dir), "status"]) == 3
    assert "no daemon listening" in capsys.readouterr().err


def test_usage_errors_exit_2(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--state-dir", str(state_dir), "pause"]) == 2
    assert "usage: pause SYMBOL" in capsys.readouterr().err
    assert main(["--state-dir", "a", "--socket", "b", "status"]) == 2
    assert main([]) == 2
    assert main(["--timeout", "0", "status"]) == 2


def test_request_times_out_when_daemon_does_not_answer(state_dir: Path) -> None:
    path = state_dir / "mute.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(path))
    mute.listen(1)  # connections queue in the backlog but are never answered
    try:
        with pytest.raises(CtlError, match=r"timed out after 0\.2s"):
            request(path, "status", timeout_s=0.2)
    finally:
        mute.close()


@pytest.mark.parametrize("wire", [b"not json\n", b"[1]\n", b'{"ok": false}\n', b""])
async def test_malformed_reply_is_ctl_error(state_dir: Path, wire: bytes) -> None:
    path = state_dir / "bad.sock"
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(1)

    async def answer_once() -> None:
        conn, _ = await listener.accept()
        with conn:
            await conn.recv(65536)
            await conn.send(wire)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_once)
        with pytest.raises(CtlError, match=r"malformed reply|without a reply"):
            await trio.to_thread.run_sync(request, path, "status")
    listener.close()


# ---------------------------------------------------------------- finding the socket


def test_daemon_binds_in_the_runtime_directory_under_systemd(tmp_path: Path) -> None:
    assert daemon_socket_path(tmp_path, env={}) == tmp_path / "qtraderd.sock"
    env = {"RUNTIME_DIRECTORY": "/run/qtraderd:/run/other"}  # several: the first one
    assert daemon_socket_path(tmp_path, env=env) == Path("/run/qtraderd/qtraderd.sock")


def test_client_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = {"RUNTIME_DIRECTORY": str(tmp_path / "rt")}
    assert socket_path_for(tmp_path, Path("/x.sock"), env=rt) == Path("/x.sock")
    assert socket_path_for(tmp_path, None, env=rt) == tmp_path / "qtraderd.sock"
    assert socket_path_for(None, None, env=rt) == tmp_path / "rt" / "qtraderd.sock"
    # No hint at all: ./state's socket if there is one, else systemd's if that exists.
    monkeypatch.chdir(tmp_path)
    systemd = tmp_path / "run" / "qtraderd.sock"
    monkeypatch.setattr("qtraderd.control.client.SYSTEMD_SOCKET", systemd)
    assert socket_path_for(env={}) == Path("state/qtraderd.sock")
    systemd.parent.mkdir()
    systemd.touch()
    assert socket_path_for(env={}) == systemd
    Path("state").mkdir()
    Path("state/qtraderd.sock").touch()
    assert socket_path_for(env={}) == Path("state/qtraderd.sock")


async def test_ctl_finds_the_socket_through_runtime_directory(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(state_dir))
    async with daemon(state_dir / "qtraderd.sock", Recorder()):
        assert await run_main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


# ---------------------------------------------------------------- every failure is non-zero


def test_timeout_exits_3(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = state_dir / "mute.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(path))
    mute.listen(1)
    try:
        assert main(["--socket", str(path), "--timeout", "0.2", "status"]) == 3
    finally:
        mute.close()
    assert "timed out after 0.2s" in capsys.readouterr().err


def _ctl_as_nobody(argv: list[str]) -> dict[str, Any]:
    def client() -> dict[str, Any]:
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        return {"code": code, "err": err.getvalue()}

    return run_as(NOBODY, NOBODY, [], client)


@needs_root
async def test_refused_peer_exits_nonzero(state_dir: Path) -> None:
    state_dir.chmod(0o755)
    path = state_dir / "qtraderd.sock"
    # A 0666 socket: the kernel lets nobody connect, the daemon's peer check says no.
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, Recorder().handlers(), mode=0o666).serve)
        got = await trio.to_thread.run_sync(_ctl_as_nobody, ["--socket", str(path), "status"])
        nursery.cancel_scope.cancel()
    assert got == {"code": 1, "err": "error: permission denied\n"}


@needs_root
async def test_user_without_access_to_the_socket_exits_3(state_dir: Path) -> None:
    state_dir.chmod(0o755)
    path = state_dir / "qtraderd.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, Recorder().handlers()).serve)  # 0600
        got = await trio.to_thread.run_sync(_ctl_as_nobody, ["--socket", str(path), "status"])
        nursery.cancel_scope.cancel()
    assert got["code"] == 3 and "permission denied connecting to" in got["err"]


# ------------------------------------------------------- --instance (qtraderd@NAME.service)


def test_instance_socket_is_the_template_units_runtime_directory() -> None:
    assert instance_socket("acct1", env={}) == Path("/run/qtraderd/acct1/qtraderd.sock")
    assert instance_socket("acct1", env={"QTRADERD_RUNTIME_ROOT": "/srv/rt"}) == Path(
        "/srv/rt/acct1/qtraderd.sock")
    for bad in ("", ".", "..", "a/b", "../acct1"):
        with pytest.raises(UsageError, match="bad instance name"):
            instance_socket(bad, env={})


async def test_ctl_instance_talks_to_that_instance_only(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two instances' sockets under one runtime root: --instance picks the named one."""
    monkeypatch.setenv("QTRADERD_RUNTIME_ROOT", str(state_dir))
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    (state_dir / "a1").mkdir()
    (state_dir / "a2").mkdir()
    one, two = Recorder(), Recorder()
    async with daemon(state_dir / "a1" / "qtraderd.sock", one), \
            daemon(state_dir / "a2" / "qtraderd.sock", two):
        assert await run_main(["--instance", "a2", "halt", "x"]) == 0
        capsys.readouterr()
        assert await run_main(["--instance", "a1", "status", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == STATUS
    assert one.calls == [("status", {})] and two.calls == [("halt", {"reason": "x"})]
    assert await run_main(["--instance", "a3", "status"]) == 3
    assert str(state_dir / "a3" / "qtraderd.sock") in capsys.readouterr().err


def test_instance_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--instance", "a", "--socket", "b", "status"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["--instance", "a", "--state-dir", "b", "status"]) == 2
    capsys.readouterr()
    assert main(["--instance", "../a", "status"]) == 2
    assert "bad instance name '../a'" in capsys.readouterr().err
    assert main(["--instance", "", "status", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["exit_code"] == 2
