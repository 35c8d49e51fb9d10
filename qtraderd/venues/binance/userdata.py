"""Binance USD-M user data stream events, parsed into typed venue payloads.

These are Binance's own payloads with readable names, not qtraderd's messages: the
execution side turns them into `core.messages` (Fill, OrderUpdate, ...). Hence the
`Binance*` names, which keep them apart from the core concepts of the same name.

Every event type in the shared fixtures (`data/binance/usdm-futures/user_data/`) has a
type here: `ORDER_TRADE_UPDATE` (new, trades, partial fills, cancels, expiry, and the
exchange's own orders: liquidation `CALCULATED`, ADL `NEW_ADL`, insurance
`NEW_INSURANCE`, settlement and delivery closes), `ALGO_UPDATE`, `ACCOUNT_UPDATE` (the
reason `m` says why: ORDER, FUNDING_FEE, ...), `TRADE_LITE` and `listenKeyExpired`. An
event type not known here becomes `BinanceUnknownEvent` (the caller logs and counts it),
never an error: Binance adds event types without notice. Unknown fields are ignored
(BINANCE.md: parsers must ignore unknown fields); fields Binance leaves out when empty
(the commission `N`/`n` of an order without a fill) get neutral defaults.

Decimal strings become floats; the exchange's ids and times stay ints. A frame that is
not JSON, or a known event missing a required field, raises `PayloadError` naming it.
"""

from __future__ import annotations

import msgspec

from qtraderd.venues.binance.payloads import PayloadError
from qtraderd.venues.binance.payloads import decimal as _f

__all__ = ["FILL_EXECUTIONS", "BinanceAccountUpdate", "BinanceAlgoUpdate", "BinanceBalance",
           "BinanceOrderUpdate", "BinancePosition", "BinanceTradeLite", "BinanceUnknownEvent",
           "ListenKeyExpired", "UserDataEvent", "parse_user_event"]

# Execution types that carry a fill when `last_qty` > 0 (CALCULATED: liquidation, ADL,
# insurance fund; a CALCULATED event with status NEW announces one without a fill yet).
FILL_EXECUTIONS = ("TRADE", "CALCULATED")


class BinanceOrderUpdate(msgspec.Struct, frozen=True):
    """`ORDER_TRADE_UPDATE`: one order's new state, and the fill that moved it (if any)."""

    event_time: int  # E
    transaction_time: int  # T (of the event)
    symbol: str  # s
    client_id: str  # c: our newClientOrderId, or Binance's (autoclose-..., adl_autoclose)
    order_id: int  # i
    side: str  # S: BUY / SELL
    order_type: str  # o
    orig_type: str  # ot
    time_in_force: str  # f
    status: str  # X: NEW, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, NEW_ADL, ...
    execution_type: str  # x: NEW, TRADE, CANCELED, EXPIRED, CALCULATED, AMENDMENT
    qty: float  # q
    price: float  # p
    avg_price: float  # ap
    stop_price: float  # sp
    last_qty: float  # l: this event's fill
    last_price: float  # L
    cum_qty: float  # z
    commission: float  # n (0 when Binance left it out)
    commission_asset: str  # N ("" when left out)
    realized_pnl: float  # rp: of this fill
    reduce_only: bool  # R
    close_position: bool  # cp
    position_side: str  # ps
    trade_id: int  # t (0: no trade)
    trade_time: int  # o.T
    maker: bool  # m
    working_type: str  # wt

    @property
    def is_fill(self) -> bool:
        """This event reports a fill (a trade, or the exchange's liquidation/ADL close)."""
        return self.execution_type in FILL_EXECUTIONS and self.last_qty > 0


class BinanceAlgoUpdate(msgspec.Struct, frozen=True):
    """`ALGO_UPDATE`: a conditional (algo) order's state. Once triggered it has become a
    regular order `actual_order_id` ("" before that; BINANCE.md: map algoId to it)."""

    event_time: int
    transaction_time: int
    client_algo_id: str  # caid
    algo_id: int  # aid
    algo_type: str  # at: CONDITIONAL
    order_type: str  # o: STOP_MARKET, TAKE_PROFIT_MARKET, TRAILING_STOP_MARKET, ...
    symbol: str
    side: str
    position_side: str
    time_in_force: str
    qty: float
    status: str  # X: NEW, CANCELED, TRIGGERING, TRIGGERED, FINISHED, REJECTED, EXPIRED
    actual_order_id: str  # ai
    avg_price: float  # ap: of the triggered order
    executed_qty: float  # aq
    actual_order_type: str  # act
    trigger_price: float  # tp
    price: float  # p
    working_type: str  # wt
    close_position: bool  # cp
    reduce_only: bool  # R
    trigger_time: int  # tt
    reason: str  # rm: why rejected/cancelled ("" if none)


