"""The plugin API, version 1: what a plugin declares, what its hooks receive and return.

A plugin is one `.py` file in the plugins directory (plugins/README.md is the reference
manual). It declares, at module level:

    PLUGIN_API = 1            # or API_VERSION = 1: the API version it was written for
    NAME = "my_filter"        # lower-case identifier, unique among loaded plugins
    VERSION = "1.0"           # the plugin's own version (free text)

and one or more hooks, as module functions or as methods of a class named `Plugin`
(instantiated once per load as `Plugin(settings)`):

    filter_signal(signal: SignalView) -> Verdict | None         (sizer, every entry signal)
    check_order(order: OrderView, account: AccountState) -> RiskVerdict | None   (risk)
    notify(event: Event) -> None   (sync: run in a worker thread; or `async def`)

plus, optionally, `setup(settings: dict) -> None` (module form; called once per load with
the plugin's `[plugins.settings.NAME]` table) and `teardown() -> None` (called when the
plugin is replaced, removed or disabled).

Why these shapes:
* Hooks receive frozen, read-only views built for them, never the daemon's messages or
  actors, so a plugin cannot change state it does not own and the API stays stable when
  the internals change.
* Filters and risk rules are plain synchronous functions: the bar chain waits for each
  answer (in the plugin's own thread, under a deadline: qtraderd.plugins.isolation), in
  a fixed order (by NAME), so a replay stays deterministic.
  They can only *restrict*: a filter keeps, vetoes or scales an entry by a factor in
  [0, 1]; a risk rule allows or denies. The built-in risk limits still apply after them.
* Notifiers see events after the fact, from a bounded queue drained by their own task,
  so a slow webhook never delays a bar.

Version policy: `API_VERSION` changes only when an existing hook's arguments or results
change incompatibly; new optional hooks or new view fields do not change it. The host
refuses a plugin whose declared version it does not support (see SUPPORTED_API_VERSIONS).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

API_VERSION = 1
SUPPORTED_API_VERSIONS = frozenset({1})

# hook name -> number of positional arguments it is called with
HOOKS: dict[str, int] = {"filter_signal": 1, "check_order": 2, "notify": 1}
CHAIN_HOOKS = ("filter_signal", "check_order")  # must be synchronous

EVENT_KINDS = ("trade_opened", "trade_closed", "model_deployed", "model_rolled_back",
               "risk_state", "symbol_state")

_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _check_code(code: str) -> str:
    if not isinstance(code, str) or not _CODE.match(code):
        raise ValueError(f"reason code must be 1-64 characters of A-Z a-z 0-9 _ . -, "
                         f"got {code!r}")
    return code


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Verdict:
    """A signal filter's answer. Build it with keep(), veto() or scale()."""

    factor: float  # 1 keep, 0 veto, in between: scale the entry's size
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RiskVerdict:
    """A risk rule's answer. Build it with allow() or deny()."""

    allowed: bool
    code: str = ""


KEEP = Verdict(1.0)
ALLOW = RiskVerdict(True)


def keep() -> Verdict:
    """Let the signal through unchanged (returning None means the same)."""
    return KEEP


def veto(reason: str) -> Verdict:
    """Drop the entry; recorded as signal action "veto", reason "plugin:<NAME>:<reason>"."""
    return Verdict(0.0, _check_code(reason))


def scale(factor: float, reason: str = "scaled") -> Verdict:
    """Shrink the entry to `factor` (0 < factor <= 1) of its size. Never enlarges."""
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not (
            0.0 <= factor <= 1.0):
        raise ValueError(f"scale factor must be a number in [0, 1], got {factor!r}")
    return Verdict(float(factor), _check_code(reason))


def allow() -> RiskVerdict:
    """No objection (returning None means the same); the built-in limits still apply."""
    return ALLOW


def deny(code: str) -> RiskVerdict:
    """Refuse the order; recorded as risk action "deny", reason "plugin:<NAME>:<code>"."""
    return RiskVerdict(False, _check_code(code))


# ------------------------------------------------------------------------------ views


@dataclass(frozen=True, slots=True)
class SignalView:
    """An entry the sizer is about to make (it passed confidence and the cost check)."""

    symbol: str
    ts: int  # open time of the decision bar, epoch ms (data time in a replay)
    side: int  # +1 long, -1 short
    confidence: float  # ensemble probability of `side`
    edge: float  # expected net return per unit notional after costs
    p_long: float  # ensemble probabilities
    p_short: float
    models: Mapping[str, tuple[float, float]]  # serving model -> (p_long, p_short)
    regime: str  # the symbol's regime: trend_up, trend_down, range, high_vol
    global_regime: str
    bars_in_regime: int  # bars the symbol has been in `regime` (1: it just changed)
    price: float  # last close; the order fills at the next bar's open
    features: Mapping[str, float]  # the bar's feature row by name (qtraderd.features.spec)


@dataclass(frozen=True, slots=True)
class Position:
    symbol: str
    quote: str
    side: int
    qty: float
    entry_price: float
    mark_price: float
    unrealized: float
    bars_held: int


@dataclass(frozen=True, slots=True)
class OrderView:
    """An entry order that passed every built-in risk limit (exits never reach rules)."""

    id: str
    symbol: str
    ts: int  # decision bar
    side: int
    qty: float  # quantity risk would approve (after its reductions)
    requested_qty: float  # what the sizer asked for
    price: float  # reference price (last close)
    notional: float  # qty * price, in the quote currency
    leverage: float
    tp_pct: float  # take-profit / stop-loss distances, fractions of the fill price
    sl_pct: float
    reason: str  # why the order exists ("signal")


@dataclass(frozen=True, slots=True)
class AccountState:
    """The order's quote-currency account and the daemon's risk view, at the decision."""

    quote: str
    equity: float
    balance: float
    exposure: float  # open notional at mark
    margin_used: float
    open_positions: int  # across all symbols
    positions: tuple[Position, ...]
    risk_state: str  # ACTIVE or REDUCING (HALTED never reaches rules)
    entries_today: int  # entries approved today (UTC day of the clock) for this symbol
    entries_today_total: int  # ... for every symbol


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened; notifiers get it after the fact."""

    kind: str  # one of EVENT_KINDS
    ts: int  # clock time, epoch ms (data time in a replay)
    data: Mapping[str, Any]  # JSON-ready values; see plugins/README.md per kind

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {"event", "ts", "time", "data"}."""
        return {"event": self.kind, "ts": self.ts,
                "time": datetime.fromtimestamp(self.ts / 1000, UTC).isoformat(
                    timespec="seconds").replace("+00:00", "Z"),
                "data": dict(self.data)}


# ------------------------------------------------------------------- hook signatures


class SignalFilter(Protocol):
    def __call__(self, signal: SignalView, /) -> Verdict | None: ...


class RiskRule(Protocol):
    def __call__(self, order: OrderView, account: AccountState, /) -> RiskVerdict | None: ...


class Notifier(Protocol):
    def __call__(self, event: Event, /) -> Awaitable[None] | None: ...


__all__ = [
    "API_VERSION",
    "EVENT_KINDS",
    "AccountState",
    "Event",
    "Notifier",
    "OrderView",
    "Position",
    "RiskRule",
    "RiskVerdict",
    "SignalFilter",
    "SignalView",
    "Verdict",
    "allow",
    "deny",
    "keep",
    "scale",
    "veto",
]
