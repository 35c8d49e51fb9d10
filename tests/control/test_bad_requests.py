"""Bad control requests against a real daemon process over its real socket: each gets an
error naming the bad argument, none reaches an actor or the store, no traceback is logged,
and the daemon keeps running and exits 0 when asked to stop (issue 11, B1, B5, B13)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qtraderd.control import client as ctl
from tests.conftest import REPO, make_store

CONFIG = """\
[feed]
exit_at_end = false
[learning]
enabled = false
[rl]
enabled = false
[control]
request_timeout_s = 3
max_connections = 2
"""


def ask(sock: Path, req: dict[str, Any] | bytes) -> dict[str, Any]:
    """One raw request line (any JSON a hostile client could send), one reply."""
    line = req if isinstance(req, bytes) else json.dumps(req).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(sock))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(line + b"\n")  # a refused ("busy") client still reads why
        buf = b""
        while b"\n" not in buf and (chunk := s.recv(65536)):
            buf += chunk
    return json.loads(buf.partition(b"\n")[0])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """`qtraderd run` on a small store, holding at the end of its replay."""
    root = tmp_path_factory.mktemp("badreq")
    make_store(root / "state", limit=600)
    (root / "qtraderd.toml").write_text(CONFIG)
    run_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="qtb"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env["RUNTIME_DIRECTORY"] = str(run_dir)  # a short socket path
    err = open(root / "stderr.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "qtraderd", "run", "--config", str(root / "qtraderd.toml"),
         "--state-dir", str(root / "state"), "--models-dir", str(root / "models"),
         "--no-train"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    sock = run_dir / "qtraderd.sock"
    world = {"proc": proc, "sock": sock, "state": root / "state", "log": root / "stderr.log"}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / "stderr.log").read_text()[-3000:]
            if sock.exists():
                try:
                    if ctl.request(sock, "status")["ok"]:
                        break
                except ctl.CtlError:
                    pass
            assert time.monotonic() < deadline, "daemon did not start"
            time.sleep(0.05)
        yield world
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        err.close()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.parametrize(("req", "words"), [
    # B1: a dict reason once failed the store writer on every resend until exit 3
    ({"cmd": "halt", "args": {"reason": {"a": [1, 2]}}},
     ["halt: argument 'reason' must be a string, got an object"]),
    ({"cmd": "halt", "args": {"reason": "x" * 201}}, ["'reason' is 201 characters long"]),
    ({"cmd": "halt", "args": {"reason": "two\nlines"}}, ["'reason' must be one line"]),
    # B5: 1e999 is infinity to JSON; int() of it was an OverflowError traceback
    (b'{"cmd": "trades", "args": {"limit": 1e999}}',
     ["trades: argument 'limit' must be a whole finite number, got inf"]),
    ({"cmd": "trades", "args": {"limit": 2.5}}, ["whole finite number, got 2.5"]),
    ({"cmd": "trades", "args": {"limit": 0}}, ["between 1 and 10000, got 0"]),
    ({"cmd": "trades", "args": {"limit": 10**30}}, ["between 1 and 10000"]),
    ({"cmd": "trades", "args": {"limit": "5"}}, ["must be an integer, got a string"]),
    ({"cmd": "trades", "args": {"limit": True}}, ["must be an integer, got a boolean"]),
    ({"cmd": "pause", "args": {"symbol": "NOPE"}},
     ["pause: argument 'symbol': unknown symbol 'NOPE'", "ETHBTC, LTCBTC, XMRBTC"]),
    ({"cmd": "pause", "args": {"symbol": 5}}, ["'symbol' must be a string, got an integer"]),
    # long strings are refused by length, never echoed (nor cut, which would defeat the
    # log's masking of secrets by their full text)
    ({"cmd": "pause", "args": {"symbol": "S" * 40}}, ["'symbol' is 40 characters long"]),
    ({"cmd": "pause", "args": {"symbol": ["ETHBTC"]}}, ["must be a string, got an array"]),
    ({"cmd": "pause", "args": {}}, ["pause: missing argument 'symbol'"]),
    ({"cmd": "resume-symbol", "args": {"symbol": None}}, ["must be a string, got null"]),
    ({"cmd": "trades", "args": {"limt": 5}}, ["unknown argument 'limt'", "takes limit"]),
    ({"cmd": "status", "args": {"x": 1}}, ["status takes no arguments"]),
    ({"cmd": "promote", "args": {"model": "xgboost", "version": "../../etc/passwd"}},
     ["'version' must be a model version"]),
    ({"cmd": "rollback", "args": {"model": {"$ne": 1}}}, ["'model' must be a string"]),
])
def test_bad_arguments_are_refused_naming_the_argument(daemon, req, words):
    reply = ask(daemon["sock"], req)
    assert reply["ok"] is False, reply
    for w in words:
        assert w in reply["error"]
    assert ask(daemon["sock"], {"cmd": "status"})["ok"]  # still serving


def test_good_arguments_still_work_and_are_normalised(daemon):
    sock = daemon["sock"]
    assert ask(sock, {"cmd": "trades", "args": {"limit": 5.0}})["ok"]
    reply = ask(sock, {"cmd": "pause", "args": {"symbol": " ethbtc "}})
    assert reply["ok"] and "ETHBTC" in reply["result"]["paused_symbols"]
    assert ask(sock, {"cmd": "resume-symbol", "args": {"symbol": "ETHBTC"}})["ok"]


def test_a_second_halt_keeps_the_first_reason(daemon):
    sock = daemon["sock"]
    first = ask(sock, {"cmd": "halt", "args": {"reason": "exchange maintenance"}})
    assert first["ok"] and first["result"]["reason"] == "exchange maintenance"
    assert "note" not in first["result"]
    second = ask(sock, {"cmd": "halt", "args": {"reason": "something else"}})
    assert second["ok"], second
    note = second["result"]["note"]
    assert note.startswith("already halted since ") and note.endswith(
        "(exchange maintenance)")
    status = ask(sock, {"cmd": "status"})["result"]
    assert status["risk_state"] == "HALTED"
    assert status["actors"]["risk"]["reason"] == "exchange maintenance"
    assert ask(sock, {"cmd": "resume"})["ok"]


def test_ctl_json_errors_are_json(daemon, tmp_path, capsys):
    """B13: with --json every outcome is one JSON object on stdout, errors included."""
    sock = str(daemon["sock"])
    cases = [
        (["--socket", sock, "--json", "pause", "NOPE"], 1, "unknown symbol 'NOPE'"),
        (["--socket", sock, "--json", "bogus"], 1, "unknown command 'bogus'"),
        (["--socket", str(tmp_path / "none.sock"), "--json", "status"], 3,
         "no daemon listening on"),
        (["--socket", sock, "--json", "pause"], 2, "usage: pause SYMBOL"),
        (["--socket", sock, "--json", "--timeout", "0", "status"], 2, "--timeout"),
        (["--socket", sock, "--json"], 2, "usage error"),
    ]
    for argv, code, words in cases:
        assert ctl.main(argv) == code, argv
        out = capsys.readouterr().out
        reply = json.loads(out)
        assert reply["ok"] is False and reply["exit_code"] == code and words in reply[
            "error"], (argv, reply)
    assert ctl.main(["--socket", sock, "pause", "NOPE"]) == 1  # without --json: stderr
    got = capsys.readouterr()
    assert got.out == "" and got.err.startswith("error: pause: argument 'symbol'")


def test_keep_alive_connections_free_their_slots_after_the_idle_timeout(daemon):
    """B5: two clients sending blank lines every 0.2 s held both slots for ever."""
    stop = threading.Event()
    holding = threading.Semaphore(0)

    def keep_alive() -> None:
        while True:  # until served: the previous test's connections may not be gone yet
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect(str(daemon["sock"]))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(b'{"cmd": "status"}\n')
            if b'"ok": true' in s.recv(65536):
                break  # served: this connection holds a slot
            s.close()
            time.sleep(0.05)
        holding.release()
        with s, contextlib.suppress(OSError):
            while not stop.is_set():
                s.sendall(b"\n")
                time.sleep(0.2)

    threads = [threading.Thread(target=keep_alive) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in threads:
            assert holding.acquire(timeout=20)
        t0 = time.monotonic()
        assert ask(daemon["sock"], {"cmd": "status"}) == {"ok": False, "error": "busy"}
        deadline = t0 + 30
        while not (reply := ask(daemon["sock"], {"cmd": "status"}))["ok"]:
            assert reply == {"ok": False, "error": "busy"}
            assert time.monotonic() < deadline, "the slots were never freed"
            time.sleep(0.1)
        assert 2.0 < time.monotonic() - t0 < 15  # the 3 s idle timeout, not for ever
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_the_daemon_survives_and_stores_only_good_rows(daemon):
    """Run last in this module: stops the daemon and reads what it stored."""
    sock, proc = daemon["sock"], daemon["proc"]
    assert ask(sock, {"cmd": "halt", "args": {"reason": {"a": [1, 2]}}})["ok"] is False
    assert ask(sock, {"cmd": "halt", "args": {"reason": "last one"}})["ok"]
    status = ask(sock, {"cmd": "status"})["result"]
    assert all(a["restarts"] == 0 for a in status["actors"].values()), status["actors"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    log = daemon["log"].read_text()
    assert "Traceback" not in log and "internal error" not in log
    assert "control command halt refused: halt: argument 'reason'" in log
    conn = sqlite3.connect(daemon["state"] / "qtraderd.db")
    try:
        details = [r[0] for r in conn.execute(
            "SELECT detail FROM risk_events WHERE reason='MANUAL' ORDER BY id")]
        paused = [r[0] for r in conn.execute(
            "SELECT symbol FROM risk_events WHERE symbol != ''")]
        aside = conn.execute("SELECT count(*) FROM rejected_rows").fetchone()[0]
        status_row = conn.execute("SELECT status, exit_code FROM runs").fetchone()
    finally:
        conn.close()
    assert details == ["exchange maintenance", "last one"]
    assert set(paused) == {"ETHBTC"}  # never NOPE, never 5
    assert aside == 0 and status_row == ("stopped", 0)
