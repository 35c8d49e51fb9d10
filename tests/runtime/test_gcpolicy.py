"""The run's garbage-collector settings: larger, rarer young-generation passes while the
chain runs, and everything as it was afterwards."""

from __future__ import annotations

import gc

from qtraderd.runtime.gcpolicy import steady_gc


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_steady_gc_freezes_start_up_objects_and_restores_the_settings():
    before = gc.get_threshold()
    with steady_gc(gen0=5_000):
        assert gc.get_threshold() == (5_000, before[1], before[2])
        assert gc.get_freeze_count() > 0  # start-up objects are out of the collector's view
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cycles_made_during_the_run_are_still_collected():
    collected = []

    def count(phase: str, info: dict) -> None:
        if phase == "stop":
            collected.append(info["collected"])

    gc.callbacks.append(count)
    try:
        with steady_gc(gen0=1_000):
            for _ in range(20_000):
                _Node()
            assert sum(collected) >= 10_000  # passes ran on their own and freed the cycles
    finally:
        gc.callbacks.remove(count)
