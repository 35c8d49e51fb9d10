"""Feed actor: turns a bar source into Steps, one per open time, in lockstep with the chain.

Lockstep (DESIGN.md "Determinism"): the feed takes the single in-flight permit before it
advances the clock and sends step t, and the execution actor gives the permit back once
step t has left the chain. So the clock never moves while a step is being processed, and
a replay gives the same orders and fills whatever Trio's scheduler does. At full speed
this costs one wake-up per step; each step already carries every symbol's bar.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio

from qtraderd.clock import ReplayClock, iso
from qtraderd.messages import Bar, Step
from qtraderd.supervisor import Actor

log = logging.getLogger("qtraderd.feed")


class BarSource(Protocol):
    """A feed: closed bars grouped by open time, resumable after a restart."""

    last_ts: int | None

    def batches(self) -> AsyncIterator[tuple[int, tuple[Bar, ...]]]: ...

    def close(self) -> None: ...


class FeedActor(Actor):
    name = "feed"

    def __init__(self, source: BarSource, clock: ReplayClock | Any,
                 outbox: trio.MemorySendChannel[Step], gate: trio.Semaphore, interval_ms: int,
                 speed: float = math.inf, hold_at_end: bool = False) -> None:
        super().__init__()
        self.source = source
        self.clock = clock
        self.outbox = outbox
        self.gate = gate
        self.interval_ms = interval_ms
        self.speed = speed
        self.hold_at_end = hold_at_end
        self.seq = 0
        self.bars = 0
        self.last_ts: int | None = None
        self.done = False
        self._stop = trio.Event()
        self._scope: trio.CancelScope | None = None

    def stop(self) -> None:
        """Stop producing; the chain then drains and every actor finishes in turn."""
        self._stop.set()
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            if self._stop.is_set():
                scope.cancel()
            async for ts, bars in self.source.batches():
                await self._pace(ts)
                await self.gate.acquire()
                try:
                    self.seq += 1
                    close_ts = ts + self.interval_ms
                    if isinstance(self.clock, ReplayClock):
                        self.clock.advance(close_ts)
                    step = Step(seq=self.seq, ts=ts, close_ts=close_ts, bars=bars)
                    await self.outbox.send(step)
                except BaseException:  # the step never entered the chain: free its permit
                    self.gate.release()
                    raise
                self.processed += 1
                self.bars += len(bars)
                self.last_ts = ts
            self.done = True
            if self.hold_at_end:
                log.info("replay data ended after %d steps; holding until stopped", self.seq)
                await trio.sleep_forever()
        self._scope = None
        if not self.done:
            log.info("feed stopped after %d steps", self.seq)
        else:
            log.info("feed finished: data ended after %d steps, %d bars", self.seq, self.bars)
        self.source.close()
        await self.outbox.aclose()

    async def _pace(self, ts: int) -> None:
        if math.isinf(self.speed) or self.last_ts is None:
            return
        await trio.sleep(max(0, ts - self.last_ts) / 1000.0 / self.speed)

    def status(self) -> dict[str, Any]:
        return {"steps": self.seq, "bars": self.bars, "last_bar": iso(self.last_ts),
                "finished": self.done}
