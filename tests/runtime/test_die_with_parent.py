"""Helper processes die with the daemon, and only then.

A job started from a thread that ends (trio starts processes from its worker threads,
which its thread cache ends after 10 idle seconds) must live on: `PR_SET_PDEATHSIG`
killed it with SIGKILL when that thread exited. The parent process dying still kills it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

CHILD = ("import sys, time; from qtraderd.runtime.process import die_with_parent; "
         "die_with_parent(0.05); print('ready', flush=True); time.sleep(30)")


def _env() -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {**os.environ, "PYTHONPATH": root}


def test_a_child_outlives_the_thread_that_started_it() -> None:
    box: list[subprocess.Popen[bytes]] = []
    t = threading.Thread(target=lambda: box.append(subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, env=_env())))
    t.start()
    t.join()  # the forking thread is gone
    child = box[0]
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(0.3)  # several watch periods after the thread ended
        assert child.poll() is None, f"killed with {child.returncode}"
    finally:
        child.kill()
        child.wait()


def test_a_child_dies_with_its_parent_process() -> None:
    # parent: starts the child, prints its pid, then is killed by us
    parent_code = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                   f"{CHILD!r}], stdout=subprocess.PIPE); p.stdout.readline(); "
                   "print(p.pid, flush=True); import time; time.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE,
                              env=_env())
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # gone (reaped by init)
        # a zombie awaiting init's reap counts as dead
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().split(")")[1].split()[0] == "Z":
                return
        time.sleep(0.05)  # polling with a deadline
    raise AssertionError(f"child {pid} outlived its parent")
