"""The small closed vocabularies that cross module boundaries: side, order status, risk state.

Each is a subclass of the plain type it replaces (int, str), so values stored before the
enums existed — sides as +1/-1, risk states and statuses as strings — compare equal, bind
to SQLite unchanged and encode the same in msgpack and JSON.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Side(IntEnum):
    """+1 long / buy, -1 short / sell: PnL is `side * qty * (exit - entry)`."""

    LONG = 1
    SHORT = -1

    @property
    def venue(self) -> str:
        """The side as an exchange order field ("BUY" / "SELL")."""
        return "BUY" if self is Side.LONG else "SELL"


class OrderStatus(StrEnum):
    """An order's place in its lifecycle (the legal moves are in core.orders)."""

    NEW = "new"  # created here, not yet acknowledged by the venue
    ACCEPTED = "accepted"  # the venue holds it (Binance: NEW)
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # refused by the venue when placed
    EXPIRED = "expired"  # accepted but could not execute (e.g. its position is gone)

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED,
                      OrderStatus.EXPIRED})


class RiskState(StrEnum):
    """The risk actor's state; stored in `equity.risk_state` and `risk_events` as is."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"
