"""Delivering events to notifier plugins without ever holding up a bar.

Actors call `put` from inside `handle`: it builds the event and `send_nowait`s it into a
bounded channel — when the channel is full the event is dropped and counted (a warning
once per burst), never waited for. A single task drains the channel and calls every
active notifier in name order, each call under `plugins.notify_timeout_s`, in the
notifier's own worker thread (its lane, qtraderd.plugins.isolation):
* a plain `def notify(event)` is called there and may block;
* an `async def notify(event)` runs there in a private Trio loop, one per call (so an
  async client must not be kept from one call to the next), which cancels it cleanly at
  the deadline; and not even a notifier that blocks inside `async def` can stall the
  daemon's loop (its thread is abandoned GRACE_S later).
On timeout the call is abandoned; since every notifier has its own thread, an abandoned
one never takes a slot another notifier needs (a shared pool of four threads could be
filled by one hung webhook). An exception or a timeout is an error of that plugin
(PluginHost.call_failed). Events are immutable, so notifier code in a thread never
touches state the actors own.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any, Protocol

import trio

from qtraderd.plugins.api import Event
from qtraderd.plugins.isolation import GRACE_S, Overrun, PluginFailed, run_async


class PluginHost(Protocol):
    """What delivery needs of the host (qtraderd.plugins.host.PluginHost): the notifier
    plugins' states, and where to report each call's success or failure."""

    notifiers: Any

    def call_failed(self, st: Any, hook: str, exc: Overrun | PluginFailed) -> None: ...

    def succeeded(self, st: Any) -> None: ...

log = logging.getLogger("qtraderd.plugins")


class Notifications:
    def __init__(self, host: PluginHost, size: int, timeout_s: float) -> None:
        self.host = host
        self.size = size
        self.timeout_s = timeout_s
        self._tx, self._rx = trio.open_memory_channel[Event](size)
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
        plugin, lane = st.plugin, st.lane
        if st.state != "active" or plugin is None or lane is None:
            return
        fn = plugin.hooks["notify"]
        st.calls += 1
        try:
            if plugin.async_notify:
                await lane.acall(self.timeout_s + GRACE_S, run_async, self.timeout_s, fn,
                                 event)
            else:
                await lane.acall(self.timeout_s, fn, event)
        except (Overrun, PluginFailed) as exc:
            if isinstance(exc, PluginFailed) and isinstance(exc.error, Overrun):
                exc = exc.error  # cancelled cleanly by its own loop: an overrun all the same
            self.host.call_failed(st, "notify", exc)
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
