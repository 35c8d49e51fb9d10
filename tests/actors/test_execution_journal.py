"""A live venue's orders are in SQLite before their request leaves: the execution actor
journals each order's row through the real recorder and store writer process and waits
for the commit; a paper broker (no journal) submits at once as before."""

from __future__ import annotations

import sqlite3
from typing import Any

import trio

from qtraderd.actors.execution import ExecutionActor
from qtraderd.actors.recorder import RecorderActor
from qtraderd.core.costs import CostModel
from qtraderd.core.messages import Fill
from qtraderd.venues.base import Order
from qtraderd.venues.paper import PaperBroker
from tests.actors.test_execution import entry, step
from tests.actors.test_recorder import new_run


class JournalFirstBroker(PaperBroker):
    """A paper broker that says it needs journaled orders, and looks at SQLite (another
    connection, as an operator would after a crash) at the moment it would send."""

    journal_first = True

    def __init__(self, db: Any) -> None:
        super().__init__({"BTC": 1.0}, CostModel(0.0005, 0.0002, 0.0))
        self.db = db
        self.seen: list[tuple[str, Any]] = []

    async def reconcile(self, saved: Any, journal: Any = (), run_id: Any = None
                        ) -> None:  # a live broker's
        await super().reconcile(saved)

    async def submit(self, order: Order) -> None:
        conn = sqlite3.connect(self.db)
        try:
            row = conn.execute("SELECT status, symbol, seq FROM orders WHERE client_id=?",
                               (order.client_id,)).fetchone()
        finally:
            conn.close()
        self.seen.append((order.client_id, row))
        await super().submit(order)


async def _run(tmp_path, broker) -> ExecutionActor:
    run_id = new_run(tmp_path)
    steps_tx, steps_rx = trio.open_memory_channel(8)
    _rec_tx, rec_rx = trio.open_memory_channel(8)
    rec = RecorderActor(tmp_path, run_id, steps_rx, rec_rx, flush_rows=10_000,
                        flush_ms=60_000)  # nothing would be written for a minute unasked
    _bars_tx, bars_rx = trio.open_memory_channel(1)
    mon_tx, _mon_rx = trio.open_memory_channel(10)
    back_tx, back_rx = trio.open_memory_channel(10)
    ex = ExecutionActor(broker, bars_rx, mon_tx, back_rx, steps_tx, run_id=run_id)
    async with trio.open_nursery() as n:
        n.start_soon(rec.run)
        await ex.reconcile()
        await ex._phase_a(step(1, 0.05))
        intents, decisions = entry(1)
        await back_tx.send(step(1, 0.05, intents, decisions))
        with trio.fail_after(30):
            await ex._phase_b()
        await steps_tx.aclose()
    return ex


async def test_a_live_order_is_committed_before_it_is_sent(tmp_path) -> None:
    broker = JournalFirstBroker(tmp_path / "qtraderd.db")
    ex = await _run(tmp_path, broker)
    assert broker.seen == [(f"q{ex.run_id}-1-ETHBTC-E", ("new", "ETHBTC", 1))]
    assert ex.journaled == 1


async def test_a_paper_order_is_not_journaled(tmp_path) -> None:
    broker = JournalFirstBroker(tmp_path / "qtraderd.db")
    broker.journal_first = False  # as PaperBroker: the step's own commit records it
    ex = await _run(tmp_path, broker)
    assert broker.seen == [(f"q{ex.run_id}-1-ETHBTC-E", None)]
    assert ex.journaled == 0


class SettlingBroker(JournalFirstBroker):
    """A live-like broker whose final reconcile finds a fill the stream had not delivered."""

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.settled = 0

    async def settle(self) -> None:
        self.settled += 1
        self._events.append(Fill("q-late", "ETHBTC", 0, -1, 2.0, 0.05, 0.0, "taker",
                                 "stop_loss"))


async def test_the_final_state_comes_after_a_last_reconcile(tmp_path) -> None:
    """Stopping, a live venue settles with the exchange first (a position left without
    its stop between an entry's fill and its protection gets one), and what that finds is
    recorded with the final state."""
    broker = SettlingBroker(tmp_path / "qtraderd.db")
    run_id = new_run(tmp_path)
    _bars_tx, bars_rx = trio.open_memory_channel(1)
    mon_tx, mon_rx = trio.open_memory_channel(10)
    back_tx, back_rx = trio.open_memory_channel(10)
    rec_tx, _rec_rx = trio.open_memory_channel(10)
    ex = ExecutionActor(broker, bars_rx, mon_tx, back_rx, rec_tx, run_id=run_id)
    await ex.reconcile()
    last = step(1, 0.05)
    await ex._phase_a(last)
    await back_tx.send(last)
    await ex._phase_b()
    assert broker.settled == 0  # not on a step: only when stopping
    await back_tx.send(last)  # the seal comes back from risk like a step
    with trio.fail_after(10):
        await ex._collect_state(last, final=True)
    seal = mon_rx.receive_nowait()
    while not seal.seal:
        seal = mon_rx.receive_nowait()
    assert broker.settled == 1
    assert [f.order_id for f in seal.fills] == ["q-late"]
