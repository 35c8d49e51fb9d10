"""`qtraderd ctl`: a short-lived, synchronous client of the daemon's control socket.

Deliberately stdlib-only and Trio-free: it runs once per operator command (often from a
shell script or over ssh), so it must start fast and never import the daemon's heavy
dependencies. Commands the client doesn't know are passed through as-is with their
`key=value` words as args, so a newer daemon's commands work without a client upgrade; the
daemon is the one that decides what is unknown.

Exit codes: 0 ok, 1 the daemon replied with an error, 2 usage error, 3 daemon unreachable.
With --json every outcome is JSON on stdout, errors too: `{"ok": false, "error": "...",
"exit_code": N}` — a script piping into `jq` never has to parse an English sentence.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qtraderd.control.tables import format_result

EXIT_OK = 0
EXIT_ERROR_REPLY = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_STATE_DIR = Path("state")
SOCKET_NAME = "qtraderd.sock"
# systemd's RuntimeDirectory= sets $RUNTIME_DIRECTORY (colon-separated if several) for the
# service; an operator's shell does not have it, so ctl also looks where the unit puts it.
RUNTIME_DIR_ENV = "RUNTIME_DIRECTORY"
SYSTEMD_SOCKET = Path("/run/qtraderd") / SOCKET_NAME
# The template unit qtraderd@NAME.service has RuntimeDirectory=qtraderd/NAME: the socket of
# instance NAME is /run/qtraderd/NAME/qtraderd.sock. $QTRADERD_RUNTIME_ROOT replaces
# /run/qtraderd for tests and packagers that put runtime directories elsewhere; it is not
# daemon configuration (the daemon binds in $RUNTIME_DIRECTORY, which systemd sets).
RUNTIME_ROOT_ENV = "QTRADERD_RUNTIME_ROOT"
SYSTEMD_RUNTIME_ROOT = SYSTEMD_SOCKET.parent
MAX_REPLY_BYTES = 64 * 1024 * 1024  # a reply bigger than this is a daemon bug, not data

# (usage, one-line description) — shown by --help; keep in sync with parse_command.
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("status", "mode, clock time, bars processed, actors, restarts, risk state"),
    "modules": ("modules", "every module with its status"),
    "positions": ("positions", "open positions"),
    "trades": ("trades [N]", "recent closed trades (the last N)"),
    "pnl": ("pnl", "PnL summary per symbol and total"),
    "models": ("models", "served models, shadows and the registry (versions, status)"),
    "halt": ("halt [REASON...]", "stop new entries (risk HALTED)"),
    "resume": ("resume", "back to ACTIVE"),
    "flatten": ("flatten", "close every position at the next bar"),
    "reconcile": ("reconcile", "live: compare positions, orders, stops and balances with the "
                  "exchange now; prints the differences (each repaired as at a start)"),
    "pause": ("pause SYMBOL", "no new entries for SYMBOL"),
    "resume-symbol": ("resume-symbol SYMBOL", "lift the pause on SYMBOL"),
    "promote": ("promote MODEL VERSION", "make VERSION the champion of MODEL (bypasses the "
                "gate)"),
    "rollback": ("rollback MODEL", "back to MODEL's previous champion"),
    "retrain": ("retrain [MODEL]", "queue a retraining job (all families without MODEL)"),
    "learning": ("learning", "samples with/without outcomes, versions, plan, last/next "
                 "retrain"),
    "rl": ("rl", "the Q-learning sizer's table: states, best actions, visits"),
    "reload": ("reload", "re-read the config file (like SIGHUP): what applied live, what "
               "needs a restart; a bad file is refused and the old config stays"),
    "plugins": ("plugins", "plugins: version, state (active/rejected/disabled/removed), "
                "hooks, calls, errors, last error"),
}
_NO_ARG_COMMANDS = {c for c, (usage, _) in COMMANDS.items() if usage == c}
_SYMBOL_COMMANDS = {"pause", "resume-symbol"}


class CtlError(Exception):
    """The daemon could not be reached or answered nonsense; the message is for the user."""


class UsageError(ValueError):
    """Bad command words; main() turns it into exit code 2."""


def instance_socket(name: str, env: Mapping[str, str] | None = None) -> Path:
    """The control socket of systemd instance `name` (qtraderd@NAME.service):
    <root>/NAME/qtraderd.sock, root $QTRADERD_RUNTIME_ROOT or /run/qtraderd.

    A name that is not one path component (empty, `.`, `..`, with a `/`) is a UsageError:
    it would name some other directory's socket, not an instance's."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UsageError(f"bad instance name {name!r}: expected the NAME of "
                         "qtraderd@NAME.service (one path component)")
    root = (os.environ if env is None else env).get(RUNTIME_ROOT_ENV, "")
    return (Path(root) if root else SYSTEMD_RUNTIME_ROOT) / name / SOCKET_NAME


