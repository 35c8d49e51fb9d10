"""One-for-one supervision: restart alone with backoff, degraded pass-through, escalation."""

from __future__ import annotations

import itertools

import trio
import trio.testing

from qtraderd.core.messages import Step
from qtraderd.runtime.supervisor import Actor, StepActor, Supervisor


def step(seq: int) -> Step:
    return Step(seq=seq, ts=seq, close_ts=seq + 1, bars=())


class Flaky(StepActor):
    name = "flaky"

    def __init__(self, inbox, outbox, fail_on: set[int]):
        super().__init__(inbox, outbox)
        self.fail_on = set(fail_on)

    def handle(self, s: Step) -> Step:
        if s.seq in self.fail_on:
            self.fail_on.discard(s.seq)
            raise RuntimeError(f"boom on {s.seq}")
        return s


class Counter(Actor):
    name = "counter"

    def __init__(self, inbox):
        super().__init__()
        self.inbox = inbox
        self.seen: list[tuple[int, tuple[str, ...]]] = []

    async def run(self):
        async for s in self.inbox:
            self.seen.append((s.seq, s.degraded))
            self.processed += 1


def sup(events, intensity=3, period=60.0):
    return Supervisor(intensity=intensity, period_s=period, backoff_s=0.5, backoff_max_s=4,
                      on_event=lambda *e: events.append(e))


async def test_crashing_actor_is_restarted_alone_and_the_step_still_flows(autojump_clock):
    a_tx, a_rx = trio.open_memory_channel(0)
    b_tx, b_rx = trio.open_memory_channel(0)
    flaky, counter = Flaky(a_rx, b_tx, fail_on={2}), Counter(b_rx)
    events: list = []
    s = sup(events)

    async def produce():
        async with a_tx:
            for i in range(1, 5):
                await a_tx.send(step(i))

    async with trio.open_nursery() as n:
        n.start_soon(produce)
        await s.run([flaky, counter])
    assert [seq for seq, _ in counter.seen] == [1, 2, 3, 4]  # nothing lost, order kept
    assert counter.seen[1][1] == ("flaky",)  # step 2 passed on untouched, marked degraded
    assert s.handles["flaky"].restarts == 1 and s.handles["counter"].restarts == 0
    assert s.handles["flaky"].state == "stopped" and s.escalation is None
    assert events == [("flaky", "restarted", "RuntimeError: boom on 2", 1)]
    assert s.status()["flaky"]["restarts"] == 1


async def test_backoff_grows_between_restarts(autojump_clock):
    a_tx, a_rx = trio.open_memory_channel(0)
    b_tx, _b_rx = trio.open_memory_channel(10)
    flaky = Flaky(a_rx, b_tx, fail_on={1, 2, 3})
    s = sup([], intensity=10)
    times = []

    async def produce():
        async with a_tx:
            for i in range(1, 4):
                await a_tx.send(step(i))
                times.append(trio.current_time())

    async with trio.open_nursery() as n:
        n.start_soon(produce)
        n.start_soon(s.run, [flaky])
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps == [0.5, 1.0]  # 0.5 s, then doubled


async def test_too_many_restarts_escalate_and_stop_everything(autojump_clock):
    a_tx, a_rx = trio.open_memory_channel(0)
    b_tx, _b_rx = trio.open_memory_channel(100)
    flaky = Flaky(a_rx, b_tx, fail_on=set(range(1, 100)))
    events: list = []
    s = sup(events, intensity=3, period=60.0)

    async def produce():
        for i in range(1, 100):
            await a_tx.send(step(i))

    async with trio.open_nursery() as n:
        n.start_soon(produce)
        await s.run([flaky])
        n.cancel_scope.cancel()
    assert s.escalation is not None and s.escalation.actor == "flaky"
    assert s.handles["flaky"].state == "failed"
    assert s.handles["flaky"].restarts == 4  # the 4th within the period is one too many
    assert events[-1][1] == "escalated"


async def test_restarts_spread_out_in_time_do_not_escalate(autojump_clock):
    a_tx, a_rx = trio.open_memory_channel(0)
    b_tx, _b_rx = trio.open_memory_channel(100)
    flaky = Flaky(a_rx, b_tx, fail_on=set(range(1, 9)))
    s = sup([], intensity=3, period=10.0)

    async def produce():
        async with a_tx:
            for i in range(1, 9):
                await a_tx.send(step(i))
                await trio.sleep(30)  # one failure every 30 s: never 4 within 10 s

    async with trio.open_nursery() as n:
        n.start_soon(produce)
        await s.run([flaky])
    assert s.escalation is None and s.handles["flaky"].restarts == 8


async def test_cancelled_is_not_treated_as_a_crash(autojump_clock):
    class Sleeper(Actor):
        name = "sleeper"

        async def run(self):
            await trio.sleep_forever()

    s = sup([])
    with trio.move_on_after(5):
        await s.run([Sleeper()])
    assert s.handles["sleeper"].restarts == 0


class NurseryCrash(Actor):
    """Fails inside a nursery of its own, as the recorder and risk actors would: Trio wraps
    the error in an ExceptionGroup."""

    name = "nested"

    def __init__(self):
        super().__init__()
        self.runs = 0

    async def run(self):
        self.runs += 1
        if self.runs > 1:
            return

        async def fail():
            raise WriterLike("store writer failed: err 3 disk I/O error")

        async with trio.open_nursery() as n:
            n.start_soon(fail)


class WriterLike(RuntimeError):
    pass


async def test_restart_lines_name_the_error_inside_an_exception_group(autojump_clock, caplog):
    events: list = []
    s = sup(events)
    await s.run([NurseryCrash()])
    detail = "WriterLike: store writer failed: err 3 disk I/O error"
    assert events == [("nested", "restarted", detail, 1)]
    assert s.handles["nested"].last_error == detail
    assert f"actor restarted: nested after {detail} (restart 1" in caplog.text
    assert "ExceptionGroup" not in s.status()["nested"]["last_error"]


def test_describe_lists_several_leaves():
    from qtraderd.runtime.supervisor import describe

    group = ExceptionGroup("outer", [ValueError("a"), ExceptionGroup("inner", [
        KeyError("b"), TypeError("c"), OSError("d")])])
    assert describe(group) == "ValueError: a; KeyError: 'b'; TypeError: c (and 1 more)"
    assert describe(RuntimeError()) == "RuntimeError"
