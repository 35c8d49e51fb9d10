"""Feed actor: turns a bar source into Steps, one per open time.

Lockstep (DESIGN.md "Determinism") is enforced downstream: the execution actor takes
step t+1 only after step t has come back to it from risk, and it is execution — the
venue, where the market "happens" — that advances the replay clock when it takes a step.
So the clock never moves while a step is being processed and a replay gives the same
orders and fills whatever Trio's scheduler does. The feed may prepare one step ahead
(its outbox holds one), which costs nothing in determinism and saves a wake-up per step.

A live source (the Binance feed) brings three optional parts, used when present: `run`,
its background work (stream, REST, deadlines), started in this actor's nursery before
`batches()` is read, so it lives and dies with the actor; `step_records(bars)`, rows that
are committed with the step (the bars themselves); and `status()`, merged into this
actor's snapshot (connection, backfill, late bars, REST weight, clock offset).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import trio

from qtraderd.core.clock import iso
from qtraderd.core.messages import Bar, Step
from qtraderd.features.spec import HISTORY_BARS
from qtraderd.runtime.supervisor import Actor, pass_on
from qtraderd.venues.base import BarSource

log = logging.getLogger("qtraderd.feed")


class FeedActor(Actor):
    name = "feed"

    def __init__(self, source: BarSource, outbox: trio.MemorySendChannel[Step],
                 interval_ms: int, speed: float = math.inf, hold_at_end: bool = False,
                 history_bars: int = HISTORY_BARS) -> None:
        """`history_bars`: stored bars per symbol before the first step of a fresh run
        that ride along with it for the predictor's warm-up (see Step.history)."""
        super().__init__()
        self.history_bars = history_bars
        self.source = source
        self.outbox = outbox
        self.interval_ms = interval_ms
        self.speed = speed
        self.hold_at_end = hold_at_end
        self.seq = 0
        self.bars = 0
        self.last_ts: int | None = None
        self.done = False
        self.first_sent: float | None = None  # perf_counter when the first step went out
        self.first_sent_cpu: float | None = None  # process_time then (benchmarks)
        self._stop = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._serve = getattr(source, "run", None)
        self._records = getattr(source, "step_records", None)
        self._source_status = getattr(source, "status", None)

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
            async with trio.open_nursery() as nursery:
                if self._serve is not None:
                    await nursery.start(self._serve)
                async for ts, bars in self.source.batches():
                    await self._pace(ts)
                    history: tuple[Bar, ...] = ()
                    if self.seq == 0 and self.history_bars > 0:  # a fresh run, not a resume
                        history = await self.source.history(ts, self.history_bars)
                        if history:
                            log.info("warm-up: %d stored bars before the first step (%d "
                                     "symbols)", len(history),
                                     len({b.symbol for b in history}))
                    step = Step(seq=self.seq + 1, ts=ts, close_ts=ts + self.interval_ms,
                                bars=bars, records=self._records(bars) if self._records
                                else (), history=history)
                    await pass_on(self.outbox, step)  # a yield only when execution is behind
                    if self.first_sent is None:
                        self.first_sent = time.perf_counter()
                        self.first_sent_cpu = time.process_time()
                    self.seq += 1
                    self.processed += 1
                    self.bars += len(bars)
                    self.last_ts = ts
                nursery.cancel_scope.cancel()
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

    def restore_state(self, state: dict[str, Any]) -> None:
        """Continue a resumed run after its last recorded step (the feed's own position
        is that step: nothing else of it needs storing)."""
        self.seq, self.bars, self.last_ts = state["seq"], state["bars"], state["last_ts"]
        self.source.last_ts = state["last_ts"]

    def status(self) -> dict[str, Any]:
        live = self._source_status() if self._source_status is not None else {}
        return {"steps": self.seq, "bars": self.bars, "last_bar": iso(self.last_ts),
                "finished": self.done, **live}

    def publish(self) -> dict[str, Any]:
        return {**self.status(), "last_ts": self.last_ts}

    def snapshot(self) -> Mapping[str, Any]:
        """A live source's state (connection, last frame age) moves between steps: its
        snapshot is rebuilt on every read (readers look about once a second)."""
        if self._source_status is not None:
            self.changed()
        return super().snapshot()
