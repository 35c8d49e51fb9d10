"""Fault injection: what can go wrong between a client and Binance, on purpose and seeded.

A spec is `name=probability[:duration]` items joined by commas, e.g.
`drop=0.01,stall=0.005:10s,garbage=0.01,dup=0.01,reorder=0.01,http429=0.02,http418=0.001,
http5xx=0.02,slow=0.05:2s`. Probabilities apply per stream frame (drop, stall, garbage,
dup, reorder), per REST request (http429, http418, http5xx, slow) or per user data event
on a private stream (user_dup, user_delay, key_expiry, user_drop), or per accepted order
placement (lost_reply, order_5xx: `POST /fapi/v1/order` and `/fapi/v1/algoOrder` execute,
then the reply is lost or is a 503; the client cannot know the outcome). Durations are wall
seconds (`10s`, `500ms`, `2` = seconds). One seeded random generator decides every fault,
so a test with a fixed seed and a fixed order of work sees the same faults each run.
`counts` records how many of each were injected, for tests and the log.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

FRAME_FAULTS = ("drop", "stall", "garbage", "dup", "reorder")
REQUEST_FAULTS = ("http418", "http429", "http5xx", "slow")
# Per user data event, on each private stream connection (userstream.py): sent twice,
# held back `duration` (later events overtake it), the listenKey expires (listenKeyExpired
# is sent and the key dropped; the event is lost), the connection is cut without a close.
USER_FAULTS = ("user_dup", "user_delay", "key_expiry", "user_drop")
# Per accepted order placement (orders.py, algo.py): the order is booked (and its user
# events published), then the connection is closed with no answer, or answered 503.
TRADING_FAULTS = ("lost_reply", "order_5xx")
KNOWN_FAULTS = FRAME_FAULTS + REQUEST_FAULTS + USER_FAULTS + TRADING_FAULTS
# Duration (wall seconds) a fault lasts when the spec gives none: a stall's silence, a
# 429's Retry-After, a 418's ban, a slow response's delay.
DEFAULT_DURATION = {"stall": 10.0, "http429": 1.0, "http418": 5.0, "slow": 2.0,
                    "user_delay": 1.0}
_DURATION_RE = re.compile(r"^(?P<n>\d+(?:\.\d+)?|\.\d+)(?P<unit>ms|s|m)?$")


class FaultSpecError(ValueError):
    """A bad --faults spec; the message names the item."""


@dataclass(frozen=True)
class Fault:
    probability: float
    duration_s: float = 0.0


@dataclass
class FaultSpec:
    faults: dict[str, Fault] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        out: dict[str, Fault] = {}
        for item in (p.strip() for p in text.split(",")):
            if not item:
                continue
            name, eq, value = item.partition("=")
            name = name.strip()
            if name not in KNOWN_FAULTS:
                raise FaultSpecError(
                    f"--faults: unknown fault {name!r} in {item!r} (known: "
                    f"{', '.join(KNOWN_FAULTS)})")
            prob_text, colon, dur_text = value.partition(":")
            try:
                prob = float(prob_text)
            except ValueError:
                prob = float("nan")
            if not eq or not 0.0 <= prob <= 1.0:
                raise FaultSpecError(f"--faults: {item!r}: expected {name}=PROBABILITY "
                                     f"(0..1)[:DURATION]")
            duration = DEFAULT_DURATION.get(name, 0.0)
            if colon:
                duration = _duration(item, dur_text.strip())
            out[name] = Fault(prob, duration)
        return cls(out)

    def __str__(self) -> str:
        return ",".join(f"{k}={f.probability:g}" + (f":{f.duration_s:g}s" if f.duration_s
                                                    else "")
                        for k, f in self.faults.items()) or "none"


def _duration(item: str, text: str) -> float:
    m = _DURATION_RE.match(text)
    if not m:
        raise FaultSpecError(f"--faults: {item!r}: bad duration {text!r} (e.g. 10s, 500ms)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m["unit"]]
    return float(m["n"]) * scale


class Faults:
    """The faults in force, changeable while the simulator runs (`set`)."""

    def __init__(self, spec: FaultSpec | str | None = None, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.spec = FaultSpec()
        self.counts: Counter[str] = Counter()
        self.set(spec)

    def set(self, spec: FaultSpec | str | None) -> None:
        if isinstance(spec, str):
            spec = FaultSpec.parse(spec)
        self.spec = spec or FaultSpec()

    def roll(self, name: str, count: bool = True) -> Fault | None:
        """The fault if it strikes now (counted unless told not to), else None."""
        f = self.spec.faults.get(name)
        if f is None or f.probability <= 0.0:
            return None
        if f.probability >= 1.0 or self.rng.random() < f.probability:
            if count:
                self.note(name)
            return f
        return None

    def note(self, name: str) -> None:
        """Count an injected fault (for one that strikes only if a condition holds)."""
        self.counts[name] += 1

    def choice(self, options: list[int]) -> int:
        return self.rng.choice(options)
