"""Delivering events to notifier plugins without ever holding up a bar.

Actors call `put` from inside `handle`: it builds the event and `send_nowait`s it into a
bounded channel — when the channel is full the event is dropped and counted (a warning
once per burst), never waited for. A single task drains the channel and calls every
active notifier in name order, each call under `plugins.notify_timeout_s`:
* `async def notify(event)` is awaited on the event loop (it must not block: use async
  I/O such as httpx.AsyncClient);
* a plain `def notify(event)` runs in a worker thread (at most 4 at a time), so a
  blocking call cannot stall the loop; on timeout the thread is abandoned.
An exception or a timeout is an error of that plugin (see PluginHost.failed). Events are
immutable, so notifier code in a thread never touches state the actors own.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any, Protocol

import trio

from qtraderd.plugins.api import Event


class PluginHost(Protocol):
    """What delivery needs of the host (qtraderd.plugins.host.PluginHost): the notifier
    plugins' states, and where to report each call's success or failure."""

    notifiers: Any

    def failed(self, st: Any, hook: str, error: str,
               exc: BaseException | None = None) -> None: ...

    def succeeded(self, st: Any) -> None: ...

log = logging.getLogger("qtraderd.plugins")

THREADS = 4


class Notifications:
    def __init__(self, host: PluginHost, size: int, timeout_s: float) -> None:
        self.host = host
        self.size = size
        self.timeout_s = timeout_s
        self._tx, self._rx = trio.open_memory_channel[Event](size)
        self._limiter = trio.CapacityLimiter(THREADS)
        self._idle = trio.Event()
        self._idle.set()
        self._dropping = False
        self.queued = 0
        self.delivered = 0
        self.dropped = 0

    def put(self, kind: str, ts: int, data: dict[str, Any]) -> None:
        """Queue an event; never blocks, never raises (a full queue drops it)."""
        try:
            self._tx.send_nowait(Event(kind, ts, MappingProxyType(data)))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning("plugin notifier queue full (%d events): dropping events until "
                            "the notifiers catch up", self.size)
            return
        if self._dropping:
            self._dropping = False
            log.warning("plugin notifier queue has room again (%d events dropped so far)",
                        self.dropped)
        self.queued += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    async def run(self) -> None:
        async for event in self._rx:
            for st in list(self.host.notifiers):
                await self._deliver(st, event)
            self.delivered += 1
            if self._rx.statistics().current_buffer_used == 0:
                self._idle.set()

    async def _deliver(self, st: Any, event: Event) -> None:
        plugin = st.plugin
        if st.state != "active" or plugin is None:
            return
        fn = plugin.hooks["notify"]
        st.calls += 1
        with trio.move_on_after(self.timeout_s) as scope:
            try:
                if plugin.async_notify:
                    await fn(event)
                else:
                    await trio.to_thread.run_sync(fn, event, abandon_on_cancel=True,
                                                  limiter=self._limiter)
            except Exception as exc:
                self.host.failed(st, "notify", f"{type(exc).__name__}: {exc}", exc)
                return
        if scope.cancelled_caught:
            self.host.failed(st, "notify", f"timed out after {self.timeout_s:g} s "
                             f"({event.kind})")
            return
        self.host.succeeded(st)

    async def drain(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until every queued event was delivered; on shutdown."""
        with trio.move_on_after(timeout_s):
            await self._idle.wait()
            return True
        return False

    def status(self) -> dict[str, Any]:
        return {"events_queued": self.queued, "events_delivered": self.delivered,
                "events_dropped": self.dropped,
                "queue": f"{self._rx.statistics().current_buffer_used}/{self.size}"}
