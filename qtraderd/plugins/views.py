"""Building the plugin API's read-only views and events from the daemon's messages.

Kept apart from the actors so the sizer and risk code only say *when* a hook runs, and
apart from the API module so plugins never import the daemon's message types.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from qtraderd.core.messages import (
    AccountView,
    Fill,
    OrderIntent,
    Prediction,
    RiskEvent,
    Sample,
    Step,
    Trade,
)
from qtraderd.features.spec import FEATURE_NAMES
from qtraderd.plugins.api import AccountState, OrderView, Position, SignalView


def signal_view(p: Prediction, side: int, confidence: float, edge: float, sample: Sample,
                price: float, step: Step, bars_in_regime: int) -> SignalView:
    models: dict[str, tuple[float, float]] = {}
    for o in step.model_outputs:
        if o.role != "serving":
            continue
        try:
            i = o.symbols.index(p.symbol)
        except ValueError:
            continue
        models[o.model] = (o.p_long[i], o.p_short[i])
    return SignalView(
        symbol=p.symbol, ts=p.ts, side=side, confidence=confidence, edge=edge,
        p_long=p.p_long, p_short=p.p_short, models=MappingProxyType(models),
        regime=sample.regime, global_regime=step.global_regime,
        bars_in_regime=bars_in_regime, price=price,
        features=MappingProxyType(dict(zip(FEATURE_NAMES, sample.features, strict=False))))


def order_view(it: OrderIntent, qty: float) -> OrderView:
    return OrderView(id=it.id, symbol=it.symbol, ts=it.ts, side=it.side, qty=qty,
                     requested_qty=it.qty, price=it.ref_price, notional=qty * it.ref_price,
                     leverage=it.leverage, tp_pct=it.tp_pct, sl_pct=it.sl_pct,
                     reason=it.reason)


def account_state(acct: AccountView, step: Step, risk_state: str, entries_today: int,
                  entries_today_total: int) -> AccountState:
    positions = tuple(Position(p.symbol, p.quote, p.side, p.qty, p.entry_price, p.mark_price,
                               p.unrealized, p.bars_held) for p in step.positions)
    return AccountState(quote=acct.quote, equity=acct.equity, balance=acct.balance,
                        exposure=acct.exposure, margin_used=acct.margin_used,
                        open_positions=len(step.positions), positions=positions,
                        risk_state=risk_state, entries_today=entries_today,
                        entries_today_total=entries_today_total)


# -------------------------------------------------------------------------- events


def _side(side: int) -> str:
    return "long" if side > 0 else "short"


def fill_opened(f: Fill) -> dict[str, Any]:
    return {"symbol": f.symbol, "side": _side(f.side), "qty": f.qty, "price": f.price,
            "fee": f.fee, "order_id": f.order_id}


def trade_closed(t: Trade) -> dict[str, Any]:
    return {"id": t.id, "symbol": t.symbol, "quote": t.quote, "side": _side(t.side),
            "qty": t.qty, "entry_ts": t.entry_ts, "entry_price": t.entry_price,
            "exit_ts": t.exit_ts, "exit_price": t.exit_price, "gross_pnl": t.gross_pnl,
            "fees": t.fees, "net_pnl": t.net_pnl, "return_pct": t.return_pct,
            "exit_reason": t.exit_reason, "bars_held": t.bars_held}


def risk_event(e: RiskEvent) -> tuple[str, dict[str, Any]]:
    """A risk state change ("risk_state") or a symbol pause / resume ("symbol_state")."""
    kind = "symbol_state" if e.symbol else "risk_state"
    return kind, {"state": e.state, "prev_state": e.prev_state, "reason": e.reason,
                  "detail": e.detail, "symbol": e.symbol}

