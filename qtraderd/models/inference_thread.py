"""One thread that runs ONNX Runtime calls while the event loop goes on with Python work.

ONNX Runtime releases the GIL while it computes, so a model call made on this thread
overlaps whatever the event loop does meanwhile — in a replay at full speed, the predictor
starts the next step's models before the current step goes through sizer, risk,
execution and recorder (PredictorActor's look-ahead), and collects the probabilities when
that step arrives. The call is a pure function of its inputs: where it runs changes no
bit of the result, so replays stay deterministic.

Two details make the overlap real on CPython:

* The job is handed over with two plain locks (no queue, no futures): a hand-over costs a
  few microseconds, which matters at ~10,000 steps a second.
* A waiting thread gets the GIL only when the running one gives it up: at a blocking call
  or after the switch interval (5 ms by default). With the event loop busy in Python, the
  worker would wait those 5 ms just to enter ONNX Runtime, and again to leave it: longer
  than the model call. `SWITCH_S` shortens the interval for the process (it only costs
  anything while two threads want the GIL, i.e. at the two moments per step here).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from typing import Any

SWITCH_S = 5e-5  # the interpreter's switch interval while a worker exists


class InferenceThread:
    """A daemon thread running one job at a time: `submit(fn)`, later `result()`."""

    def __init__(self, name: str = "inference") -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._fn: Callable[[], Any] | None = None
        self._out: Any = None
        self._error: BaseException | None = None
        self.busy = False
        self._closed = False
        if sys.getswitchinterval() > SWITCH_S:
            sys.setswitchinterval(SWITCH_S)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            self._go.acquire()
            fn, self._fn = self._fn, None
            if fn is None:  # close()
                self._done.release()
                return
            try:
                self._out, self._error = fn(), None
            except BaseException as exc:  # handed to the caller of result()
                self._out, self._error = None, exc
            self._done.release()

    def submit(self, fn: Callable[[], Any]) -> None:
        """Start `fn()` on the thread; one job at a time (collect it with `result`)."""
        if self.busy:
            raise RuntimeError("inference thread: the previous job was not collected")
        if self._closed:
            raise RuntimeError("inference thread is closed")
        self.busy = True
        self._fn = fn
        self._go.release()

    def result(self) -> Any:
        """Wait for the job (the GIL is free meanwhile) and return what it returned, or
        raise what it raised."""
        if not self.busy:
            raise RuntimeError("inference thread: no job to collect")
        self._done.acquire()
        self.busy = False
        out, error, self._out, self._error = self._out, self._error, None, None
        if error is not None:
            raise error
        return out

    def close(self) -> None:
        """Collect a job still running, then end the thread."""
        if self._closed:
            return
        if self.busy:
            with contextlib.suppress(Exception):  # nobody wants it any more
                self.result()
        self._closed = True
        self._go.release()
        self._done.acquire()
        self._thread.join()