class BinanceBalance(msgspec.Struct, frozen=True):
    asset: str  # a
    wallet: float  # wb
    cross_wallet: float  # cw
    change: float  # bc: balance change other than PnL and commission


class BinancePosition(msgspec.Struct, frozen=True):
    symbol: str  # s
    amount: float  # pa: signed (negative: short)
    entry_price: float  # ep
    breakeven_price: float  # bep
    accumulated_realized: float  # cr (before fees)
    unrealized_pnl: float  # up
    margin_type: str  # mt: cross / isolated
    isolated_wallet: float  # iw
    position_side: str  # ps: BOTH / LONG / SHORT


class BinanceAccountUpdate(msgspec.Struct, frozen=True):
    """`ACCOUNT_UPDATE`: balances and positions that changed, and why (`reason`: ORDER,
    FUNDING_FEE, DEPOSIT, WITHDRAW, ADL, INSURANCE_CLEAR, MARGIN_TYPE_CHANGE, ...)."""

    event_time: int
    transaction_time: int
    reason: str  # a.m
    balances: tuple[BinanceBalance, ...]
    positions: tuple[BinancePosition, ...]


class BinanceTradeLite(msgspec.Struct, frozen=True):
    """`TRADE_LITE`: the fast, short fill notice (the full one is ORDER_TRADE_UPDATE)."""

    event_time: int
    transaction_time: int
    symbol: str
    client_id: str
    side: str
    qty: float
    price: float
    order_id: int
    last_qty: float
    last_price: float
    trade_id: int
    maker: bool


class ListenKeyExpired(msgspec.Struct, frozen=True):
    """`listenKeyExpired`: the stream delivers nothing more; get a new key, reconnect."""

    event_time: int
    listen_key: str


class BinanceUnknownEvent(msgspec.Struct, frozen=True):
    """An event type this parser does not know: log it and count it."""

    event_type: str
    event_time: int
    raw: bytes


UserDataEvent = (BinanceOrderUpdate | BinanceAlgoUpdate | BinanceAccountUpdate
                 | BinanceTradeLite | ListenKeyExpired | BinanceUnknownEvent)


# ------------------------------------------------------------------- wire shapes (private)

class _Head(msgspec.Struct):
    e: str = ""
    E: int | str = 0
    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")


class _O(msgspec.Struct):
    s: str
    c: str
    S: str
    o: str
    q: str
    X: str
    x: str
    i: int
    f: str = ""
    p: str = "0"
    ap: str = "0"
    sp: str = "0"
    l: str = "0"  # noqa: E741 (Binance's name)
    z: str = "0"
    L: str = "0"
    N: str | None = None
    n: str | None = None
    T: int = 0
    t: int = 0
    m: bool = False
    R: bool = False
    wt: str = ""
    ot: str = ""
    ps: str = "BOTH"
    cp: bool = False
    rp: str = "0"


class _OrderEvent(msgspec.Struct):
    E: int
    o: _O
    T: int = 0


class _A(msgspec.Struct):
    caid: str
    aid: int
    o: str
    s: str
    S: str
    X: str
    at: str = ""
    ps: str = "BOTH"
    f: str = ""
    q: str = "0"
    ai: str | int = ""
    ap: str = "0"
    aq: str = "0"
    act: str = ""
    tp: str = "0"
    p: str = "0"
    wt: str = ""
    cp: bool = False
    R: bool = False
    tt: int = 0
    rm: str = ""


class _AlgoEvent(msgspec.Struct):
    E: int
    o: _A
    T: int = 0


class _B(msgspec.Struct):
    a: str
    wb: str
    cw: str = "0"
    bc: str = "0"


class _P(msgspec.Struct):
    s: str
    pa: str
    ep: str = "0"
    bep: str = "0"
    cr: str = "0"
    up: str = "0"
    mt: str = ""
    iw: str = "0"
    ps: str = "BOTH"


class _Acc(msgspec.Struct):
    m: str = ""
    B: list[_B] = []
    P: list[_P] = []


class _AccountEvent(msgspec.Struct):
    E: int
    a: _Acc
    T: int = 0


class _TradeLite(msgspec.Struct):
    E: int
    s: str
    c: str
    S: str
    q: str
    p: str
    i: int
    l: str  # noqa: E741
    L: str
    t: int
    T: int = 0
    m: bool = False


class _Expired(msgspec.Struct):
    E: int | str = 0
    listenKey: str = ""


_head = msgspec.json.Decoder(_Head)
_order = msgspec.json.Decoder(_OrderEvent)
_algo = msgspec.json.Decoder(_AlgoEvent)
_account = msgspec.json.Decoder(_AccountEvent)
_lite = msgspec.json.Decoder(_TradeLite)
_expired = msgspec.json.Decoder(_Expired)




