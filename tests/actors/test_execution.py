"""ExecutionActor on the async broker: phase B gives client ids and records `new`, phase A
drains the venue's events through the lifecycle table; cancel goes through the broker."""

from __future__ import annotations

import trio

from qtraderd.actors.execution import ExecutionActor
from qtraderd.core.costs import CostModel
from qtraderd.core.messages import Bar, OrderIntent, OrderUpdate, RiskDecision, Step
from qtraderd.venues.paper import PaperBroker

IV = 300_000
T0 = 1_700_000_100_000 - (1_700_000_100_000 % IV)


def actor(run_id: int = 4) -> tuple[ExecutionActor, trio.MemorySendChannel[Step]]:
    broker = PaperBroker({"BTC": 1.0}, CostModel(0.0005, 0.0002, 0.0))
    _bars_tx, bars_rx = trio.open_memory_channel[Step](1)
    mon_tx, _ = trio.open_memory_channel[Step](10)
    back_tx, back_rx = trio.open_memory_channel[Step](10)
    rec_tx, _ = trio.open_memory_channel[list[Step]](10)
    return ExecutionActor(broker, bars_rx, mon_tx, back_rx, rec_tx, run_id=run_id), back_tx


def step(seq: int, price: float, intents=(), decisions=()) -> Step:
    ts = T0 + seq * IV
    return Step(seq, ts, ts + IV, (Bar("ETHBTC", ts, price, price * 1.001, price * 0.999,
                                       price, 1.0),), intents=intents, decisions=decisions)


def entry(seq: int, id: str = "i1") -> tuple[tuple[OrderIntent], tuple[RiskDecision]]:
    it = OrderIntent(id, "ETHBTC", T0 + seq * IV, 1, 2.0, 0.05, "entry", "signal", 0.02, 0.01)
    return (it,), (RiskDecision(id, "ETHBTC", "allow", "OK", 2.0),)


async def test_orders_get_client_ids_and_go_through_the_lifecycle() -> None:
    ex, back = actor()
    await ex.reconcile()
    out = await ex._phase_a(step(1, 0.05))
    assert out.orders == () and [a.quote for a in out.accounts] == ["BTC"]
    intents, decisions = entry(1)
    await back.send(step(1, 0.05, intents, decisions))
    await ex._phase_b()
    (done,) = ex._finished
    (new,) = done.orders
    assert (new.client_id, new.status, new.prev, new.intent_id) == (
        "q4-1-ETHBTC-E", "new", "unknown", "i1")
    assert ex.book.states == {"q4-1-ETHBTC-E": "new"}  # `accepted` arrives as an event
    out = await ex._phase_a(step(2, 0.05))
    assert [(u.client_id, u.prev, u.status) for u in out.orders] == [
        ("q4-1-ETHBTC-E", "new", "accepted"), ("q4-1-ETHBTC-E", "accepted", "filled"),
        ("q4-1-ETHBTC-SL", "unknown", "new"), ("q4-1-ETHBTC-SL", "new", "accepted"),
        ("q4-1-ETHBTC-TP", "unknown", "new"), ("q4-1-ETHBTC-TP", "new", "accepted")]
    assert [f.order_id for f in out.fills] == ["q4-1-ETHBTC-E"]
    assert [p.symbol for p in out.positions] == ["ETHBTC"] and ex.positions["ETHBTC"].qty == 2.0
    assert ex.status()["open_orders"] == 2 and ex.status()["transitions_refused"] == 0

    await ex.cancel("q4-1-ETHBTC-SL")
    await ex.cancel("q4-9-ETHBTC-SL")  # not an open order: nothing is sent
    out = await ex._phase_a(step(3, 0.05))
    assert [(u.client_id, u.status) for u in out.orders] == [("q4-1-ETHBTC-SL", "cancelled")]
    assert out.positions[0].stop_price == 0.0
    assert set(ex.book.states) == {"q4-1-ETHBTC-TP"}


async def test_an_illegal_venue_event_is_refused_and_counted(caplog) -> None:
    ex, _ = actor()
    await ex.reconcile()
    ex.broker._events.append(OrderUpdate("q4-1-ETHBTC-E", "ETHBTC", T0, "filled"))
    out = await ex._phase_a(step(1, 0.05))
    assert out.orders == () and ex.book.refused == 1
    assert "order transition refused: q4-1-ETHBTC-E unknown -> filled" in caplog.text


async def test_two_exits_for_one_symbol_in_a_step_get_distinct_ids() -> None:
    ex, back = actor()
    await ex.reconcile()
    its = tuple(OrderIntent(f"x{i}", "ETHBTC", T0, -1, 2.0, 0.05, "exit", r)
                for i, r in enumerate(("time_stop", "flatten")))
    decs = tuple(RiskDecision(i.id, "ETHBTC", "allow", "OK", 2.0) for i in its)
    await back.send(step(1, 0.05, its, decs))
    await ex._phase_b()
    assert [u.client_id for u in ex._finished[0].orders] == ["q4-1-ETHBTC-X",
                                                             "q4-1-ETHBTC-X2"]


async def test_a_live_step_too_old_sends_nothing() -> None:
    """Live (stale_after_ms): a catch-up step — maybe one handled before a crash while the
    exchange moved on — sends no order and moves no stop; a step in time does."""
    now = [0]
    broker = PaperBroker({"BTC": 1.0}, CostModel(0.0005, 0.0002, 0.0))
    _bars_tx, bars_rx = trio.open_memory_channel[Step](1)
    mon_tx, _ = trio.open_memory_channel[Step](10)
    back_tx, back_rx = trio.open_memory_channel[Step](10)
    rec_tx, _ = trio.open_memory_channel[list[Step]](10)
    ex = ExecutionActor(broker, bars_rx, mon_tx, back_rx, rec_tx, run_id=4,
                        stale_after_ms=60_000, now_ms=lambda: now[0])
    await ex.reconcile()
    intents, decisions = entry(1)
    old = step(1, 0.05, intents, decisions)
    now[0] = old.close_ts + 61_000
    await back_tx.send(old)
    await ex._phase_b()
    assert ex.book.states == {} and ex._finished[-1].orders == () and ex.stale_steps == 1
    fresh = step(2, 0.05, *entry(2))
    now[0] = fresh.close_ts + 1_000
    await back_tx.send(fresh)
    await ex._phase_b()
    assert ex.book.states == {"q4-2-ETHBTC-E": "new"} and ex.stale_steps == 1
