"""Control socket server: line-delimited JSON over a Unix stream socket.

`qtraderd ctl` (and anything that can write a line to a Unix socket, e.g. `socat`) talks to
the running daemon through here. The server only does transport and safety; what a command
does is a handler supplied by the daemon, so this module knows nothing about trading.

Protocol: each request is one UTF-8 JSON object on one line, `{"cmd": "status", "args": {}}`
("args" optional, must be an object). Each request gets exactly one reply line, in order:
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.

Why the defensive limits: the daemon trades real money; a stuck or hostile client must never
be able to block the event loop, exhaust memory, or pile up tasks. Hence bounded request
size, per-request deadlines (reading, running the handler, writing the reply), a cap on
concurrent connections, and peer-credential checks on top of the socket file's mode.

A connection holds one of the `max_connections` slots, so it must not hold it for free:
after each reply (or the connect) the next request must arrive complete within the idle
timeout — blank keep-alive lines are not requests and do not extend it — and no connection
lives longer than `connection_timeout_s` however busy it is. Then clients that only
connect, or only send blank lines, can fill the slots for one idle timeout at most.

Who may connect: the file is 0600 (only the daemon's user; root bypasses modes anyway), or
0660 and owned by `[control] group` when one is configured, so an operators' group can use
`qtraderd ctl` without sharing the daemon's account. The kernel enforces the file mode at
connect(); the server then checks the peer's credentials (SO_PEERCRED) itself as well, so a
socket file whose mode was loosened by hand, or one reached through a copied descriptor,
still lets in only our uid, root, and members of the configured group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import grp
import json
import logging
import os
import socket
import stat
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePath
from typing import Any

import trio

log = logging.getLogger("qtraderd.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

# sun_path is 108 bytes on Linux including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
_RECV_CHUNK = 65536
_LIVENESS_PROBE_S = 1.0
# accept() errors caused by resource exhaustion: back off instead of crashing the daemon.
_ACCEPT_BACKOFF_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class ControlError(Exception):
    """Raised by a handler to refuse a request; the message goes to the client verbatim.

    Expected refusals (bad symbol, nothing to flatten, ...) are not bugs, so they are logged
    without a traceback, unlike any other exception escaping a handler.
    """


class _RequestTooLarge(Exception):
    pass


class _LineReader:
    """Buffered reader of b"\\n"-terminated lines with a hard size limit.

    Scans only new bytes for the newline so a slow client trickling a long line costs
    linear, not quadratic, time.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, max_bytes: int) -> None:
        self._stream = stream
        self._max = max_bytes
        self._buf = bytearray()
        self._scanned = 0
        self._eof = False

    @property
    def pending(self) -> bool:
        """True when part of a line has been received (the client is mid-request)."""
        return bool(self._buf)

    async def readline(self) -> bytes | None:
        """Next line without its newline; None at EOF; raises _RequestTooLarge."""
        while True:
            idx = self._buf.find(b"\n", self._scanned)
            if idx >= 0:
                if idx > self._max:
                    raise _RequestTooLarge
                line = bytes(self._buf[:idx])
                del self._buf[: idx + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buf)
            if len(self._buf) > self._max:
                raise _RequestTooLarge
            if self._eof:
                # A final request without its newline (e.g. `printf ... | socat`) still counts.
                line, self._buf = bytes(self._buf), bytearray()
                self._scanned = 0
                return line or None
            data = await self._stream.receive_some(_RECV_CHUNK)
            if not data:
                self._eof = True
            self._buf += data