def _int(value: int | str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise PayloadError(f"{what}: expected an integer, got {value!r}") from None


def _order_update(raw: bytes) -> BinanceOrderUpdate:
    ev = _order.decode(raw)
    o = ev.o
    w = f"ORDER_TRADE_UPDATE {o.s} {o.c}"
    return BinanceOrderUpdate(
        ev.E, ev.T, o.s, o.c, o.i, o.S, o.o, o.ot or o.o, o.f, o.X, o.x, _f(o.q, f"{w} q"),
        _f(o.p, f"{w} p"), _f(o.ap, f"{w} ap"), _f(o.sp, f"{w} sp"), _f(o.l, f"{w} l"),
        _f(o.L, f"{w} L"), _f(o.z, f"{w} z"), _f(o.n or "0", f"{w} n"), o.N or "",
        _f(o.rp, f"{w} rp"), o.R, o.cp, o.ps, o.t, o.T, o.m, o.wt)


def _algo_update(raw: bytes) -> BinanceAlgoUpdate:
    ev = _algo.decode(raw)
    a = ev.o
    w = f"ALGO_UPDATE {a.s} {a.caid}"
    return BinanceAlgoUpdate(
        ev.E, ev.T, a.caid, a.aid, a.at, a.o, a.s, a.S, a.ps, a.f, _f(a.q, f"{w} q"), a.X,
        str(a.ai), _f(a.ap, f"{w} ap"), _f(a.aq, f"{w} aq"), a.act, _f(a.tp, f"{w} tp"),
        _f(a.p, f"{w} p"), a.wt, a.cp, a.R, a.tt, a.rm)


def _account_update(raw: bytes) -> BinanceAccountUpdate:
    ev = _account.decode(raw)
    balances = tuple(BinanceBalance(b.a, _f(b.wb, f"ACCOUNT_UPDATE {b.a} wb"),
                                    _f(b.cw, f"ACCOUNT_UPDATE {b.a} cw"),
                                    _f(b.bc, f"ACCOUNT_UPDATE {b.a} bc")) for b in ev.a.B)
    positions = []
    for p in ev.a.P:
        w = f"ACCOUNT_UPDATE {p.s} {p.ps}"
        positions.append(BinancePosition(
            p.s, _f(p.pa, f"{w} pa"), _f(p.ep, f"{w} ep"), _f(p.bep, f"{w} bep"),
            _f(p.cr, f"{w} cr"), _f(p.up, f"{w} up"), p.mt, _f(p.iw, f"{w} iw"), p.ps))
    return BinanceAccountUpdate(ev.E, ev.T, ev.a.m, balances, tuple(positions))


def _trade_lite(raw: bytes) -> BinanceTradeLite:
    t = _lite.decode(raw)
    w = f"TRADE_LITE {t.s} {t.c}"
    return BinanceTradeLite(t.E, t.T, t.s, t.c, t.S, _f(t.q, f"{w} q"), _f(t.p, f"{w} p"),
                            t.i, _f(t.l, f"{w} l"), _f(t.L, f"{w} L"), t.t, t.m)


def _listen_key_expired(raw: bytes) -> ListenKeyExpired:
    ev = _expired.decode(raw)
    return ListenKeyExpired(_int(ev.E, "listenKeyExpired E"), ev.listenKey)


_PARSERS = {"ORDER_TRADE_UPDATE": _order_update, "ALGO_UPDATE": _algo_update,
            "ACCOUNT_UPDATE": _account_update, "TRADE_LITE": _trade_lite,
            "listenKeyExpired": _listen_key_expired}


def parse_user_event(raw: bytes | str) -> UserDataEvent:
    """One user data stream frame (raw payload, or a combined-stream wrapper
    `{"stream": ..., "data": {...}}`) -> its typed event. Raises `PayloadError` for a frame
    that is not a JSON object with an event type `e`, or a known event that is malformed."""
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    try:
        head = _head.decode(data)
        if head.stream is not None and len(head.data) > 0:
            data = bytes(head.data)
            head = _head.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(f"user data frame: {exc}: {_short(data)}") from None
    if not head.e:
        raise PayloadError(f"user data frame without an event type 'e': {_short(data)}")
    parser = _PARSERS.get(head.e)
    if parser is None:
        try:
            when = int(head.E)
        except ValueError:
            when = 0
        return BinanceUnknownEvent(head.e, when, data)
    try:
        return parser(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(f"{head.e}: {exc}: {_short(data)}") from None


def _short(data: bytes) -> str:
    text = " ".join(data[:400].decode("utf-8", "replace").split())
    return text if len(text) <= 120 else text[:117] + "..."
