"""Fuzz tests: count the generated cases per test and print them after the run."""

from __future__ import annotations

import time

import pytest

from tests.fuzz.fuzz_count import CASES, current

_cpu: dict[str, float] = {}


@pytest.fixture(autouse=True)
def _count_cases(request: pytest.FixtureRequest):
    current["test"] = request.node.nodeid.split("::", 1)[-1]
    start = time.process_time()
    yield
    _cpu[current["test"]] = _cpu.get(current["test"], 0.0) + time.process_time() - start


def pytest_terminal_summary(terminalreporter) -> None:
    if not CASES:
        return
    terminalreporter.section("fuzz cases (this process's CPU; daemons not included)")
    for name, n in sorted(CASES.items()):
        terminalreporter.write_line(f"{n:>8}  {_cpu.get(name, 0.0):7.1f} s  {name}")
