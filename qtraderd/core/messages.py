"""Every message that crosses a channel between actors.

Everything about one bar timestamp travels down the actor chain as a single `Step`
(feed -> execution -> monitor -> predictor -> sizer -> risk -> execution -> recorder).
Each actor returns a copy of the step with its own fields filled in (`replace`), so the
order of work inside one bar is fixed by the chain and never by Trio's scheduler.

Messages are frozen msgspec Structs: about 7x cheaper to build than frozen dataclasses,
`replace` is ~60x cheaper, and a whole replay's steps encode to msgpack in milliseconds,
which is how finished steps travel to the store writer process. Leaf types hold only
scalars, so they opt out of the cyclic GC (`gc=False`).

Conventions: times are integer epoch milliseconds; `ts` of a bar is its open time;
`side` is +1 (long / buy) or -1 (short / sell); amounts are in the pair's quote currency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from msgspec.structs import replace

from qtraderd.core.enums import Side

if TYPE_CHECKING:
    import trio

__all__ = ["replace"]

LONG = Side.LONG
SHORT = Side.SHORT

# Class indices of the three-way triple-barrier label (see labels.py).
LABEL_NONE = 0
LABEL_LONG = 1
LABEL_SHORT = 2


class Bar(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One closed candle."""

    symbol: str
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float


