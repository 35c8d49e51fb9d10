"""Clocks: replay time moves only with the data; live time is the wall."""

from __future__ import annotations

import time

import pytest
import trio

from qtraderd.core.clock import LiveClock, ReplayClock


async def test_replay_sleep_until_waits_for_data_time():
    clock = ReplayClock(1_000)
    woke = trio.Event()

    async def sleeper():
        await clock.sleep_until(5_000)
        woke.set()

    async with trio.open_nursery() as n:
        n.start_soon(sleeper)
        await trio.testing.wait_all_tasks_blocked()
        clock.advance(4_999)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        clock.advance(5_000)
        await woke.wait()
    assert clock.now_ms() == 5_000


def test_replay_clock_never_goes_back():
    clock = ReplayClock(10)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(9)


async def test_live_clock_sleeps_on_trio_time(autojump_clock):
    clock = LiveClock()
    assert abs(clock.now_ms() - time.time() * 1000) < 1000
    start = trio.current_time()
    await clock.sleep_until(clock.now_ms() + 60_000)
    assert trio.current_time() - start == pytest.approx(60, abs=1)
