"""Process plumbing for crash-only operation: one daemon per state directory, and helper
processes that never outlive the daemon.

* `StateLock`: an exclusive `flock` on `<state-dir>/qtraderd.lock`, held for the daemon's
  life and inherited by its store writer, so a second daemon on the same directory is
  refused (exit 2, naming the holder's pid) and a restarted daemon waits until every
  process of the previous one — a store writer still committing its last batch — is gone.
  A lock held by a dead process is released by the kernel: nothing to clean up after
  `kill -9`.
* `die_with_parent()`: helper processes (the store writer, learner jobs) ask the kernel for
  SIGKILL when the daemon dies, so a killed daemon never leaves a writer committing batches
  behind the back of its successor, or a job deploying a model nobody waits for.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import time
from pathlib import Path

LOCK_NAME = "qtraderd.lock"
PR_SET_PDEATHSIG = 1


class LockError(RuntimeError):
    """The state directory is in use by another live daemon."""


def die_with_parent() -> None:
    """SIGKILL this process when its parent exits (Linux); exit now if it already has."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux/glibc: the pipe's EOF still ends the writer
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class StateLock:
    """`with StateLock(state_dir):` — exclusive use of a state directory."""

    def __init__(self, state_dir: Path, wait_s: float = 10.0) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self.wait_s = wait_s
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise LockError(
                        f"state directory {self.path.parent} is in use by another qtraderd "
                        f"(pid {holder}); stop it first, or use another --state-dir") from None
                time.sleep(0.05)  # a predecessor's store writer is finishing: poll for it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
