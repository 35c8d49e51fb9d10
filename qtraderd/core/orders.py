"""The order lifecycle: one transition table, one place that applies it, and client ids.

Every order — an entry, an exit, a resting stop or take-profit — moves through
`TRANSITIONS`. A move the table does not list is refused: logged once as
`order transition refused: ID FROM -> TO`, counted, and never applied, so a late or
duplicated venue event (a fill reported after a cancel, an event for an order we never
placed) cannot corrupt the book. A repeat of the state an order is already in (Binance
sends two NEW updates for some trailing stops) is idempotent: ignored, not an error.

`new -> filled` and `new -> partially_filled` are legal: a venue may report a fill before
its acknowledgement is processed (Binance acks no longer carry fills; the fill arrives on
the user stream and may overtake the reply).

Client order ids are deterministic — `q{run}-{seq}-{symbol}-{purpose}` from the run id,
the step sequence that decided the order, the symbol and the purpose — so a replay gives
the same ids, a restarted run (same run id, step seq continuing) never reuses one, and
after a lost reply the order can be looked up by the id we already know. They are checked
against Binance's `newClientOrderId` rule (`^[\\.A-Z\\:/a-z0-9_-]{1,36}$`).

A venue's refusal of an order becomes a REJECTED update whose reason is
`rejection_reason(code, msg)` — `binance -2019: Margin is insufficient.` — the one form
the broker writes, `order_events.reason` stores and the risk actor quotes when rejections
halt trading, so the code can be read back (`rejection_code`) from any of them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from qtraderd.core.enums import TERMINAL, OrderStatus

log = logging.getLogger("qtraderd.orders")

S = OrderStatus
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.NEW: frozenset({S.ACCEPTED, S.REJECTED, S.CANCELLED, S.EXPIRED, S.PARTIALLY_FILLED,
                      S.FILLED}),
    S.ACCEPTED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED}),
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED}),
    S.FILLED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}
UNKNOWN = "unknown"  # the "from" of an event for an order the book does not hold

CLIENT_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
PURPOSES = {"entry": "E", "exit": "X", "take_profit": "TP", "stop_loss": "SL"}
MAX_REJECTION = 200  # a rejection reason is one line of text: a log line and a store value
_REJECTION = re.compile(r"^(?P<venue>[a-z_]+) (?P<code>-?\d+): ")


def rejection_reason(code: int, msg: str, venue: str = "binance") -> str:
    """The reason of a REJECTED order update: the venue, its error code and its message,
    e.g. `binance -2019: Margin is insufficient.` The message is folded onto one line and
    cut to MAX_REJECTION characters (it becomes a log line and an `order_events` row)."""
    text = " ".join(str(msg).split())
    return f"{venue} {int(code)}: {text}"[:MAX_REJECTION]


def rejection_code(reason: str) -> int | None:
    """The venue's error code in a reason made by `rejection_reason`; None for any other."""
    m = _REJECTION.match(reason)
    return int(m.group("code")) if m else None


def legal(frm: OrderStatus, to: OrderStatus) -> bool:
    return to in TRANSITIONS[frm]


def client_order_id(run_id: int, seq: int, symbol: str, purpose: str, n: int = 1) -> str:
    """The id of the `n`-th order with this purpose for `symbol` decided at step `seq`.

    `purpose` is "entry", "exit", "take_profit" or "stop_loss" (or its code E/X/TP/SL).
    Raises ValueError when the id would break the venue's rule (too long, bad character).
    """
    code = PURPOSES.get(purpose, purpose)
    if code not in PURPOSES.values():
        raise ValueError(f"unknown order purpose {purpose!r}")
    cid = f"q{run_id}-{seq}-{symbol}-{code}{n if n > 1 else ''}"
    if not CLIENT_ID.match(cid):
        raise ValueError(f"client order id {cid!r} breaks the venue's rule "
                         f"{CLIENT_ID.pattern} (at most 36 characters)")
    return cid


def client_run(client_id: str, default: int) -> int:
    """The run whose client id this is (`q{run}-...`), else `default`: a live restart may
    settle an order an earlier run of the state dir sent (one that died before its first
    checkpoint), and its row is that run's."""
    head, _, _ = client_id.partition("-")
    return int(head[1:]) if head[:1] == "q" and head[1:].isdigit() else default


class OrderBook:
    """The lifecycle state of every open order, by client id; terminal orders leave it."""

    def __init__(self) -> None:
        self.states: dict[str, OrderStatus] = {}
        self.refused = 0
        self.applied = 0

    def apply(self, client_id: str, to: OrderStatus) -> OrderStatus | str | None:
        """Move `client_id` to `to`; return the state it left, or None when nothing moved.

        An unknown id may only start as NEW; anything else about it is refused.
        """
        frm = self.states.get(client_id)
        if frm is None:
            if to is not OrderStatus.NEW:
                return self._refuse(client_id, UNKNOWN, to)
        elif to == frm and to is not OrderStatus.PARTIALLY_FILLED:
            return None  # a repeated update: idempotent
        elif not legal(frm, to):
            return self._refuse(client_id, frm, to)
        if to in TERMINAL:
            self.states.pop(client_id, None)
        else:
            self.states[client_id] = to
        self.applied += 1
        return frm if frm is not None else UNKNOWN

    def _refuse(self, client_id: str, frm: str, to: OrderStatus) -> None:
        self.refused += 1
        log.warning("order transition refused: %s %s -> %s", client_id, frm, to)
        return None

    def restore(self, states: Iterable[tuple[str, str]]) -> None:
        """Adopt the open orders a venue reported after reconcile (replaces the book)."""
        self.states = {cid: OrderStatus(st) for cid, st in states}

    def status(self) -> dict[str, int]:
        return {"open_orders": len(self.states), "transitions": self.applied,
                "transitions_refused": self.refused}
