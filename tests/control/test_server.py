"""Control socket server: real Unix sockets, no sleeps for synchronisation."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from qtraderd.control.server import ControlError, ControlServer, peer_in_group
from tests.as_user import NOBODY, needs_root, run_as


@pytest.fixture
def sock_path() -> Iterator[Path]:
    """A short path: tmp_path can exceed the 107-byte limit of Unix socket paths."""
    d = tempfile.mkdtemp(prefix="qtc", dir="/tmp")
    try:
        yield Path(d) / "c.sock"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass(frozen=True)
class _Pos:
    symbol: str
    qty: float


async def _status(args: dict[str, Any]) -> Any:
    return {"mode": "replay", "args": args}


async def _refuse(args: dict[str, Any]) -> Any:
    raise ControlError("nothing to flatten")


async def _crash(args: dict[str, Any]) -> Any:
    raise ValueError("boom")


async def _hang(args: dict[str, Any]) -> Any:
    await trio.sleep_forever()


async def _unserialisable(args: dict[str, Any]) -> Any:
    return {"obj": object()}


async def _dataclass(args: dict[str, Any]) -> Any:
    return [_Pos("BTCUSDT", 0.5)]


HANDLERS = {"status": _status, "flatten": _refuse, "crash": _crash, "hang": _hang,
            "weird": _unserialisable, "positions": _dataclass}


@asynccontextmanager
async def running(server: ControlServer) -> AsyncIterator[ControlServer]:
    # fail_after: a broken server must fail the test, not hang it.
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            yield server
            nursery.cancel_scope.cancel()


class Client:
    """Minimal line-oriented test client over trio's Unix socket stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def open(cls, path: Path) -> Client:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, data: bytes | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = json.dumps(data).encode() + b"\n"
        await self.stream.send_all(data)

    async def recv_line(self) -> bytes | None:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    async def reply(self) -> dict[str, Any]:
        line = await self.recv_line()
        assert line is not None, "server closed the connection instead of replying"
        return json.loads(line)

    async def ask(self, data: bytes | dict[str, Any]) -> dict[str, Any]:
        await self.send(data)
        return await self.reply()

    async def assert_closed(self) -> None:
        """The server hung up. Closing with our request unread gives ECONNRESET, not EOF."""
        with suppress(trio.BrokenResourceError):
            assert await self.recv_line() is None
        assert self.buf == b""

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_round_trip_passes_args(sock_path: Path) -> None:
    async with running(ControlServer(sock_path, HANDLERS)) as server:
        c = await Client.open(sock_path)
        assert await c.ask({"cmd": "status", "args": {"verbose": True}}) == {
            "ok": True, "result": {"mode": "replay", "args": {"verbose": True}}}
        # "args" is optional.
        assert (await c.ask({"cmd": "status"}))["result"]["args"] == {}
        await c.aclose()
    assert server.stats["requests"] == 2 and server.stats["errors"] == 0


async def test_pipelined_requests_get_replies_in_order(sock_path: Path) -> None:
    async with running(ControlServer(sock_path, HANDLERS)):
        c = await Client.open(sock_path)
        lines = b"".join(json.dumps({"cmd": "status", "args": {"n": i}}).encode() + b"\n"
                         for i in range(5))
        await c.send(lines + b"\n")  # plus a blank line, which is not a request
        replies = [await c.reply() for _ in range(5)]
        assert [r["result"]["args"]["n"] for r in replies] == [0, 1, 2, 3, 4]
        await c.stream.send_eof()
        await c.assert_closed()  # exactly five replies, nothing for the blank line


@pytest.mark.parametrize(("line", "expected"), [
    (b"{not json", "malformed JSON"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b"[1, 2]", "must be a JSON object, got list"),
    (b'{"args": {}}', "missing 'cmd'"),
    (b'{"cmd": 7}', "'cmd' must be a string, got int"),
    (b'{"cmd": "status", "args": [1]}', "'args' must be a JSON object, got list"),
    # found by fuzzing (issue 11, B14): these ended the server (and the daemon)
    (b"[" * 1345 + b"]" * 1345, "nested too deeply"),
    (b'{"cmd": "status", "args": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
     "nested too deeply"),
    (b'{"cmd": "status", "args": {"x": ' + b"9" * 5000 + b"}}", "more than 4300 digits"),
])
async def test_bad_request_keeps_connection_usable(sock_path: Path, line: bytes,
                                                   expected: str) -> None:
    async with running(ControlServer(sock_path, HANDLERS)):
        c = await Client.open(sock_path)
        reply = await c.ask(line + b"\n")
        assert reply["ok"] is False and expected in reply["error"]
        assert (await c.ask({"cmd": "status"}))["ok"] is True


