"""Running plugin code where the daemon can give up on it: one worker thread per plugin.

Plugin code never runs on the event loop's thread. Each loaded plugin has a `Lane`: its
own worker thread, which imports the file, runs `setup`, every hook and `teardown`. The
caller waits for the result with a deadline:

* `Lane.call` blocks the calling thread (the bar chain's hooks are synchronous and run
  inside an actor's `handle`; the loop is held for at most the deadline, as it was held
  by the hook itself before);
* `Lane.acall` awaits on the loop (loads, notifiers) and never holds it.

When the deadline passes the call is *abandoned*: the lane forgets that thread (the next
call starts a fresh one, so a stuck call only ever costs its own plugin) and asks it to
stop by raising `PluginAbandoned` in it (`PyThreadState_SetAsyncExc`), which ends a pure
Python loop at its next bytecode and a blocking call (a sleep, a socket wait) when that
returns. Code that blocks inside C for good, or swallows `BaseException`, keeps its
thread: `stuck()` counts those, and the host disables a plugin that has too many. (A C
loop that never releases the GIL stops every thread of the process; only a separate
process could contain that.)

Why a thread and not a signal alarm on the loop thread: the alarm's exception can be
swallowed by the plugin, does not reach every blocking call, and would race Trio's own
signal handling. Why exceptions are transported, not re-raised: everything a plugin
raises, `SystemExit` and `KeyboardInterrupt` included, is the plugin's doing — Python
delivers real signals to the main thread only, which never runs plugin code — so it
comes back as `PluginFailed` and cannot unwind the daemon.

Cost (benchmarks/plugin_hooks.py): a hook call through the lane costs ~20 µs more CPU
than a direct call (two thread wake-ups); hooks run per entry signal, not per bar.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

import trio


class PluginAbandoned(BaseException):
    """Raised inside a worker thread the daemon gave up on; ends that thread."""


class Overrun(Exception):
    """The call did not finish within its deadline; its thread was abandoned."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"timed out after {timeout_s:g} s (abandoned)")
        self.timeout_s = timeout_s


def safe_text(obj: object, *, use_repr: bool = False, limit: int = 1000) -> str:
    """str() or repr() of a plugin's object, which may raise anything (its __str__ and
    __repr__ are plugin code): a fallback naming its type then. Run it in the plugin's
    lane where it could loop (PluginAbandoned still ends the thread)."""
    try:
        text = repr(obj) if use_repr else str(obj)
    except PluginAbandoned:
        raise
    except BaseException as exc:  # the plugin's, whatever it is (module docstring)
        text = (f"<{type(obj).__qualname__} object: its {'repr' if use_repr else 'str'}() "
                f"raised {type(exc).__qualname__}>")
    return text if len(text) <= limit else text[:limit] + "..."


class PluginFailed(Exception):
    """The plugin's code raised `error` (any BaseException, SystemExit included); `text` is
    its message, taken safely (in the lane when the lane caught it)."""

    def __init__(self, error: BaseException, text: str | None = None) -> None:
        self.text = safe_text(error) if text is None else text
        super().__init__(f"{type(error).__name__}: {self.text}")
        self.error = error


class _Job:
    __slots__ = ("args", "done", "error", "finished", "fn", "text", "value", "wake")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...],
                 wake: Callable[[], None] | None) -> None:
        self.fn, self.args, self.wake = fn, args, wake
        self.done = threading.Lock()
        self.done.acquire()  # released by the worker when the call finished
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.text: str | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise PluginFailed(self.error, self.text)
        return self.value


def _serve(jobs: SimpleQueue[_Job | None]) -> None:
    try:
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                job.value = job.fn(*job.args)
            except PluginAbandoned:
                return
            except BaseException as exc:  # the plugin's, whatever it is (module docstring)
                job.error = exc
                job.text = safe_text(exc)  # its __str__ is plugin code too
            job.finished = True
            job.done.release()
            if job.wake is not None:
                with contextlib.suppress(trio.RunFinishedError):  # the daemon is gone
                    job.wake()
            job = None  # drop the plugin's objects while idle
    except PluginAbandoned:  # arrived just after the call finished
        return


class Lane:
    """One plugin's worker thread (replaced when abandoned)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._jobs: SimpleQueue[_Job | None] | None = None
        self._abandoned: list[threading.Thread] = []
        self.overruns = 0  # calls abandoned, in total

    def _submit(self, job: _Job) -> None:
        if self._thread is None or self._jobs is None:
            self._jobs = SimpleQueue()
            self._thread = threading.Thread(target=_serve, args=(self._jobs,),
                                            name=f"plugin {self.name}", daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def call(self, timeout_s: float, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the lane's thread, waiting at most `timeout_s` (blocking).
        Raises Overrun (abandoned) or PluginFailed (it raised)."""
        return self.wait(self.submit(fn, *args), timeout_s)

    def submit(self, fn: Callable[..., Any], *args: Any) -> _Job:
        """Start `fn(*args)`; `wait` for it (several lanes can then work at once)."""
        job = _Job(fn, args, None)
        self._submit(job)
        return job

    def wait(self, job: _Job, timeout_s: float) -> Any:
        """The result of a submitted call, or Overrun once `timeout_s` passed."""
        if not job.done.acquire(timeout=timeout_s) and not job.finished:
            self._abandon()
            raise Overrun(timeout_s)
        return job.outcome()

    async def acall(self, timeout_s: float, fn: Callable[..., Any], *args: Any) -> Any:
        """The same, awaited on the event loop (the loop keeps running meanwhile)."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        job = _Job(fn, args, lambda: token.run_sync_soon(done.set))
        self._submit(job)
        try:
            with trio.move_on_after(timeout_s):
                await done.wait()
        finally:
            if not job.finished:  # deadline, or the daemon is stopping
                self._abandon()
        if not job.finished:
            raise Overrun(timeout_s)
        return job.outcome()

    def _abandon(self) -> None:
        thread, jobs = self._thread, self._jobs
        self._thread = self._jobs = None
        self.overruns += 1
        if thread is None or jobs is None:
            return
        jobs.put(None)  # if it ever gets back to its queue, it ends there
        if thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                       ctypes.py_object(PluginAbandoned))
        self._abandoned.append(thread)

    def stuck(self) -> int:
        """Abandoned threads still running (did not stop when asked)."""
        self._abandoned = [t for t in self._abandoned if t.is_alive()]
        return len(self._abandoned)

    def close(self) -> None:
        """Let the idle worker end (an unused lane)."""
        if self._jobs is not None:
            self._jobs.put(None)
        self._thread = self._jobs = None


GRACE_S = 0.25  # an async call's own deadline comes first; this one is for a blocked loop


def run_async(timeout_s: float, fn: Callable[..., Any], *args: Any) -> Any:
    """An `async def` hook run to completion in a private Trio loop (in a lane's thread),
    cancelled cleanly by that loop at `timeout_s` (raising Overrun); call it through
    `Lane.acall` with `timeout_s + GRACE_S`, which abandons the thread only if the hook
    blocked the private loop itself."""

    async def bounded() -> Any:
        with trio.move_on_after(timeout_s):
            return await fn(*args)
        raise Overrun(timeout_s)

    return trio.run(bounded)
