"""The state-dir lock: a live daemon is refused at once; a stopping or dead one is waited for.

A real second process holds the `flock` and writes what a daemon writes into the lock file
(its pid, then `<pid> stopping` once it stops); a holder whose pid is gone is the store
writer of a killed daemon, which still holds the inherited lock while it finishes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qtraderd.runtime.process import LOCK_NAME, LockError, StateLock

HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, sys.argv[2].replace("PID", str(os.getpid())).encode(), 0)
print("held", flush=True)
sys.stdin.read()  # hold until the test closes our stdin
"""


def hold(state: Path, content: str) -> subprocess.Popen[str]:
    state.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(state / LOCK_NAME), content],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_a_live_daemon_is_refused_at_once_naming_its_pid(tmp_path: Path) -> None:
    holder = hold(tmp_path, "PID\n")
    try:
        t0 = time.monotonic()
        with pytest.raises(LockError, match=rf"in use by another qtraderd \(pid {holder.pid}\)"):
            StateLock(tmp_path, wait_s=30).acquire()
        assert time.monotonic() - t0 < 5  # not the 30 s wait
    finally:
        release(holder)


@pytest.mark.parametrize("content", ["PID stopping\n", "{dead}\n"],
                         ids=["daemon stopping", "writer of a dead daemon"])
def test_a_stopping_or_dead_holder_is_waited_for(tmp_path: Path, content: str) -> None:
    holder = hold(tmp_path, content.format(dead=dead_pid()))
    lock = StateLock(tmp_path, wait_s=60)
    got: list[BaseException | None] = []

    def take() -> None:
        try:
            lock.acquire()
            got.append(None)
        except BaseException as exc:  # reported by the assertion below
            got.append(exc)

    taker = threading.Thread(target=take)
    taker.start()
    try:
        taker.join(timeout=0.5)
        assert taker.is_alive() and not got  # still waiting while the holder holds
    finally:
        release(holder)
    taker.join(timeout=30)
    assert got == [None]
    assert (tmp_path / LOCK_NAME).read_text().split() == [str(os.getpid())]
    lock.release()


def test_mark_stopping_is_what_a_successor_reads(tmp_path: Path) -> None:
    lock = StateLock(tmp_path)
    lock.acquire()
    lock.mark_stopping()
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()} stopping\n"
    lock.release()
    lock.mark_stopping()  # released: nothing to mark, no error