async def test_each_line_the_parser_gives_up_on_gets_one_error_reply(sock_path: Path) -> None:
    """Pipelined: deep nesting and huge numbers, several times over, one reply each."""
    bad = [b"[" * 1345 + b"]" * 1345, b"9" * 4301, b'{"a":' * 3000 + b"1" + b"}" * 3000]
    async with running(ControlServer(sock_path, HANDLERS)) as server:
        c = await Client.open(sock_path)
        await c.send(b"\n".join(bad * 3) + b"\n" + json.dumps({"cmd": "status"}).encode()
                     + b"\n")
        replies = [await c.reply() for _ in range(len(bad) * 3 + 1)]
        assert [r["ok"] for r in replies] == [False] * 9 + [True]
        assert all(r["error"].startswith("malformed request: ") for r in replies[:9])
    assert server.stats["requests"] == 10


async def test_unknown_command_lists_known_ones(sock_path: Path) -> None:
    async with running(ControlServer(sock_path, {"status": _status, "halt": _status})):
        c = await Client.open(sock_path)
        reply = await c.ask({"cmd": "nope"})
        assert reply == {"ok": False,
                         "error": "unknown command 'nope'; known commands: halt, status"}


async def test_handler_errors_reply_and_server_survives(
        sock_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qtraderd.control")
    async with running(ControlServer(sock_path, HANDLERS)) as server:
        c = await Client.open(sock_path)
        assert await c.ask({"cmd": "flatten"}) == {"ok": False, "error": "nothing to flatten"}
        assert await c.ask({"cmd": "crash"}) == {
            "ok": False, "error": "internal error in crash: ValueError: boom"}
        weird = await c.ask({"cmd": "weird"})
        assert weird["error"].startswith("internal error in weird: TypeError")
        await c.aclose()
        c2 = await Client.open(sock_path)
        assert (await c2.ask({"cmd": "status"}))["ok"] is True
    assert server.stats["errors"] == 3 and server.stats["requests"] == 4
    refused = [r for r in caplog.records if "flatten" in r.getMessage()]
    crashed = [r for r in caplog.records if "crash" in r.getMessage()]
    assert refused and all(r.exc_info is None for r in refused)
    assert crashed and crashed[0].exc_info is not None and crashed[0].levelno == logging.ERROR


async def test_dataclass_results_are_serialised(sock_path: Path) -> None:
    async with running(ControlServer(sock_path, HANDLERS)):
        c = await Client.open(sock_path)
        assert (await c.ask({"cmd": "positions"}))["result"] == [
            {"symbol": "BTCUSDT", "qty": 0.5}]


async def test_oversized_request_closes_connection(sock_path: Path) -> None:
    async with running(ControlServer(sock_path, HANDLERS, max_request_bytes=100)):
        c = await Client.open(sock_path)
        # Exactly the limit is fine...
        ok = json.dumps({"cmd": "status", "args": {"p": ""}}).encode()
        padded = ok[:-2] + b" " * (100 - len(ok)) + b"}}"
        assert len(padded) == 100
        assert (await c.ask(padded + b"\n"))["ok"] is True
        # ...one byte more is not, and the connection is dropped.
        assert await c.ask(b" " + padded + b"\n") == {"ok": False, "error": "request too large"}
        await c.assert_closed()
        # Without any newline the server must not wait for the rest of the line.
        c2 = await Client.open(sock_path)
        assert await c2.ask(b"x" * 500) == {"ok": False, "error": "request too large"}
        await c2.assert_closed()


async def test_idle_connection_is_closed_after_timeout(
        sock_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with running(ControlServer(sock_path, HANDLERS, request_timeout_s=5.0)):
        c = await Client.open(sock_path)
        assert (await c.ask({"cmd": "status"}))["ok"] is True
        t0 = trio.current_time()
        await c.assert_closed()
        assert 5.0 <= trio.current_time() - t0 < 6.0


async def test_incomplete_request_times_out(
        sock_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with running(ControlServer(sock_path, HANDLERS, request_timeout_s=5.0)):
        c = await Client.open(sock_path)
        t0 = trio.current_time()
        reply = await c.ask(b'{"cmd": "sta')
        assert reply == {"ok": False, "error": "timed out waiting for a complete request"}
        assert trio.current_time() - t0 >= 5.0
        await c.assert_closed()


async def test_slow_handler_times_out(
        sock_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with running(ControlServer(sock_path, HANDLERS, request_timeout_s=2.0)):
        c = await Client.open(sock_path)
        reply = await c.ask({"cmd": "hang"})
        assert reply["ok"] is False and reply["error"].startswith("timed out")
        assert (await c.ask({"cmd": "status"}))["ok"] is True  # connection still usable


async def test_final_request_without_newline_is_answered(sock_path: Path) -> None:
    async with running(ControlServer(sock_path, HANDLERS)):
        c = await Client.open(sock_path)
        await c.send(b'{"cmd": "status"}')
        await c.stream.send_eof()
        assert (await c.reply())["ok"] is True
        await c.assert_closed()


async def test_too_many_connections_get_busy(sock_path: Path) -> None:
    server = ControlServer(sock_path, HANDLERS, max_connections=2, request_timeout_s=30)
    async with running(server):
        held = [await Client.open(sock_path) for _ in range(2)]
        for c in held:  # a reply proves the server accepted and counted the connection
            assert (await c.ask({"cmd": "status"}))["ok"] is True
        extra = await Client.open(sock_path)
        assert await extra.reply() == {"ok": False, "error": "busy"}
        await extra.assert_closed()
        assert server.stats["busy"] == 1
        await held[0].aclose()
        await trio.testing.wait_all_tasks_blocked()  # let the server notice the hang-up
        assert server.stats["active"] == 1
        again = await Client.open(sock_path)
        assert (await again.ask({"cmd": "status"}))["ok"] is True


@pytest.mark.parametrize("mode", [None, 0o660])
async def test_socket_file_mode(sock_path: Path, mode: int | None) -> None:
    old = os.umask(0)  # a permissive umask must not leak into the socket's mode
    try:
        kwargs = {} if mode is None else {"mode": mode}
        async with running(ControlServer(sock_path, HANDLERS, **kwargs)):
            st = os.stat(sock_path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == (0o600 if mode is None else 0o660)
    finally:
        os.umask(old)


async def test_socket_file_removed_on_exit(sock_path: Path) -> None:
    async with running(ControlServer(sock_path, HANDLERS)):
        assert sock_path.exists()
    assert not sock_path.exists()


async def test_stale_socket_is_replaced(sock_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # the file stays behind, as after a crash
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    async with running(ControlServer(sock_path, HANDLERS)):
        c = await Client.open(sock_path)
        assert (await c.ask({"cmd": "status"}))["ok"] is True


async def test_second_server_on_live_path_raises(sock_path: Path) -> None:
    async with running(ControlServer(sock_path, HANDLERS)):
        with pytest.raises(RuntimeError, match=f"another qtraderd is listening on {sock_path}"):
            await ControlServer(sock_path, HANDLERS).serve()
        # The failed second server must not have removed the live server's socket.
        c = await Client.open(sock_path)
        assert (await c.ask({"cmd": "status"}))["ok"] is True


async def test_non_socket_path_is_refused(sock_path: Path) -> None:
    sock_path.write_text("precious")
    with pytest.raises(RuntimeError, match="is not a socket"):
        await ControlServer(sock_path, HANDLERS).serve()
    assert sock_path.read_text() == "precious"


async def test_missing_directory_is_a_clear_error(sock_path: Path) -> None:
    path = sock_path.parent / "nope" / "c.sock"
    with pytest.raises(RuntimeError, match="does not exist"):
        await ControlServer(path, HANDLERS).serve()


async def test_peer_with_other_uid_is_refused(sock_path: Path) -> None:
    other = {os.getuid() + 4242}
    async with running(ControlServer(sock_path, HANDLERS, allowed_uids=other)) as server:
        c = await Client.open(sock_path)
        assert await c.ask({"cmd": "status"}) == {"ok": False, "error": "permission denied"}
        await c.assert_closed()
    assert server.stats["denied"] == 1 and server.stats["requests"] == 0


# ---------------------------------------------------------------- who may connect
# Real peers under other credentials: a forked child drops to another uid/gid (root only).


def _ask_as(path: Path, uid: int, gid: int, groups: list[int]) -> dict[str, Any]:
    """Connect as uid:gid(+groups), ask for status; the reply or the connect error."""
    def client() -> dict[str, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(str(path))
        except PermissionError:
            return {"connect": "EACCES"}
        with suppress(BrokenPipeError):  # a refused peer may be hung up on before it sends
            s.sendall(b'{"cmd": "status"}\n')
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        s.close()
        return {"reply": json.loads(buf.partition(b"\n")[0])}

    return run_as(uid, gid, groups, client)


async def _ask_as_async(path: Path, uid: int, gid: int, groups: list[int]) -> dict[str, Any]:
    return await trio.to_thread.run_sync(_ask_as, path, uid, gid, groups)


@pytest.fixture
def open_dir(sock_path: Path) -> Path:
    """Let other users reach the socket's directory (mkdtemp makes it 0700)."""
    sock_path.parent.chmod(0o755)
    return sock_path


@needs_root
async def test_other_uid_cannot_even_connect_to_a_0600_socket(open_dir: Path) -> None:
    async with running(ControlServer(open_dir, HANDLERS)) as server:
        assert stat.S_IMODE(os.stat(open_dir).st_mode) == 0o600
        assert await _ask_as_async(open_dir, NOBODY, NOBODY, []) == {"connect": "EACCES"}
        # ...while our own uid gets in.
        c = await Client.open(open_dir)
        assert (await c.ask({"cmd": "status"}))["ok"] is True
    assert server.stats["requests"] == 1


@needs_root
async def test_other_uid_is_refused_by_peer_credentials_even_if_the_mode_allows(
        open_dir: Path) -> None:
    """A socket file loosened by hand (0666) still only serves allowed peers."""
    async with running(ControlServer(open_dir, HANDLERS, mode=0o666)) as server:
        got = await _ask_as_async(open_dir, NOBODY, NOBODY, [])
        assert got == {"reply": {"ok": False, "error": "permission denied"}}
    assert server.stats["denied"] == 1 and server.stats["requests"] == 0


@needs_root
async def test_group_socket_is_0660_owned_by_the_group_and_admits_members(
        open_dir: Path) -> None:
    old = os.umask(0o077)  # a strict umask must not make the socket unusable for the group
    try:
        async with running(ControlServer(open_dir, HANDLERS, group="nogroup")) as server:
            st = os.stat(open_dir)
            assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == NOBODY
            # primary group nogroup: allowed by the file mode and by the peer check
            ok = await _ask_as_async(open_dir, NOBODY, NOBODY, [])
            assert ok["reply"]["ok"] is True
            # nogroup only as a supplementary group: allowed too (/proc/<pid>/status)
            ok = await _ask_as_async(open_dir, 4242, 4242, [NOBODY])
            assert ok["reply"]["ok"] is True
            # not a member: the kernel refuses the connect
            assert await _ask_as_async(open_dir, 4242, 4242, []) == {"connect": "EACCES"}
        assert server.stats["requests"] == 2 and server.stats["denied"] == 0
    finally:
        os.umask(old)


@needs_root
async def test_group_peer_check_refuses_non_members_behind_a_loose_mode(open_dir: Path) -> None:
    server = ControlServer(open_dir, HANDLERS, group=str(NOBODY), mode=0o666)
    async with running(server):
        got = await _ask_as_async(open_dir, 4242, 4242, [4343])
        assert got == {"reply": {"ok": False, "error": "permission denied"}}
        assert (await _ask_as_async(open_dir, 4242, 4242, [4343, NOBODY]))["reply"]["ok"]
    assert server.stats["denied"] == 1


async def test_unknown_group_fails_at_start(sock_path: Path) -> None:
    with pytest.raises(RuntimeError, match="group 'no-such-group-qt' does not exist"):
        await ControlServer(sock_path, HANDLERS, group="no-such-group-qt").serve()
    assert not sock_path.exists()


def test_peer_in_group_reads_the_process_groups() -> None:
    me = os.getpid()
    gid = os.getgid()
    assert peer_in_group(me, gid, gid) is True  # primary group
    for g in (g for g in os.getgroups() if g != gid):
        assert peer_in_group(me, -1, g) is True  # supplementary, from /proc
    outsider = max([gid, *os.getgroups()]) + 1000
    assert peer_in_group(me, gid, outsider) is False
    # A process whose /proc entry is hidden or gone: cannot tell.
    assert peer_in_group(2**22 + 12345, gid, outsider) is None


@needs_root
@pytest.mark.parametrize(("mode", "admitted"), [(None, True), (0o666, False)])
async def test_hidden_peer_groups_fall_back_to_the_kernels_check(
        open_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: int | None,
        admitted: bool) -> None:
    """Under PrivateUsers=/ProtectProc=invisible the peer's groups cannot be read: a
    0660 group socket admits whoever connect() let in; a loosened one admits nobody."""
    monkeypatch.setattr("qtraderd.control.server.peer_in_group", lambda *a: None)
    server = ControlServer(open_dir, HANDLERS, group="nogroup", mode=mode)
    async with running(server):
        got = await _ask_as_async(open_dir, 4242, 4242, [NOBODY])
    assert got["reply"]["ok"] is admitted
    assert server.stats["denied"] == (0 if admitted else 1)


async def test_slow_trickling_client_is_cut_off_at_the_request_deadline(
        sock_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The deadline covers the whole request: a byte a second does not keep it alive."""
    async with running(ControlServer(sock_path, HANDLERS, request_timeout_s=5.0)) as server:
        c = await Client.open(sock_path)
        t0 = trio.current_time()
        with suppress(trio.BrokenResourceError):
            for byte in b'{"cmd": "status"}':
                await c.send(bytes([byte]))
                await trio.sleep(1.0)
        reply = await c.reply()
        assert reply == {"ok": False, "error": "timed out waiting for a complete request"}
        assert 5.0 <= trio.current_time() - t0 < 6.5
        await c.assert_closed()
    assert server.stats["requests"] == 0


async def _keep_alive(c: Client, every_s: float = 1.0) -> None:
    """Blank lines until the server hangs up."""
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while True:
            await c.send(b"\n")
            await trio.sleep(every_s)


async def test_blank_keep_alive_lines_do_not_extend_the_idle_deadline(
        sock_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with running(ControlServer(sock_path, HANDLERS, request_timeout_s=5.0)) as server:
        c = await Client.open(sock_path)
        assert (await c.ask({"cmd": "status"}))["ok"] is True
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_keep_alive, c)
            await c.assert_closed()
            nursery.cancel_scope.cancel()
        assert 5.0 <= trio.current_time() - t0 < 6.0
        assert server.stats["blank_lines"] >= 4 and server.stats["timed_out"] == 1


async def test_keep_alive_clients_cannot_hold_every_slot(
        sock_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    server = ControlServer(sock_path, HANDLERS, max_connections=2, request_timeout_s=5.0)
    async with running(server), trio.open_nursery() as nursery:
        for _ in range(2):
            c = await Client.open(sock_path)
            assert (await c.ask({"cmd": "status"}))["ok"] is True  # counted by the server
            nursery.start_soon(_keep_alive, c)
        late = await Client.open(sock_path)
        assert await late.reply() == {"ok": False, "error": "busy"}
        await trio.sleep(5.5)  # one idle timeout: the keep-alive connections are gone
        again = await Client.open(sock_path)
        assert (await again.ask({"cmd": "status"}))["ok"] is True
        assert server.stats["busy"] == 1 and server.stats["timed_out"] == 2
        nursery.cancel_scope.cancel()


async def test_idle_timeout_can_be_shorter_than_the_request_timeout(
        sock_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with running(ControlServer(sock_path, HANDLERS, request_timeout_s=30.0,
                                     idle_timeout_s=2.0)):
        c = await Client.open(sock_path)
        t0 = trio.current_time()
        await c.assert_closed()
        assert 2.0 <= trio.current_time() - t0 < 3.0


async def test_a_busy_connection_is_closed_at_its_connection_deadline(
        sock_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with running(ControlServer(sock_path, HANDLERS, request_timeout_s=5.0,
                                     connection_timeout_s=12.0)):
        c = await Client.open(sock_path)
        t0 = trio.current_time()
        answered = 0
        with suppress(trio.BrokenResourceError, AssertionError):
            while True:
                assert (await c.ask({"cmd": "status"}))["ok"] is True
                answered += 1
                await trio.sleep(2.0)
        assert 12.0 <= trio.current_time() - t0 < 15.0 and 6 <= answered <= 7
