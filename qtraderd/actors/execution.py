"""Execution actor: the broker's two moments in every bar.

Phase A (step arrives from the feed): orders decided on the previous bar fill at this
bar's open and resting protective orders trigger inside its range; the step leaves with
the fills, closed trades, positions and account equity for everyone downstream.
Phase B (the same step comes back from risk): apply the monitor's amendments, submit
what risk allowed (filled at the next bar's open) and hand the finished step on to the
recorder.

The actor alternates strictly A(t), B(t), A(t+1): two inboxes, but never a race between
them, and this alternation is what keeps the whole chain in lockstep. Taking step t is
also when the replay clock moves to t's close (the venue is where time happens).
Finished steps go to the recorder in lists: one at a time when the feed has nothing
waiting (live), up to RECORD_BATCH when the next bar is already queued (replay at full
speed), which saves a task switch per step. The broker behind it is a seam: PaperBroker
now, an exchange adapter later.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import trio

from qtraderd.core.clock import ReplayClock
from qtraderd.core.messages import (
    AccountView,
    Amend,
    Bar,
    Fill,
    OrderIntent,
    PositionView,
    Step,
    Trade,
    replace,
)
from qtraderd.runtime.supervisor import Actor, degrade, pass_on

log = logging.getLogger("qtraderd.execution")

RECORD_BATCH = 64


class Broker(Protocol):
    def on_bars(self, bars: tuple[Bar, ...]) -> tuple[list[Fill], list[Trade]]: ...

    def snapshot(self) -> tuple[tuple[PositionView, ...], tuple[AccountView, ...]]: ...

    def amend(self, amends: tuple[Amend, ...]) -> None: ...

    def submit(self, intent: OrderIntent, qty: float) -> None: ...

    def pending_count(self) -> int: ...


class ExecutionActor(Actor):
    name = "execution"

    def __init__(self, broker: Broker, bars_in: trio.MemoryReceiveChannel[Step],
                 to_monitor: trio.MemorySendChannel[Step],
                 decided_in: trio.MemoryReceiveChannel[Step],
                 to_recorder: trio.MemorySendChannel[list[Step]],
                 clock: ReplayClock | None = None) -> None:
        super().__init__()
        self.broker = broker
        self.bars_in = bars_in
        self.to_monitor = to_monitor
        self.decided_in = decided_in
        self.to_recorder = to_recorder
        self.clock = clock
        self._finished: list[Step] = []
        self.last_done: float | None = None  # perf_counter when the last step finished
        self._awaiting_b = False
        self.fills = 0
        self.trades = 0
        self.accounts: tuple[AccountView, ...] = ()

    async def run(self) -> None:
        if self._awaiting_b:  # restarted between the two phases of a step
            await self._phase_b()
        async for step in self.bars_in:
            if self.clock is not None:
                self.clock.advance(step.close_ts)
            error: Exception | None = None
            try:
                out = self._phase_a(step)
            except Exception as exc:
                error, out = exc, degrade(step, self.name)
            self._awaiting_b = True
            await pass_on(self.to_monitor, out)
            await self._phase_b()
            await self._hand_over()
            if error is not None:
                raise error
        await self.to_monitor.aclose()
        await self._hand_over(force=True)
        await self.to_recorder.aclose()

    async def _hand_over(self, force: bool = False) -> None:
        if not self._finished:
            return
        stats = self.bars_in.statistics()
        next_waiting = stats.current_buffer_used or stats.tasks_waiting_send
        if force or not next_waiting or len(self._finished) >= RECORD_BATCH:
            batch, self._finished = self._finished, []
            await self.to_recorder.send(batch)

    def _phase_a(self, step: Step) -> Step:
        fills, closed = self.broker.on_bars(step.bars)
        positions, accounts = self.broker.snapshot()
        self.fills += len(fills)
        self.trades += len(closed)
        self.accounts = accounts
        return replace(step, fills=tuple(fills), closed=tuple(closed), positions=positions,
                       accounts=accounts)

    async def _phase_b(self) -> None:
        try:
            step = await self.decided_in.receive()
        except trio.EndOfChannel:
            self._awaiting_b = False
            return
        error: Exception | None = None
        try:
            self.broker.amend(step.amends)
            allowed = {d.intent_id: d for d in step.decisions if d.action != "deny"}
            for intent in step.intents:
                d = allowed.get(intent.id)
                if d is not None and d.qty > 0:
                    self.broker.submit(intent, d.qty)
        except Exception as exc:
            error, step = exc, degrade(step, self.name)
        finally:
            self._awaiting_b = False
        self.processed += 1
        self.last_done = time.perf_counter()
        self._finished.append(step)
        if error is not None:
            raise error

    def status(self) -> dict[str, Any]:
        return {
            "fills": self.fills,
            "trades": self.trades,
            "pending_orders": self.broker.pending_count(),
            "equity": {a.quote: round(a.equity, 8) for a in self.accounts},
        }

    def publish(self) -> dict[str, Any]:
        """Adds the broker's open positions (frozen views, marked at the last bar) and the
        accounts as of the last bar."""
        positions, _ = self.broker.snapshot()
        return {**self.status(), "positions": positions, "accounts": self.accounts}