class Sample(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Features of one closed bar; becomes a training sample once its outcome is known."""

    symbol: str
    ts: int
    features: tuple[float, ...]
    regime: str


class Prediction(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Class probabilities from one model (or the ensemble) for one bar."""

    symbol: str
    ts: int
    model: str  # family name, or "ensemble"
    version: str
    p_long: float  # P(long take-profit is hit before its stop, within the horizon)
    p_short: float  # P(short take-profit is hit before its stop, within the horizon)
    weights: str = ""  # ensemble only: the member weights used, compact JSON


class ModelOutput(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One model's probabilities for every symbol of a step (rows align with `symbols`)."""

    model: str
    version: str
    ts: int
    symbols: tuple[str, ...]
    p_long: tuple[float, ...]
    p_short: tuple[float, ...]
    role: str = "serving"  # "serving" (in the ensemble) or "shadow" (recorded, never traded)


class Scored(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A model's earlier prediction next to the outcome that just became known."""

    model: str
    version: str
    role: str
    symbol: str
    ts: int
    regime: str
    p_long: float
    p_short: float
    label: int
    ret_long: float
    ret_short: float
    resolved_at: int = 0  # open time of the bar that settled the label


class Outcome(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The realised triple-barrier label of an earlier sample, known once later bars closed."""

    symbol: str
    ts: int  # the sample's bar
    label: int  # LABEL_NONE / LABEL_LONG / LABEL_SHORT
    resolved_at: int  # open time of the bar that resolved it
    ret_long: float  # return of the long trade to its exit barrier (before costs)
    ret_short: float


class Signal(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The sizer's reading of the ensemble for one symbol and bar."""

    symbol: str
    ts: int
    side: int  # +1, -1, or 0 when no trade
    confidence: float  # probability of the chosen (or best) side
    edge: float  # expected net return per unit notional after costs
    regime: str
    action: str  # "enter" | "skip"
    reason: str


class OrderIntent(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An order someone wants placed at the next bar's open; risk decides on it."""

    id: str
    symbol: str
    ts: int  # decision bar
    side: int
    qty: float
    ref_price: float  # last close when decided
    purpose: str  # "entry" | "exit"
    reason: str  # "signal", "time_stop", "flatten", ...
    tp_pct: float = 0.0  # take-profit distance from the fill price, fraction (entries)
    sl_pct: float = 0.0  # stop-loss distance from the fill price, fraction (entries)
    leverage: float = 1.0
    size_multiplier: float = 1.0  # the RL agent's scale of the rule's size (entries)
    rl_state: str = ""  # the agent's state key when it chose (empty: agent not used)


class RiskDecision(msgspec.Struct, frozen=True, array_like=True, gc=False):
    intent_id: str
    symbol: str
    action: str  # "allow" | "reduce" | "deny"
    reason: str  # reason code, e.g. "OK", "HALTED", "MAX_OPEN_POSITIONS"
    qty: float  # approved quantity (0 when denied)


class Fill(msgspec.Struct, frozen=True, array_like=True, gc=False):
    order_id: str
    symbol: str
    ts: int  # open time of the bar in which it filled
    side: int
    qty: float
    price: float
    fee: float
    liquidity: str  # "taker" | "maker"
    reason: str  # "entry", "take_profit", "stop_loss", "trailing_stop", "time_stop", ...


class Trade(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A closed round trip, net of fees and slippage."""

    id: int
    symbol: str
    quote: str
    side: int
    qty: float
    entry_ts: int
    entry_price: float
    exit_ts: int
    exit_price: float
    gross_pnl: float
    fees: float
    net_pnl: float
    return_pct: float  # net PnL as a percentage of the margin committed
    exit_reason: str
    bars_held: int


class PositionView(msgspec.Struct, frozen=True, array_like=True, gc=False):
    symbol: str
    quote: str
    side: int
    qty: float
    entry_price: float
    entry_ts: int
    stop_price: float
    take_price: float
    margin: float
    bars_held: int
    best_price: float  # most favourable price seen since entry (for trailing)
    trailing: bool  # trailing stop active
    mark_price: float
    unrealized: float


class AccountView(msgspec.Struct, frozen=True, array_like=True, gc=False):
    quote: str
    balance: float  # cash, realised PnL and fees included
    equity: float  # balance + unrealised PnL
    exposure: float  # sum of open notional at mark
    margin_used: float
    open_positions: int


class Amend(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A change to a position's resting protective orders, decided by the monitor."""

    symbol: str
    stop_price: float
    take_price: float
    reason: str  # "trailing", "atr", ...


class OrderUpdate(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A venue event: an order moved to `status` (core.orders holds the legal moves).

    In a Step, `prev` is the state it left (set by the execution actor once the move was
    applied; "unknown" for an order's first event).
    """

    client_id: str
    symbol: str
    ts: int  # venue time of the event (bar open time in paper replay)
    status: str  # an OrderStatus value
    reason: str = ""  # why: "submitted", "filled at open", "position already open", ...
    prev: str = ""
    intent_id: str = ""  # on an order's `new` move: the OrderIntent it carries out


class RiskEvent(msgspec.Struct, frozen=True, array_like=True, gc=False):
    ts: int
    state: str
    prev_state: str
    reason: str
    detail: str
    symbol: str = ""


class ActorState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One actor's state after a checkpoint step, opaque to everyone but that actor."""

    actor: str
    blob: bytes


class Step(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Everything about one bar timestamp, accumulated as it passes down the chain."""

    seq: int
    ts: int  # open time shared by the bars
    close_ts: int  # when those bars closed: the decision time
    bars: tuple[Bar, ...]
    # execution, first half: what happened at this bar's open and inside its range
    fills: tuple[Fill, ...] = ()
    closed: tuple[Trade, ...] = ()
    positions: tuple[PositionView, ...] = ()
    accounts: tuple[AccountView, ...] = ()
    # monitor
    amends: tuple[Amend, ...] = ()
    # predictor
    samples: tuple[Sample, ...] = ()
    model_outputs: tuple[ModelOutput, ...] = ()  # each model, for every symbol
    predictions: tuple[Prediction, ...] = ()  # the ensemble, one per symbol
    outcomes: tuple[Outcome, ...] = ()
    scored: tuple[Scored, ...] = ()  # outcomes matched with every model's prediction
    global_regime: str = ""
    # sizer (and monitor exits) -> risk
    signals: tuple[Signal, ...] = ()
    intents: tuple[OrderIntent, ...] = ()
    decisions: tuple[RiskDecision, ...] = ()
    risk_state: str = ""
    risk_events: tuple[RiskEvent, ...] = ()
    # actors that failed on this step and passed it on untouched
    degraded: tuple[str, ...] = ()
    # execution: order lifecycle moves of this step (phase A events, phase B submissions)
    orders: tuple[OrderUpdate, ...] = ()
    # rows that belong to this step but to no table above (RL updates): written with it
    records: tuple[Record, ...] = ()
    # crash-only state (qtraderd.runtime.checkpoint): on a checkpoint step every actor
    # with state appends it after handling the step, and the recorder commits the rows of
    # every step up to here together with these states in one transaction
    checkpoint: bool = False
    # no bars, nothing to handle: it only collects the actors' state after the step of the
    # same seq (sent behind each step that ends with a checkpoint, and at the end)
    seal: bool = False
    state: tuple[ActorState, ...] = ()
    # the first step of a fresh run only: the stored bars before it (oldest first), which
    # the predictor's features, windows and regimes warm up on; nothing trades on them
    history: tuple[Bar, ...] = ()
    # what the venue found that must stop trading (a live reconcile's unknown position):
    # risk halts on it, as on `ctl halt`, until `ctl resume`
    venue_alerts: tuple[str, ...] = ()


class Record(msgspec.Struct, frozen=True, array_like=True):
    """A row for the recorder that does not belong to a step (restarts, model loads...).

    mode "replace" writes INSERT OR REPLACE (state tables keyed by primary key, e.g. rl_q);
    "ignore" writes INSERT OR IGNORE (rows that may exist already and must not change: a
    live feed's `bars`, as `qtraderd import` writes them).
    """

    table: str
    row: dict[str, Any]
    mode: str = "insert"


class Journal(msgspec.Struct, frozen=True):
    """Rows the recorder commits at once, answering on `reply` when they are in SQLite.

    Live orders: the execution actor journals an order's row (its deterministic client id,
    status `new`) and waits for the commit before the request leaves, so after a crash at
    any moment the order is looked up by that id, never sent twice (DESIGN.md "Crash-only
    store"). Rows are written INSERT OR REPLACE: the step's own commit writes them again.
    """

    records: tuple[Record, ...]
    reply: trio.MemorySendChannel[int] | None = None  # never encoded


class Command(msgspec.Struct, frozen=True):
    """A control request for the actor that owns the state it changes."""

    name: str
    args: dict[str, Any]
    reply: trio.MemorySendChannel[Any] | None = None  # never encoded
