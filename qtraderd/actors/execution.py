"""Execution actor: the broker's two moments in every bar.

Phase A (step arrives from the feed): orders decided on the previous bar fill at this
bar's open and resting protective orders trigger inside its range; the step leaves with
the fills, closed trades, positions and account equity for everyone downstream.
Phase B (the same step comes back from risk): apply the monitor's amendments, submit
what risk allowed (filled at the next bar's open), hand the finished step to the recorder
and free the in-flight permit so the feed may send the next bar.

The actor alternates strictly A(t), B(t), A(t+1): two inboxes, but never a race between
them. The broker behind it is a seam: PaperBroker now, an exchange adapter later.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Protocol

import trio

from qtraderd.messages import (
    AccountView,
    Amend,
    Bar,
    Fill,
    OrderIntent,
    PositionView,
    Step,
    Trade,
)
from qtraderd.supervisor import Actor, degrade

log = logging.getLogger("qtraderd.execution")


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
                 to_recorder: trio.MemorySendChannel[Any], gate: trio.Semaphore) -> None:
        super().__init__()
        self.broker = broker
        self.bars_in = bars_in
        self.to_monitor = to_monitor
        self.decided_in = decided_in
        self.to_recorder = to_recorder
        self.gate = gate
        self._awaiting_b = False
        self.fills = 0
        self.trades = 0
        self.accounts: tuple[AccountView, ...] = ()

    async def run(self) -> None:
        if self._awaiting_b:  # restarted between the two phases of a step
            await self._phase_b()
        async for step in self.bars_in:
            error: Exception | None = None
            try:
                out = self._phase_a(step)
            except Exception as exc:
                error, out = exc, degrade(step, self.name)
            self._awaiting_b = True
            await self.to_monitor.send(out)
            await self._phase_b()
            if error is not None:
                raise error
        await self.to_monitor.aclose()
        await self.to_recorder.aclose()

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
            self.gate.release()
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
            self.gate.release()
        self.processed += 1
        await self.to_recorder.send(step)
        if error is not None:
            raise error

    def status(self) -> dict[str, Any]:
        return {
            "fills": self.fills,
            "trades": self.trades,
            "pending_orders": self.broker.pending_count(),
            "equity": {a.quote: round(a.equity, 8) for a in self.accounts},
        }
