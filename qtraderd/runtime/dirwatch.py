"""Watch a directory from a worker thread and hand each batch of changes to the event loop.

Used by the predictor (models directory) and the plugin host (plugins directory). The
synchronous `watchfiles.watch` (its Rust watcher) runs in a Trio worker thread; each
debounced batch of changes is first turned into a result by `process` *in that thread*
(the slow part: loading and checking a model, or nothing at all) and only the result is
handed to `deliver`, which runs on the event loop between two steps of whatever actor is
running, so the state it touches needs no lock. (`watchfiles.awatch` goes through anyio's
thread bridge, which cost ~10 % of replay throughput here.)

Paths in a batch are absolute even when `path` is relative: a caller that compares them
with its own paths must make those absolute first (the plugin host resolves its
directory once; comparing with a relative `plugins` matched nothing, so hot reload never
fired with the default directory).

The watcher stops when the calling task is cancelled (the thread is abandoned and told to
stop via its stop event; it notices within `step_ms`) or when the Trio run ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio
import watchfiles

T = TypeVar("T")
Changes = set[tuple[watchfiles.Change, str]]


async def watch_in_thread(path: Path, *, watch_filter: Callable[[watchfiles.Change, str], bool],
                          process: Callable[[Changes], T], deliver: Callable[[T], None],
                          debounce_ms: int = 50, step_ms: int = 50,
                          recursive: bool = True) -> None:
    """Run until cancelled: for every batch of changes under `path` (after `watch_filter`),
    `deliver(process(changes))` — `process` in the worker thread, `deliver` on the loop."""
    stop = threading.Event()
    token = trio.lowlevel.current_trio_token()

    def worker() -> None:
        for changes in watchfiles.watch(
                path, watch_filter=watch_filter, debounce=debounce_ms, step=step_ms,
                stop_event=stop, raise_interrupt=False, rust_timeout=0,
                recursive=recursive):
            result = process(changes)
            try:
                trio.from_thread.run_sync(deliver, result, trio_token=token)
            except trio.RunFinishedError:
                return

    try:
        await trio.to_thread.run_sync(worker, abandon_on_cancel=True)
    finally:
        stop.set()