# ------------------------------------------------------------------ transport


def request(socket_path: Path, cmd: str, args: dict[str, Any] | None = None,
            timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one request and return the reply dict ({"ok": ..., "result"/"error": ...}).

    An error *reply* is returned, not raised: the daemon answered, and the caller decides.
    CtlError is raised only when there is no usable answer at all.
    """
    path = Path(socket_path)
    payload = json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise CtlError(f"no daemon listening on {path} (is qtraderd running? "
                           "see --state-dir/--socket/--instance; under systemd the "
                           f"socket is {SYSTEMD_SOCKET}, or {SYSTEMD_RUNTIME_ROOT}/NAME/"
                           f"{SOCKET_NAME} for qtraderd@NAME)") from exc
        except PermissionError as exc:
            raise CtlError(f"permission denied connecting to {path} (run as the user "
                           "qtraderd runs as, or root)") from exc
        # A daemon that hangs up before reading (a refused peer) left its reason to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        raw = _read_line(sock, path)
    except TimeoutError as exc:
        raise CtlError(f"timed out after {timeout_s:g}s waiting for the daemon at {path}"
                       ) from exc
    except OSError as exc:
        raise CtlError(f"cannot talk to the daemon at {path}: {exc}") from exc
    finally:
        sock.close()
    return _decode_reply(raw, path)


def _read_line(sock: socket.socket, path: Path) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        data = sock.recv(65536)
        if not data:
            if not chunks:
                raise CtlError(f"the daemon at {path} closed the connection without a reply")
            break  # tolerate a last line without its newline
        nl = data.find(b"\n")
        if nl >= 0:
            chunks.append(data[:nl])
            break
        chunks.append(data)
        size += len(data)
        if size > MAX_REPLY_BYTES:
            raise CtlError(f"reply from {path} exceeds {MAX_REPLY_BYTES} bytes")
    return b"".join(chunks)


def _decode_reply(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        reply = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CtlError(f"malformed reply from {path}: {exc}") from exc
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise CtlError(f"malformed reply from {path}: expected an object with 'ok', "
                       f"got {raw[:200]!r}")
    if not reply["ok"] and not isinstance(reply.get("error"), str):
        raise CtlError(f"malformed reply from {path}: error reply without a message")
    return reply


# ------------------------------------------------------------------ command words


def _scalar(text: str) -> Any:
    """key=value values: JSON numbers/true/false/null become typed, everything else a str."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if value is None or isinstance(value, (int, float, bool)) else text


def _kv_args(cmd: str, words: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise UsageError(f"{cmd}: expected key=value, got {word!r}")
        args[key] = _scalar(value)
    return args


def parse_command(words: list[str]) -> tuple[str, dict[str, Any]]:
    """CLI words -> (cmd, args) for the wire, e.g. ["pause", "ethbtc"] -> ("pause", ...)."""
    if not words:
        raise UsageError("missing command")
    cmd, rest = words[0], list(words[1:])
    if cmd in _NO_ARG_COMMANDS:
        return cmd, _kv_args(cmd, rest)
    if cmd == "halt":
        reason = " ".join(rest).strip()
        return cmd, ({"reason": reason} if reason else {})
    if cmd in _SYMBOL_COMMANDS:
        if len(rest) != 1 or not rest[0].strip():
            raise UsageError(f"usage: {COMMANDS[cmd][0]}")
        return cmd, {"symbol": rest[0].strip().upper()}
    if cmd == "promote":
        if len(rest) != 2:
            raise UsageError(f"usage: {COMMANDS[cmd][0]}")
        return cmd, {"model": rest[0], "version": rest[1]}
    if cmd == "rollback":
        if len(rest) != 1:
            raise UsageError(f"usage: {COMMANDS[cmd][0]}")
        return cmd, {"model": rest[0]}
    if cmd == "retrain":
        if len(rest) > 1:
            raise UsageError(f"usage: {COMMANDS[cmd][0]}")
        return cmd, ({"model": rest[0]} if rest else {})
    if cmd == "trades":
        if not rest:
            return cmd, {}
        if len(rest) > 1 or not rest[0].isdigit() or int(rest[0]) <= 0:
            raise UsageError(f"usage: {COMMANDS[cmd][0]} (N a positive integer)")
        return cmd, {"limit": int(rest[0])}
    return cmd, _kv_args(cmd, rest)


# ------------------------------------------------------------------ CLI


def _parser(prog: str) -> argparse.ArgumentParser:
    width = max(len(usage) for usage, _ in COMMANDS.values())
    listing = "\n".join(f"  {usage.ljust(width)}  {desc}" for usage, desc in COMMANDS.values())
    epilog = (f"commands:\n{listing}\n\nAny other COMMAND is sent to the daemon as-is, with "
              "key=value words as its args.\n"
              "exit codes: 0 ok, 1 error reply, 2 usage error, 3 daemon unreachable")
    parser = argparse.ArgumentParser(
        prog=prog, description="Query or command a running qtraderd via its control socket.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                       help=f"daemon state directory; the socket is DIR/{SOCKET_NAME} "
                            f"(default: $RUNTIME_DIRECTORY/{SOCKET_NAME}, else "
                            f"./{DEFAULT_STATE_DIR}/{SOCKET_NAME}, else {SYSTEMD_SOCKET})")
    where.add_argument("--socket", type=Path, default=None, metavar="PATH",
                       help="control socket path (instead of --state-dir)")
    where.add_argument("--instance", default=None, metavar="NAME",
                       help="the daemon of systemd unit qtraderd@NAME.service: socket "
                            f"{SYSTEMD_RUNTIME_ROOT}/NAME/{SOCKET_NAME} (root overridable "
                            f"with ${RUNTIME_ROOT_ENV})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the daemon (default 10)")
    parser.add_argument("command", metavar="COMMAND", help="see the list below")
    parser.add_argument("words", nargs="*", metavar="ARG", help="command arguments")
    return parser


def runtime_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """systemd's runtime directory for the service (the first, if several), or None."""
    first = (os.environ if env is None else env).get(RUNTIME_DIR_ENV, "").split(":")[0]
    return Path(first) if first else None


def daemon_socket_path(state_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon binds its socket: the runtime directory under systemd (tmpfs,
    private to the service, removed when it stops), else next to the store."""
    rt = runtime_dir(env)
    return (rt if rt is not None else Path(state_dir)) / SOCKET_NAME


def socket_path_for(state_dir: Path | None = None, socket_path: Path | None = None,
                    env: Mapping[str, str] | None = None) -> Path:
    """Where a client looks for the daemon, first match wins: --socket; --state-dir's
    socket; $RUNTIME_DIRECTORY's; ./state's if it exists; systemd's /run/qtraderd one if it
    exists; else ./state's (so the error message names the conventional place)."""
    if socket_path is not None:
        return socket_path
    if state_dir is not None:
        return state_dir / SOCKET_NAME
    rt = runtime_dir(env)
    if rt is not None:
        return rt / SOCKET_NAME
    local = DEFAULT_STATE_DIR / SOCKET_NAME
    if not local.exists() and SYSTEMD_SOCKET.exists():
        return SYSTEMD_SOCKET
    return local


def _fail(as_json: bool, code: int, msg: str, prefix: str = "error") -> int:
    """Report an error: a line on stderr, or with --json an object on stdout."""
    if as_json:
        print(json.dumps({"ok": False, "error": msg, "exit_code": code}))
    else:
        print(f"{prefix}: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None, *, prog: str = "qtraderd ctl") -> int:
    """Run one ctl command; returns the process exit code (never raises SystemExit)."""
    parser = _parser(prog)
    words = sys.argv[1:] if argv is None else argv
    try:
        # intermixed: `ctl halt --json too volatile` keeps all reason words.
        ns = parser.parse_intermixed_args(words)
    except SystemExit as exc:  # --help (0) or argparse usage error (2, told on stderr)
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        if code and "--json" in words:
            return _fail(True, code, f"usage error (see {prog} --help)")
        return code
    as_json = bool(ns.json)
    if ns.timeout <= 0:
        return _fail(as_json, EXIT_USAGE, "--timeout must be positive", f"{prog}: error")
    try:
        cmd, args = parse_command([ns.command, *ns.words])
    except UsageError as exc:
        return _fail(as_json, EXIT_USAGE, str(exc), f"{prog}: error")
    try:
        path = (instance_socket(ns.instance) if ns.instance is not None
                else socket_path_for(ns.state_dir, ns.socket))
    except UsageError as exc:
        return _fail(as_json, EXIT_USAGE, str(exc), f"{prog}: error")
    try:
        reply = request(path, cmd, args, timeout_s=ns.timeout)
    except CtlError as exc:
        return _fail(as_json, EXIT_UNREACHABLE, str(exc))
    if not reply["ok"]:
        return _fail(as_json, EXIT_ERROR_REPLY, reply["error"])
    result = reply.get("result")
    text = json.dumps(result, indent=2) if ns.json else format_result(result)
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `qtraderd ctl trades | head`: not an error
        # Point stdout at /dev/null so the interpreter's exit-time flush stays quiet.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m qtraderd.control.client"))
