"""A real `qtraderd run` subprocess for the control-socket fuzz tests, and its health checks.

One daemon per test module (start-up costs about a second of CPU; thousands of generated
requests then cost a socket round trip each). It replays slowly and never ends
(`exit_at_end = false`), with learning and plugins off, so the only things changing its
state are the fuzzed requests — which lets the tests count the rows those requests must
leave behind. If a generated request kills it, the test that sent it fails naming the
request, and the next test gets a fresh daemon instead of a cascade of failures.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_REQUEST_BYTES = 4096  # small, so "too large" is reachable by cheap generated inputs
CONFIG = f"""
[feed]
speed = 1.0
exit_at_end = false
[learning]
enabled = false
[plugins]
enabled = false
[rl]
enabled = false
[store]
flush_ms = 20
[control]
max_request_bytes = {MAX_REQUEST_BYTES}
request_timeout_s = 5.0
max_connections = 16
[runtime]
log_level = "INFO"
"""
# Commands that change risk state: each accepted one is written to `risk_commands`.
CHANGES = ("halt", "resume", "flatten", "pause", "resume-symbol")


class DaemonDied(AssertionError):
    pass


class FuzzDaemon:
    """Starts, talks to and checks one daemon; `ensure()` restarts it if a test killed it."""

    def __init__(self, trained: dict[str, Path], root: Path) -> None:
        self.root = root
        self.state, self.models = root / "state", root / "models"
        shutil.copytree(trained["state"], self.state)
        shutil.copytree(trained["models"], self.models)
        self.config = root / "fuzz.toml"
        self.config.write_text(CONFIG)
        # sun_path is 108 bytes: keep the socket under a short /tmp directory
        self.run_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="qtfz"))
        self.sock = self.run_dir / "qtraderd.sock"
        self.log_path = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_pos = 0
        self.accepted: dict[str, int] = {}  # ok replies to state-changing commands
        self.starts = 0

    # ------------------------------------------------------------------ process
    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
        env.update(PYTHONPATH=str(REPO), RUNTIME_DIRECTORY=str(self.run_dir))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qtraderd", "run", "--config", str(self.config),
                 "--state-dir", str(self.state), "--models-dir", str(self.models),
                 "--no-train", *(["--fresh"] if self.starts else [])],
                cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=log)
        self.starts += 1
        self.accepted = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonDied(f"daemon exited {self.proc.returncode} at start:\n"
                                 + self.log_tail())
            if self.sock.exists():
                try:
                    if self.ask(b'{"cmd":"status"}\n')[0]["ok"]:
                        self._log_pos = self.log_path.stat().st_size
                        return
                except OSError:
                    pass
            time.sleep(0.02)
        raise AssertionError("daemon did not answer status within 60 s:\n" + self.log_tail())

    def ensure(self) -> None:
        """Running and answering, or restarted (a request may have killed the process or
        only its control server)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                if self.ask(b'{"cmd":"status"}\n', timeout_s=5)[0]["ok"]:
                    self._log_pos = self.log_path.stat().st_size
                    return
            except (OSError, AssertionError, IndexError, ValueError):
                pass
        self.stop()
        self.run_dir.mkdir(exist_ok=True)
        self.start()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        code, self.proc = self.proc.returncode, None
        return code

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    # ------------------------------------------------------------------ requests
    def ask(self, payload: bytes, timeout_s: float = 15.0) -> list[dict]:
        """Send `payload` on a fresh connection, close our side, read every reply line.

        Every reply must be one JSON object per line with a boolean `ok` (and an `error`
        string when false), whatever was sent.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(self.sock))
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it hung up first (e.g. "request too large"): read what it said
            buf = bytearray()
            try:
                while chunk := s.recv(65536):
                    buf += chunk
            except ConnectionResetError:
                pass
        assert not buf or buf.endswith(b"\n"), f"reply without its newline: {bytes(buf)!r}"
        replies = []
        for line in bytes(buf).split(b"\n")[:-1]:
            reply = json.loads(line)
            assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
            if not reply["ok"]:
                assert isinstance(reply.get("error"), str) and reply["error"], reply
            replies.append(reply)
        return replies

    def case(self, payload: bytes) -> list[dict]:
        """One generated request: its replies, then the daemon must be alive and its log
        free of tracebacks (checked after every case, so a failure names its input)."""
        assert self.proc is not None
        try:
            replies = self.ask(payload)
        except OSError as exc:
            self._check_alive(payload)
            raise AssertionError(
                f"socket error {exc!r} for {payload[:200]!r}: the control server is gone "
                f"(this request, or the one before, killed it)\n{self.log_tail()}") from exc
        self._check_alive(payload)
        self._check_log(payload)
        return replies

    def _check_alive(self, payload: bytes) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise DaemonDied(f"daemon exited {self.proc.returncode} after request "
                             f"{payload[:300]!r}\n{self.log_tail()}")

    def _check_log(self, payload: bytes) -> None:
        with open(self.log_path, "rb") as fh:
            fh.seek(self._log_pos)
            new = fh.read()
        self._log_pos += len(new)
        if b"Traceback" in new:
            raise AssertionError(f"traceback in the daemon's log after request "
                                 f"{payload[:300]!r}:\n{new.decode(errors='replace')[-3000:]}")

    def count_accepted(self, cmd: str, replies: list[dict]) -> None:
        if cmd in CHANGES and replies and replies[0]["ok"]:
            self.accepted[cmd] = self.accepted.get(cmd, 0) + 1

    # ------------------------------------------------------------------ health
    def recorded_commands(self) -> dict[str, int]:
        conn = sqlite3.connect(f"file:{self.state / 'qtraderd.db'}?mode=ro", uri=True,
                               timeout=10)
        try:
            run_id = conn.execute("SELECT max(id) FROM runs").fetchone()[0]
            rows = conn.execute("SELECT name, count(*) FROM risk_commands WHERE run_id=? "
                                "GROUP BY name", (run_id,)).fetchall()
        finally:
            conn.close()
        return dict(rows)

    def assert_healthy(self) -> None:
        """After a batch of cases: alive, answers `status`, no traceback logged, the store
        passes `PRAGMA integrity_check`, and every accepted state change has its row."""
        self._check_alive(b"(after the cases)")
        status = self.ask(b'{"cmd":"status"}\n')
        assert status and status[0]["ok"], status
        self._check_log(b"(after the cases)")
        deadline = time.monotonic() + 20
        while (got := self.recorded_commands()) != self.accepted:
            if time.monotonic() > deadline:
                raise AssertionError(f"accepted state changes {self.accepted} but the store "
                                     f"holds {got} (rows lost)")
            time.sleep(0.02)
        conn = sqlite3.connect(f"file:{self.state / 'qtraderd.db'}?mode=ro", uri=True,
                               timeout=10)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
