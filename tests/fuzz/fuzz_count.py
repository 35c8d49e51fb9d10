"""How many generated cases each fuzz test ran (printed at the end of the session), so
`make fuzz` can show its counts: the tests call `tally()` once per case."""

from __future__ import annotations

from collections import Counter

CASES: Counter[str] = Counter()
current = {"test": ""}


def tally() -> None:
    CASES[current["test"]] += 1
