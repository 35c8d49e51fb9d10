"""The venue seam: what a feed and a broker must offer the actor chain.

A `BarSource` yields closed bars grouped by open time (replay: the store; live: exchange
kline streams with REST backfill). A `Broker` is asynchronous and event-driven, the way a
real exchange is: `submit`, `cancel` and `amend` return once the request is sent (paper:
queued), and what happens to orders and the account comes back later as events —
`OrderUpdate` (lifecycle moves), `Fill`, `Trade` (a closed round trip), `PositionView`
(qty 0: the position is gone) and `AccountView` — which the broker queues and the
execution actor drains at the start of each step, so each step still carries one message
and the order of work never depends on Trio's scheduler.

`reconcile(saved)` runs once before the first step: a paper broker restores the state
`export_state()` produced (the crash-only checkpoint stores it); a live broker will compare
positions, open orders, algo orders and balances on the exchange with it. `export_state()`
is JSON-serialisable and exact (floats round-trip bit-identically through `json`).

`on_bars(bars)` hands the broker the step's closed bars before the events are drained:
a simulated venue executes against them; a live venue uses them at most for marks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec

from qtraderd.core.messages import AccountView, Amend, Bar, Fill, OrderUpdate, PositionView, Trade

VenueEvent = OrderUpdate | Fill | Trade | PositionView | AccountView


class Order(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A market order as sent to a venue; entries carry their protective orders' ids."""

    client_id: str
    symbol: str
    side: int
    qty: float
    purpose: str  # "entry" | "exit"
    reason: str
    decided_ts: int  # open time of the bar it was decided on
    tp_pct: float = 0.0
    sl_pct: float = 0.0
    leverage: float = 1.0
    tp_id: str = ""  # client id of the take-profit placed when the entry fills
    sl_id: str = ""  # client id of the stop placed when the entry fills
    ref_price: float = 0.0  # the decision's price (a live venue checks min notional on it)


class BarSource(Protocol):
    """A feed: closed bars grouped by open time, resumable after a restart.

    `history(before_ms, bars)`: up to `bars` closed bars of each symbol opened before
    `before_ms` (the first step of a fresh run), oldest first, for the predictor's
    warm-up: a run that starts mid-data or live predicts from its first step instead of
    after the features' warm-up, on exactly the bars a replay from that point would see.
    """

    last_ts: int | None

    def batches(self) -> AsyncIterator[tuple[int, tuple[Bar, ...]]]: ...

    async def history(self, before_ms: int, bars: int) -> tuple[Bar, ...]: ...

    def close(self) -> None: ...


class Broker(Protocol):
    async def reconcile(self, saved: dict[str, Any] | None) -> None: ...

    async def on_bars(self, bars: tuple[Bar, ...]) -> None: ...

    def drain(self) -> list[VenueEvent]: ...

    async def submit(self, order: Order) -> None: ...

    async def cancel(self, client_id: str) -> None: ...

    async def amend(self, amend: Amend, seq: int) -> None: ...

    def export_state(self) -> dict[str, Any]: ...

    def open_orders(self) -> list[tuple[str, str]]: ...
