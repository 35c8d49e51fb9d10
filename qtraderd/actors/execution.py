"""Execution actor: the broker's two moments in every bar.

Phase A (step arrives from the feed): the broker sees the step's bars (paper: orders
accepted on the previous bar fill at this bar's open and resting protective orders
trigger inside its range), then its queued events are drained and applied — lifecycle
moves through the one transition table (core.orders), fills, closed trades, position and
account updates — and the step leaves with the fills, closed trades, positions and
account equity for everyone downstream.
Phase B (the same step comes back from risk): send the monitor's amendments, give every
order risk allowed its deterministic client id, record it in the step as `new` (the
recorder stores it), then await `broker.submit`; hand the finished step on to the recorder.

The actor alternates strictly A(t), B(t), A(t+1): two inboxes, but never a race between
them, and this alternation is what keeps the whole chain in lockstep. Taking step t is
also when the replay clock moves to t's close (the venue is where time happens). Before
the first step the broker reconciles (`saved`: the broker state of the last checkpoint,
or None). Finished steps go to the recorder in lists: one at a time when the feed has
nothing waiting (live), up to RECORD_BATCH when the next bar is already queued (replay at
full speed), which saves a task switch per step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from qtraderd.core.checkpoint import EVERY_STEPS
from qtraderd.core.clock import ReplayClock
from qtraderd.core.enums import OrderStatus
from qtraderd.core.messages import (
    AccountView,
    Command,
    Fill,
    Journal,
    OrderUpdate,
    PositionView,
    Step,
    Trade,
    replace,
)
from qtraderd.core.orders import OrderBook, client_order_id
from qtraderd.runtime.supervisor import Actor, answer, degrade, pass_on
from qtraderd.store.rows import journal_records
from qtraderd.venues.base import Broker, Order

log = logging.getLogger("qtraderd.execution")


class _Stale(Exception):
    """A live step too old to act on (ExecutionActor._stale): phase B sends nothing."""

RECORD_BATCH = 64
CHECKPOINT_S = 1.0  # a replay checkpoints at least this often (wall time)


class ExecutionActor(Actor):
    name = "execution"

    def __init__(self, broker: Broker, bars_in: trio.MemoryReceiveChannel[Step],
                 to_monitor: trio.MemorySendChannel[Step],
                 decided_in: trio.MemoryReceiveChannel[Step],
                 to_recorder: trio.MemorySendChannel[list[Step] | Journal],
                 clock: ReplayClock | None = None, run_id: int = 0,
                 saved: dict[str, Any] | None = None,
                 checkpoint_steps: int = EVERY_STEPS,
                 journal: tuple[tuple[str, str], ...] = (),
                 commands: trio.MemoryReceiveChannel[Command] | None = None,
                 stale_after_ms: int | None = None,
                 now_ms: Callable[[], int] | None = None) -> None:
        """`stale_after_ms` with `now_ms` (live): a step whose bar closed longer ago — a
        catch-up step after a start or an outage, maybe one the daemon had handled before
        a crash, when the exchange has moved on since — sends nothing: no order, no stop
        moved. Its deterministic client ids could meet orders the earlier pass sent for
        positions that are gone; reconcile has already made the exchange's state ours,
        and the next step in time decides on it."""
        super().__init__()
        self.stale_after_ms = stale_after_ms
        self._now_ms = now_ms
        self.stale_steps = 0
        self.commands = commands  # `ctl reconcile`
        self.checkpoint_steps = checkpoint_steps
        self.broker = broker
        self.bars_in = bars_in
        self.to_monitor = to_monitor
        self.decided_in = decided_in
        self.to_recorder = to_recorder
        self.clock = clock
        self.run_id = run_id
        self.saved = saved  # broker state to reconcile against before the first step
        self.reconciled = False
        self.book = OrderBook()
        self.positions: dict[str, PositionView] = {}  # as the venue last reported them
        self._accounts: dict[str, AccountView] = {}
        self._finished: list[Step] = []
        self.last_done: float | None = None  # perf_counter when the last step finished
        self.last_done_cpu: float | None = None  # process_time when the bars ran out
        self._awaiting_b = False
        self.fills = 0
        self.trades = 0
        self.accounts: tuple[AccountView, ...] = ()
        self._last: Step | None = None
        self._since_checkpoint = 0
        self._checkpoint_at = time.perf_counter()
        self._state_seq = -1  # seq of the last step whose actors' state was collected
        # A live venue: an order's row is committed before its request leaves (Journal)
        self.journal_first = bool(getattr(broker, "journal_first", False))
        self.journaled = 0
        self.journal = journal  # (client id, symbol) SQLite holds as sent, not finished
        self._alerts: list[str] | None = getattr(broker, "alerts", None)
        self._pump = getattr(broker, "run", None)  # a live broker's user-stream task

    async def reconcile(self) -> None:
        if self.journal_first:  # a live venue also looks up what SQLite journaled
            await self.broker.reconcile(self.saved, self.journal,  # type: ignore[call-arg]
                                        self.run_id)
            # the book as it was saved, and the journaled orders: what reconcile found
            # (fills, expiries, stops placed again) arrives as moves in the first step
            self.book.restore((self.saved or {}).get("orders", {}).items())
            for cid, _symbol in self.journal:
                self.book.states.setdefault(cid, OrderStatus.NEW)
        else:
            await self.broker.reconcile(self.saved)
            self.book.restore(self.broker.open_orders())
        self.reconciled = True
        log.info("broker reconciled: %s, %d open orders",
                 "restored from saved state" if self.saved else "fresh account",
                 len(self.book.states))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self._pump is not None:  # the live broker's event pump
                await nursery.start(self._pump)
            if self.commands is not None:
                nursery.start_soon(self._command_loop)
            await self._run()
            nursery.cancel_scope.cancel()

    async def _command_loop(self) -> None:
        assert self.commands is not None
        async for cmd in self.commands:
            now = getattr(self.broker, "reconcile_now", None)
            if cmd.name != "reconcile":
                answer(cmd, {"error": f"execution has no command {cmd.name!r}"})
            elif now is None:
                answer(cmd, {"error": "reconcile is for a live venue: the paper broker is "
                                      "its own record"})
            else:
                try:
                    found = await now()
                except Exception as exc:  # the exchange did not answer: say so
                    answer(cmd, {"error": f"reconcile failed: {exc}"})
                else:
                    answer(cmd, {"differences": found, "positions": len(self.positions)})

    async def _run(self) -> None:
        if not self.reconciled:
            await self.reconcile()
        if self._awaiting_b:  # restarted between the two phases of a step
            await self._phase_b()
        async for step in self.bars_in:
            if self.clock is not None:
                self.clock.advance(step.close_ts)
            due = self._checkpoint_due()
            error: Exception | None = None
            try:
                out = await self._phase_a(step)
            except Exception as exc:
                error, out = exc, degrade(step, self.name)
            self._awaiting_b = True
            self._last = step
            await pass_on(self.to_monitor, out)
            await self._phase_b()
            if due:
                await self._collect_state(step)
            await self._hand_over()
            if error is not None:
                raise error
        self.last_done_cpu = time.process_time()  # once: the clock read is a system call
        if self._last is not None and (self._state_seq != self._last.seq
                                       or self.journal_first):
            # The feed ended (data end or stop): the actors' final state, so the recorder
            # can commit the last steps as a whole. A live broker's state moves between
            # steps too (fills, stops triggered on the exchange): always the latest, and
            # what it reported since the last step is recorded with it.
            await self._collect_state(self._last, final=self.journal_first)
        await self.to_monitor.aclose()
        await self._hand_over(force=True)
        await self.to_recorder.aclose()

    def _checkpoint_due(self) -> bool:
        """Whether the step being taken ends with a checkpoint: live, and whenever no next
        bar is waiting (a paced or finished replay), every step; at full replay speed every
        `checkpoint_steps` or CHECKPOINT_S seconds. Where one falls changes nothing but
        what a restart redoes."""
        self._since_checkpoint += 1
        now = time.perf_counter()
        stats = self.bars_in.statistics()
        if (self.clock is None or self._since_checkpoint >= self.checkpoint_steps
                or not (stats.current_buffer_used or stats.tasks_waiting_send)
                or now - self._checkpoint_at >= CHECKPOINT_S):
            self._since_checkpoint, self._checkpoint_at = 0, now
            return True
        return False

    async def _collect_state(self, step: Step, final: bool = False) -> None:
        """Send a bar-less step (`seal`) down the chain behind `step`: every actor appends
        its state, which is still its state after `step` (nothing else reaches it in
        between), and the recorder commits `step` and that state in one transaction. The
        state rides in a step of its own so that packing it (milliseconds for the
        predictor's features and records) comes after the decision, not before it."""
        seal = Step(seq=step.seq, ts=step.ts, close_ts=step.close_ts, bars=(),
                    checkpoint=True, seal=True)
        if final:  # a live venue's events since the last step: orders, fills, trades
            settle = getattr(self.broker, "settle", None)
            if settle is not None:  # and the exchange reconciled before stopping
                await settle()
            got = await self._phase_a(seal)
            seal = replace(seal, orders=got.orders, fills=got.fills, closed=got.closed)
        self._awaiting_b = True
        await pass_on(self.to_monitor, seal)
        await self._phase_b()
        self._state_seq = step.seq

    # -- crash-only state ----------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        return {"broker": self.broker.export_state(), "fills": self.fills,
                "trades": self.trades, "accounts": self.accounts}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Before the first step: the broker reconciles from the saved account (paper) —
        a live venue compares it with the exchange — when the actor starts."""
        self.saved = state["broker"]
        self.fills, self.trades = state["fills"], state["trades"]
        self.accounts = state["accounts"]

    async def _hand_over(self, force: bool = False) -> None:
        if not self._finished:
            return
        stats = self.bars_in.statistics()
        next_waiting = stats.current_buffer_used or stats.tasks_waiting_send
        if force or not next_waiting or len(self._finished) >= RECORD_BATCH:
            batch, self._finished = self._finished, []
            await self.to_recorder.send(batch)

    async def _phase_a(self, step: Step) -> Step:
        await self.broker.on_bars(step.bars)
        fills: list[Fill] = []
        closed: list[Trade] = []
        moves: list[OrderUpdate] = []
        for ev in self.broker.drain():
            if type(ev) is OrderUpdate:
                moved = self._move(ev)
                if moved is not None:
                    moves.append(moved)
            elif type(ev) is Fill:
                fills.append(ev)
            elif type(ev) is Trade:
                closed.append(ev)
            elif type(ev) is PositionView:
                if ev.qty == 0.0:
                    self.positions.pop(ev.symbol, None)
                else:
                    self.positions[ev.symbol] = ev
            elif type(ev) is AccountView:
                self._accounts[ev.quote] = ev
            else:
                log.warning("unknown venue event ignored: %r", ev)
        positions = tuple(v for _, v in sorted(self.positions.items()))
        self.accounts = tuple(v for _, v in sorted(self._accounts.items()))
        self.fills += len(fills)
        self.trades += len(closed)
        alerts: tuple[str, ...] = ()
        if self._alerts is not None and self._alerts:  # a live broker's reconcile findings
            alerts = tuple(self._alerts)
            self._alerts.clear()
        return replace(step, fills=tuple(fills), closed=tuple(closed), positions=positions,
                       accounts=self.accounts, orders=tuple(moves), venue_alerts=alerts)

    def _move(self, ev: OrderUpdate) -> OrderUpdate | None:
        """Apply one lifecycle event; refused or repeated moves are left out of the step."""
        prev = self.book.apply(ev.client_id, OrderStatus(ev.status))
        return None if prev is None else replace(ev, prev=str(prev))

    def _orders(self, step: Step) -> list[tuple[str, Order]]:
        """(intent id, order) for what risk allowed, with the orders' client ids."""
        allowed = {d.intent_id: d for d in step.decisions if d.action != "deny"}
        used: set[str] = set()
        out = []
        for it in step.intents:
            d = allowed.get(it.id)
            if d is None or d.qty <= 0:
                continue
            cid = self._client_id(step.seq, it.symbol, it.purpose, used)
            sl = tp = ""
            if it.purpose == "entry":
                sl = self._client_id(step.seq, it.symbol, "stop_loss", used)
                tp = self._client_id(step.seq, it.symbol, "take_profit", used)
            out.append((it.id, Order(cid, it.symbol, it.side, d.qty, it.purpose, it.reason,
                                     it.ts, it.tp_pct, it.sl_pct, it.leverage, tp, sl,
                                     it.ref_price)))
        return out

    def _client_id(self, seq: int, symbol: str, purpose: str, used: set[str]) -> str:
        n = 1
        while (cid := client_order_id(self.run_id, seq, symbol, purpose, n)) in used:
            n += 1
        used.add(cid)
        return cid

    async def _phase_b(self) -> None:
        try:
            step = await self.decided_in.receive()
        except trio.EndOfChannel:
            self._awaiting_b = False
            return
        error: Exception | None = None
        if step.seal:
            self._awaiting_b = False
            self._finished.append(self.with_state(step))
            return
        try:
            if self._stale(step):  # nothing is sent on it (see __init__)
                raise _Stale
            for a in step.amends:
                await self.broker.amend(a, step.seq)
            orders = self._orders(step)
            new = []
            for intent_id, o in orders:
                self.book.apply(o.client_id, OrderStatus.NEW)
                new.append(OrderUpdate(o.client_id, o.symbol, step.ts, OrderStatus.NEW,
                                       "decided", prev="unknown", intent_id=intent_id))
            if new:
                step = replace(step, orders=(*step.orders, *new))
                if self.journal_first:
                    await self._journal(step)
            for _, o in orders:
                await self.broker.submit(o)
        except _Stale:
            pass
        except Exception as exc:
            error, step = exc, degrade(step, self.name)
        finally:
            self._awaiting_b = False
        self.processed += 1
        self.last_done = time.perf_counter()
        self._finished.append(self.with_state(step))
        if error is not None:
            raise error

    def _stale(self, step: Step) -> bool:
        if self.stale_after_ms is None or self._now_ms is None:
            return False
        age = self._now_ms() - step.close_ts
        if age <= self.stale_after_ms:
            return False
        self.stale_steps += 1
        if step.intents or step.amends:
            log.info("stale step %d (bar closed %.0f s ago): no orders, no stop moves",
                     step.seq, age / 1000)
        return True

    async def _journal(self, step: Step) -> None:
        """Commit the orders' rows (client id, status `new`) before any request leaves:
        the recorder answers once they are in SQLite. A crash after this point finds the
        ids at start and looks each order up on the exchange instead of sending it."""
        reply_tx, reply_rx = trio.open_memory_channel[int](1)
        await self.to_recorder.send(Journal(journal_records(self.run_id, step), reply_tx))
        async with reply_rx:
            await reply_rx.receive()
        self.journaled += 1

    async def cancel(self, client_id: str) -> None:
        """Ask the venue to cancel an open order; the outcome arrives as an event."""
        if client_id not in self.book.states:
            log.info("cancel ignored: %s is not an open order", client_id)
            return
        await self.broker.cancel(client_id)

    def status(self) -> dict[str, Any]:
        return {
            "fills": self.fills,
            "trades": self.trades,
            **self.book.status(),
            "equity": {a.quote: round(a.equity, 8) for a in self.accounts},
        }

    def publish(self) -> dict[str, Any]:
        """Adds the broker's open positions (frozen views, marked at the last bar) and the
        accounts as of the last bar."""
        positions = tuple(v for _, v in sorted(self.positions.items()))
        return {**self.status(), "positions": positions, "accounts": self.accounts}