def _json_default(obj: Any) -> Any:
    """Let handlers return actors' frozen dataclasses, enums and paths directly."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, default=_json_default).encode() + b"\n"


def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the peer of a connected AF_UNIX socket; None if unsupported."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    size = struct.calcsize("3i")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def resolve_group(group: str | int) -> int:
    """A group name or numeric id -> gid; RuntimeError naming the group if it is unknown."""
    if isinstance(group, int) or (isinstance(group, str) and group.isdigit()):
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise RuntimeError(f"control socket group {group!r} does not exist "
                           "(check [control] group)") from None


def peer_in_group(pid: int, gid: int, group_gid: int) -> bool | None:
    """Is the connecting process a member of `group_gid`? None if that cannot be told.

    The primary gid comes with SO_PEERCRED; supplementary groups are read from
    /proc/<pid>/status, i.e. the process's actual credentials. The group database is not
    consulted: inside a user namespace (systemd's PrivateUsers=) unmapped peers all look
    like "nobody", and with ProtectProc=invisible other users' /proc entries are hidden —
    then the answer is None and the caller decides from the socket file's mode.
    """
    if gid == group_gid:
        return True
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return str(group_gid) in line.split()[1:]
    except OSError:
        pass
    return None


class ControlServer:
    """Serves `handlers` ({cmd: async fn(args) -> JSON-able result}) on a Unix socket."""

    def __init__(self, path: Path, handlers: dict[str, Handler], *, mode: int | None = None,
                 max_request_bytes: int = 65536, request_timeout_s: float = 5.0,
                 max_connections: int = 16, allowed_uids: set[int] | None = None,
                 group: str | int | None = None, idle_timeout_s: float | None = None,
                 connection_timeout_s: float | None = None) -> None:
        """`mode` defaults to 0600, or 0660 with a `group` (name or gid) owning the file.
        `idle_timeout_s` (default `request_timeout_s`): how long after its last reply a
        connection may take to send its next complete request; `connection_timeout_s`
        (default the larger of 60 s and four request timeouts): its whole life."""
        idle_timeout_s = request_timeout_s if idle_timeout_s is None else idle_timeout_s
        if connection_timeout_s is None:
            connection_timeout_s = max(60.0, 4 * request_timeout_s)
        if min(max_request_bytes, request_timeout_s, max_connections, idle_timeout_s,
               connection_timeout_s) <= 0:
            raise ValueError("max_request_bytes, request_timeout_s, max_connections and "
                             "the idle and connection timeouts must be positive")
        self.idle_timeout_s = idle_timeout_s
        self.connection_timeout_s = connection_timeout_s
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.group = None if group in (None, "") else group
        self.gid: int | None = None  # resolved when binding, so a bad name fails at start
        self.mode = mode if mode is not None else (0o600 if self.group is None else 0o660)
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self.max_request_bytes = max_request_bytes
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self.allowed_uids = ({os.getuid(), 0} if allowed_uids is None else set(allowed_uids))
        self.stats: dict[str, int] = {"requests": 0, "errors": 0, "connections": 0,
                                      "active": 0, "busy": 0, "denied": 0, "blank_lines": 0,
                                      "timed_out": 0}

    # ---------------------------------------------------------------- socket file

    async def _check_existing(self) -> None:
        """Refuse to clobber a live daemon or a non-socket file; clear a stale socket."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"control socket path {self.path} exists and is not a socket; "
                               "refusing to replace it")
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with trio.move_on_after(_LIVENESS_PROBE_S) as cs:
                await probe.connect(str(self.path))
            # A connect that hangs means a listener with a full backlog: alive.
            raise RuntimeError(f"another qtraderd is listening on {self.path}"
                               + (" (not accepting)" if cs.cancelled_caught else ""))
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listening: stale socket from a crashed run
        except PermissionError as exc:
            raise RuntimeError(f"cannot probe existing control socket {self.path}: {exc}; "
                               "is another user's qtraderd using it?") from exc
        finally:
            probe.close()
        log.warning("removing stale control socket %s", self.path)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _bind(self) -> tuple[trio.socket.SocketType, tuple[int, int]]:
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH_BYTES:
            raise RuntimeError(f"control socket path is too long for a Unix socket "
                               f"(max {MAX_SOCKET_PATH_BYTES} bytes): {self.path}")
        if not self.path.parent.is_dir():
            raise RuntimeError(f"directory for the control socket does not exist: "
                               f"{self.path.parent}")
        if self.group is not None:
            self.gid = resolve_group(self.group)
        await self._check_existing()
        # Bound synchronously on purpose: trio's async bind() of an AF_UNIX path runs in a
        # worker thread, during which a MockClock with autojump (tests, replay harnesses)
        # sees every task blocked and leaps to the next deadline. A local bind takes
        # microseconds, so blocking the loop for it once at startup is harmless.
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            raw.bind(str(self.path))
            bound = True
            # chmod before listen(): nobody can connect until listen(), so there is no
            # window in which the umask-derived mode is exposed.
            os.chmod(self.path, self.mode)
            if self.gid is not None:
                try:
                    os.chown(self.path, -1, self.gid)
                except PermissionError as exc:
                    raise RuntimeError(
                        f"cannot give the control socket {self.path} to group "
                        f"{self.group!r}: {exc.strerror}; the daemon's user must be a member "
                        "of that group (or run as root)") from exc
            st = os.stat(self.path)
            raw.listen(min(self.max_connections * 2, socket.SOMAXCONN))
        except BaseException:
            raw.close()
            if bound:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            raise
        sock = trio.socket.from_stdlib_socket(raw)
        return sock, (st.st_dev, st.st_ino)

    def _remove_socket_file(self, ident: tuple[int, int]) -> None:
        """Unlink our socket file, but never one that something else put there since."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == ident:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    # ---------------------------------------------------------------- serving

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Bind, report started, serve until cancelled; the socket file is removed on exit."""
        sock, ident = await self._bind()
        self._ident = ident
        listener = trio.SocketListener(sock)
        log.info("control socket listening on %s (mode %o%s)", self.path, self.mode,
                 "" if self.gid is None else f", group {self.group}")
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        if exc.errno not in _ACCEPT_BACKOFF_ERRNOS:
                            raise
                        log.error("control accept failed (%s); backing off", exc)
                        await trio.sleep(0.1)
                        continue
                    self.stats["connections"] += 1
                    if self.stats["active"] >= self.max_connections:
                        self.stats["busy"] += 1
                        nursery.start_soon(self._refuse, stream, "busy")
                    else:
                        self.stats["active"] += 1
                        nursery.start_soon(self._connection, stream)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            self._remove_socket_file(ident)
            log.info("control socket %s closed", self.path)

    def _error(self, msg: str) -> bytes:
        self.stats["errors"] += 1
        return _encode({"ok": False, "error": msg})

    async def _send(self, stream: trio.SocketStream, reply: bytes) -> bool:
        """Write one reply; False if the client is gone or not reading (then we hang up)."""
        with trio.move_on_after(self.request_timeout_s):
            try:
                await stream.send_all(reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            return True
        return False

    async def _refuse(self, stream: trio.SocketStream, msg: str) -> None:
        async with stream:
            await self._send(stream, self._error(msg))

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                creds = peer_credentials(stream.socket)
                if creds is not None and not self.peer_allowed(*creds):
                    self.stats["denied"] += 1
                    log.warning("control connection refused: pid %d uid %d gid %d not "
                                "allowed", *creds)
                    await self._send(stream, self._error("permission denied"))
                    return
                await self._serve_lines(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client hung up mid-reply; nothing to tell it
        finally:
            self.stats["active"] -= 1

    def peer_allowed(self, pid: int, uid: int, gid: int) -> bool:
        """Our uid and root always; members of the configured group too, if there is one."""
        if uid in self.allowed_uids:
            return True
        if self.gid is None:
            return False
        member = peer_in_group(pid, gid, self.gid)
        if member is None:  # the peer's groups are hidden from us: trust the kernel's check
            return self._file_admits_only_group()
        return member

    def _file_admits_only_group(self) -> bool:
        """Is our socket file still ours, owned by the group and closed to others?

        Then connect() itself proved the peer is the owner, root or a group member (it
        needs write permission on the file); if the mode was loosened, nothing is proved.
        """
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return ((st.st_dev, st.st_ino) == self._ident and st.st_gid == self.gid
                and not st.st_mode & 0o007)

    async def _serve_lines(self, stream: trio.SocketStream) -> None:
        reader = _LineReader(stream, self.max_request_bytes)
        closes_at = trio.current_time() + self.connection_timeout_s
        while True:
            # Set after each reply only: blank lines read below do not move it.
            deadline = min(trio.current_time() + self.idle_timeout_s, closes_at)
            line: bytes | None = None
            with trio.move_on_at(deadline) as cs:
                try:
                    line = await reader.readline()
                    while line is not None and not line.strip():
                        self.stats["blank_lines"] += 1  # keep-alives are not requests
                        line = await reader.readline()
                except _RequestTooLarge:
                    await self._send(stream, self._error("request too large"))
                    return
            if cs.cancelled_caught:
                if reader.pending:
                    msg = "timed out waiting for a complete request"
                    await self._send(stream, self._error(msg))
                self.stats["timed_out"] += 1
                return
            if line is None:
                return
            reply = await self._dispatch(line)
            if not await self._send(stream, reply):
                return
            if trio.current_time() >= closes_at:
                self.stats["timed_out"] += 1
                return

    # ---------------------------------------------------------------- dispatch

    def _parse(self, line: bytes) -> tuple[str, dict[str, Any]] | str:
        """(cmd, args) or an error message naming what is wrong with the request."""
        try:
            req = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            return "malformed request: not valid UTF-8"
        except json.JSONDecodeError as exc:
            return f"malformed JSON: {exc}"
        # Valid JSON the parser itself gives up on (found by fuzzing, issue 11 B14): they
        # used to escape the connection task and end the control server and the daemon.
        except RecursionError:
            return "malformed request: nested too deeply"
        except ValueError:  # int() refuses more digits than this (CVE-2020-10735 limit)
            return (f"malformed request: a number of more than {sys.get_int_max_str_digits()} "
                    "digits")
        if not isinstance(req, dict):
            return f"request must be a JSON object, got {type(req).__name__}"
        cmd = req.get("cmd")
        if cmd is None:
            return "missing 'cmd' in request"
        if not isinstance(cmd, str):
            return f"'cmd' must be a string, got {type(cmd).__name__}"
        args = req.get("args", {})
        if not isinstance(args, dict):
            return f"'args' must be a JSON object, got {type(args).__name__}"
        return cmd, args

    async def _dispatch(self, line: bytes) -> bytes:
        """Run one request line and return the encoded reply line."""
        self.stats["requests"] += 1
        parsed = self._parse(line)
        if isinstance(parsed, str):
            return self._error(parsed)
        cmd, args = parsed
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "(none)"
            return self._error(f"unknown command {cmd!r}; known commands: {known}")
        try:
            with trio.move_on_after(self.request_timeout_s) as cs:
                result = await handler(args)
            if cs.cancelled_caught:
                log.warning("control command %s timed out after %gs", cmd,
                            self.request_timeout_s)
                return self._error(f"timed out after {self.request_timeout_s:g}s running {cmd!r}")
            # Encoded inside the try: a result that is not JSON-able is the handler's bug.
            return _encode({"ok": True, "result": result})
        except ControlError as exc:
            log.info("control command %s refused: %s", cmd, exc)
            return self._error(str(exc))
        except Exception as exc:
            log.exception("control command %s failed", cmd)
            return self._error(f"internal error in {cmd}: {type(exc).__name__}: {exc}")
