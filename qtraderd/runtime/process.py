"""Process plumbing for crash-only operation: one daemon per state directory, and helper
processes that never outlive the daemon.

* `StateLock`: an exclusive `flock` on `<state-dir>/qtraderd.lock`, held for the daemon's
  life and inherited by its store writer, so a second daemon on the same directory is
  refused at once (exit 2, naming the holder's pid) and a restarted daemon waits until
  every process of the previous one — a store writer still committing its last batch, or
  a daemon that is stopping — is gone.
  A lock held by a dead process is released by the kernel: nothing to clean up after
  `kill -9`.
* `die_with_parent()`: helper processes (the store writer, learner jobs) ask the kernel for
  SIGKILL when the daemon dies, so a killed daemon never leaves a writer committing batches
  behind the back of its successor, or a job deploying a model nobody waits for.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import threading
import time
from pathlib import Path

LOCK_NAME = "qtraderd.lock"


class LockError(RuntimeError):
    """The state directory is in use by another live daemon."""


def die_with_parent(poll_s: float = 0.2) -> None:
    """SIGKILL this process when its parent process exits.

    Not `prctl(PR_SET_PDEATHSIG)`: that signal fires when the parent *thread* that forked
    us exits, and trio starts processes from a worker thread that its thread cache ends
    after 10 idle seconds — every job longer than that was killed mid-run (exit -9). A
    daemon thread watches for the re-parenting instead (getppid changes when the parent
    process dies, whichever of its threads forked us).
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _holder(fd: int) -> tuple[str, bool]:
    """(pid, stopping) as the lock's holder wrote them: "1234" or "1234 stopping"."""
    words = os.pread(fd, 64, 0).decode(errors="replace").split()
    return (words[0] if words else ""), "stopping" in words[1:]


def _running(pid: str) -> bool:
    """Whether `pid` is another live process: a daemon that holds the lock and is not
    stopping, so waiting for it is pointless. A dead holder (kill -9: its store writer
    still holds the lock while it finishes), a zombie, an unreadable pid or our own (an
    earlier daemon of this process finishing) are waited for, as before."""
    if not pid.isdigit() or int(pid) in (0, os.getpid()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[:1] != [b"Z"]
    except OSError:
        return True  # no /proc here: kill(0) said it exists


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
                holder, stopping = _holder(fd)
                if time.monotonic() >= deadline or (not stopping and _running(holder)):
                    os.close(fd)
                    raise LockError(
                        f"state directory {self.path.parent} is in use by another qtraderd "
                        f"(pid {holder or '?'}); stop it first, or use another --state-dir"
                    ) from None
                time.sleep(0.05)  # a predecessor's store writer is finishing: poll for it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def mark_stopping(self) -> None:
        """Note in the lock file that this daemon is on its way out, so a successor
        started meanwhile waits for it (up to `wait_s`) instead of being refused."""
        if self.fd is not None:
            os.pwrite(self.fd, f"{os.getpid()} stopping\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
