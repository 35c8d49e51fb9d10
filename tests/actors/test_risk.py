"""RiskActor: the state machine (ACTIVE / REDUCING / HALTED), every limit's reason code,
and the control commands (halt, resume, flatten, pause, resume-symbol)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from qtraderd.actors.risk import ACTIVE, DAY_MS, HALTED, REDUCING, RiskActor
from qtraderd.core.clock import ReplayClock, iso
from qtraderd.core.config import load, with_changes
from qtraderd.core.costs import CostModel
from qtraderd.core.messages import (
    AccountView,
    Bar,
    Command,
    OrderIntent,
    PositionView,
    RiskDecision,
    RiskEvent,
    Step,
    Trade,
    replace,
)

IV = 300_000
DAY0 = 1_699_920_000_000  # a UTC midnight
FEE = 0.0005
SYM = "XRPUSDT"


def make(risk: dict[str, Any] | None = None, portfolio: dict[str, Any] | None = None,
         clock: ReplayClock | None = None) -> RiskActor:
    cfg = with_changes(load(env={}), risk=risk or {}, portfolio=portfolio or {})
    send, recv = trio.open_memory_channel[Step](1)
    _, cmd_recv = trio.open_memory_channel[Command](1)
    return RiskActor(cfg.risk, cfg.portfolio, CostModel.from_config(cfg.costs),
                     clock or ReplayClock(DAY0), IV, recv, send, cmd_recv)


def acct(equity: float = 10_000.0, quote: str = "USDT", exposure: float = 0.0,
         margin_used: float = 0.0, open_positions: int = 0) -> AccountView:
    return AccountView(quote, equity, equity, exposure, margin_used, open_positions)


def entry(qty: float = 10.0, price: float = 100.0, symbol: str = SYM, lev: float = 3.0,
          id: str = "E1") -> OrderIntent:
    return OrderIntent(id, symbol, DAY0, 1, qty, price, "entry", "signal", 0.016, 0.008, lev)


def exit_(symbol: str = SYM, qty: float = 10.0, id: str = "X1") -> OrderIntent:
    return OrderIntent(id, symbol, DAY0, -1, qty, 100.0, "exit", "time_stop")


def position(symbol: str = SYM, side: int = 1, qty: float = 10.0) -> PositionView:
    return PositionView(symbol, "USDT", side, qty, 100.0, DAY0, 99.2, 101.6, 333.3, 2, 100.0,
                        False, 100.0, 0.0)


def step(i: int = 0, *, equity: float | None = 10_000.0, day: int = 0,
         intents: tuple[OrderIntent, ...] = (), positions: tuple[PositionView, ...] = (),
         accounts: tuple[AccountView, ...] | None = None,
         closed: tuple[Trade, ...] = ()) -> Step:
    ts = DAY0 + day * DAY_MS + i * IV
    if accounts is None:
        accounts = (acct(equity),) if equity is not None else ()
    return Step(seq=i, ts=ts, close_ts=ts + IV, bars=(Bar(SYM, ts, 1, 1, 1, 1, 1),),
                positions=positions, accounts=accounts, intents=intents, closed=closed)


def trade(net: float, symbol: str = SYM, id: int = 1) -> Trade:
    return Trade(id, symbol, "USDT", 1, 10.0, DAY0, 100.0, DAY0 + IV, 100.0 + net / 10, net,
                 1.0, net, net / 3.333, "stop_loss" if net < 0 else "take_profit", 1)


def decision(out: Step) -> RiskDecision:
    (d,) = out.decisions
    return d


# ----------------------------------------------------------------------------- allow


def test_entry_within_limits_is_allowed() -> None:
    r = make()
    out = r.handle(step(intents=(entry(10.0),)))
    assert decision(out) == RiskDecision("E1", SYM, "allow", "OK", 10.0)
    assert out.risk_state == ACTIVE
    assert out.risk_events == ()
    assert r.status()["denied"] == 0 and r.status()["reduced"] == 0


def test_no_intents_no_decisions() -> None:
    out = make().handle(step())
    assert out.decisions == () and out.intents == () and out.risk_state == ACTIVE


def test_exits_are_always_allowed_even_when_halted() -> None:
    r = make()
    r.command("halt", {})
    out = r.handle(step(intents=(exit_(qty=7.0),), positions=(position(),)))
    assert decision(out) == RiskDecision("X1", SYM, "allow", "EXIT", 7.0)
    assert out.risk_state == HALTED


# ----------------------------------------------------------------------------- denials


def test_position_open() -> None:
    out = make().handle(step(intents=(entry(),), positions=(position(),)))
    assert decision(out) == RiskDecision("E1", SYM, "deny", "POSITION_OPEN", 0.0)


def test_max_leverage() -> None:
    out = make().handle(step(intents=(entry(lev=10.0),)))
    assert decision(out).reason == "MAX_LEVERAGE" and decision(out).action == "deny"
    out = make().handle(step(intents=(entry(lev=5.0),)))
    assert decision(out).action == "allow"


def test_max_open_positions_counts_held_positions() -> None:
    r = make({"max_open_positions": 2})
    held = (position("ADAUSDT"), position("BTCUSDT"))
    out = r.handle(step(intents=(entry(),), positions=held))
    assert decision(out) == RiskDecision("E1", SYM, "deny", "MAX_OPEN_POSITIONS", 0.0)


def test_max_open_positions_counts_entries_allowed_in_the_same_step() -> None:
    r = make({"max_open_positions": 1})
    out = r.handle(step(intents=(entry(id="A"), entry(symbol="LTCUSDT", id="B"))))
    assert [(d.intent_id, d.action, d.reason) for d in out.decisions] == [
        ("A", "allow", "OK"), ("B", "deny", "MAX_OPEN_POSITIONS")]
    assert r.denied == 1


def test_no_equity_without_an_account_for_the_quote() -> None:
    out = make().handle(step(intents=(entry(1.0, 0.05, symbol="ETHBTC"),)))
    assert decision(out) == RiskDecision("E1", "ETHBTC", "deny", "NO_EQUITY", 0.0)


def test_no_equity_when_equity_is_zero() -> None:
    out = make().handle(step(equity=0.0, intents=(entry(),)))
    assert decision(out).reason == "NO_EQUITY"


def test_checks_run_in_the_documented_order() -> None:
    # paused beats position-open beats leverage
    r = make()
    r.command("pause", {"symbol": SYM})
    out = r.handle(step(intents=(entry(lev=50.0),), positions=(position(),)))
    assert decision(out).reason == "SYMBOL_PAUSED"
    out = make().handle(step(intents=(entry(lev=50.0),), positions=(position(),)))
    assert decision(out).reason == "POSITION_OPEN"
    out = make({"max_open_positions": 0}).handle(step(intents=(entry(lev=50.0),)))
    assert decision(out).reason == "MAX_LEVERAGE"


# ----------------------------------------------------------------------------- size limits


def test_max_notional_pct_reduces() -> None:
    out = make().handle(step(intents=(entry(30.0, 100.0),)))  # 3000 > 25 % of 10000
    d = decision(out)
    assert (d.action, d.reason) == ("reduce", "MAX_NOTIONAL")
    assert d.qty == pytest.approx(25.0)


def test_max_notional_absolute_cap() -> None:
    r = make({"max_order_notional": {"USDT": 1_000.0}})
    d = decision(r.handle(step(intents=(entry(15.0, 100.0),))))
    assert (d.action, d.reason) == ("reduce", "MAX_NOTIONAL")
    assert d.qty == pytest.approx(10.0)
    # the cap is per quote: a BTC cap does not touch a USDT pair
    r = make({"max_order_notional": {"BTC": 0.001}})
    assert decision(r.handle(step(intents=(entry(15.0, 100.0),)))).action == "allow"


def test_symbol_exposure_reduces() -> None:
    r = make({"max_symbol_exposure_pct": 20.0})
    d = decision(r.handle(step(intents=(entry(24.0, 100.0),))))
    assert (d.action, d.reason) == ("reduce", "SYMBOL_EXPOSURE")
    assert d.qty == pytest.approx(20.0)


def test_total_exposure_reduces() -> None:
    r = make()
    out = r.handle(step(accounts=(acct(exposure=9_000.0),), intents=(entry(20.0, 100.0),)))
    d = decision(out)
    assert (d.action, d.reason) == ("reduce", "TOTAL_EXPOSURE")
    assert d.qty == pytest.approx(10.0)
    assert r.reduced == 1


def test_total_exposure_counts_entries_allowed_earlier_in_the_step() -> None:
    r = make()
    out = r.handle(step(accounts=(acct(exposure=7_000.0),),
                        intents=(entry(20.0, id="A"), entry(20.0, symbol="LTCUSDT", id="B"))))
    a, b = out.decisions
    assert (a.action, a.reason, a.qty) == ("allow", "OK", 20.0)
    assert (b.action, b.reason) == ("reduce", "TOTAL_EXPOSURE")
    assert b.qty == pytest.approx(10.0)


def test_cut_below_min_fraction_is_denied_with_the_limit_code() -> None:
    r = make()
    out = r.handle(step(accounts=(acct(exposure=9_900.0),), intents=(entry(20.0, 100.0),)))
    assert decision(out) == RiskDecision("E1", SYM, "deny", "TOTAL_EXPOSURE", 0.0)
    assert r.denied == 1


def test_insufficient_margin_reduces() -> None:
    r = make()
    out = r.handle(step(accounts=(acct(margin_used=9_500.0),), intents=(entry(20.0, 100.0),)))
    d = decision(out)
    assert (d.action, d.reason) == ("reduce", "INSUFFICIENT_MARGIN")
    per_unit = 100.0 / 3.0 + 100.0 * FEE
    assert d.qty == pytest.approx(500.0 / per_unit)


def test_insufficient_margin_counts_entries_allowed_earlier_in_the_step() -> None:
    r = make()
    # free margin 800: A takes 20 * 100 / 3 = 666.67, B gets what is left
    out = r.handle(step(accounts=(acct(margin_used=9_200.0),),
                        intents=(entry(20.0, id="A"), entry(20.0, symbol="LTCUSDT", id="B"))))
    a, b = out.decisions
    assert (a.action, a.reason) == ("allow", "OK")
    assert (b.action, b.reason) == ("deny", "INSUFFICIENT_MARGIN")  # 133 / 33.4 = 4 < 20 %
    out = make().handle(step(accounts=(acct(margin_used=8_900.0),),
                             intents=(entry(20.0, id="A"),
                                      entry(20.0, symbol="LTCUSDT", id="B"))))
    b = out.decisions[1]
    assert (b.action, b.reason) == ("reduce", "INSUFFICIENT_MARGIN")
    assert b.qty == pytest.approx((1_100.0 - 2_000.0 / 3.0) / (100.0 / 3.0 + 100.0 * FEE))


# ----------------------------------------------------------------------------- states


def test_reducing_scales_qty_by_reduce_factor() -> None:
    r = make()
    r.handle(step(0, equity=10_000.0))
    out = r.handle(step(1, equity=9_650.0, intents=(entry(10.0),)))  # daily loss 3.5 % >= 3 %
    assert out.risk_state == REDUCING
    d = decision(out)
    assert (d.action, d.reason) == ("reduce", "REDUCING")
    assert d.qty == pytest.approx(5.0)
    (ev,) = out.risk_events
    assert (ev.state, ev.prev_state, ev.reason) == (REDUCING, ACTIVE, "NEAR_LIMIT")
    assert ev.ts == out.close_ts


def test_reducing_then_a_limit_reports_the_limit() -> None:
    r = make({"reduce_factor": 0.8})
    r.handle(step(0, equity=10_000.0))
    d = decision(r.handle(step(1, equity=9_650.0, intents=(entry(40.0),))))
    # 40 * 0.8 = 32 -> 3200 > 25 % of 9650 = 2412.5
    assert (d.action, d.reason) == ("reduce", "MAX_NOTIONAL")
    assert d.qty == pytest.approx(24.125)


def test_reduce_factor_zero_denies_entries_while_reducing() -> None:
    r = make({"reduce_factor": 0.0})
    r.handle(step(0, equity=10_000.0))
    d = decision(r.handle(step(1, equity=9_650.0, intents=(entry(),))))
    assert (d.action, d.reason) == ("deny", "REDUCING")


def test_drawdown_breach_halts_entries_in_the_same_step() -> None:
    r = make({"daily_loss_pct": 100.0})  # isolate the drawdown limit
    r.handle(step(0, equity=10_000.0))
    r.handle(step(1, equity=11_000.0))  # new peak
    out = r.handle(step(2, equity=9_300.0, intents=(entry(),)))  # 15.45 % below the peak
    assert out.risk_state == HALTED
    assert decision(out) == RiskDecision("E1", SYM, "deny", "HALTED", 0.0)
    (ev,) = out.risk_events
    assert (ev.state, ev.prev_state, ev.reason) == (HALTED, ACTIVE, "DRAWDOWN")
    assert ev.ts == out.close_ts and "15.45%" in ev.detail
    assert r.status()["accounts"]["USDT"]["drawdown_pct"] == pytest.approx(15.455, abs=1e-3)


def test_drawdown_halt_holds_across_days_until_resume() -> None:
    r = make()
    r.handle(step(0, equity=10_000.0))
    r.handle(step(0, day=1, equity=9_000.0))  # new day: daily loss 0, drawdown 10 %
    assert r.state == REDUCING
    out = r.handle(step(0, day=2, equity=8_400.0, intents=(entry(),)))  # drawdown 16 %
    assert out.risk_state == HALTED and decision(out).reason == "HALTED"
    assert out.risk_events[0].reason == "DRAWDOWN"
    # recovers, new days: still halted
    out = r.handle(step(0, day=3, equity=9_900.0, intents=(entry(),)))
    assert out.risk_state == HALTED and decision(out).reason == "HALTED"
    assert out.risk_events == ()
    r.command("resume", {})
    assert r.state == ACTIVE
    out = r.handle(step(1, day=3, equity=9_900.0, intents=(entry(),)))
    assert out.risk_state == ACTIVE
    assert decision(out).action == "allow"
    (ev,) = out.risk_events
    assert (ev.state, ev.prev_state, ev.reason) == (ACTIVE, HALTED, "RESUMED")


def test_resume_resets_the_drawdown_reference() -> None:
    r = make({"daily_loss_pct": 100.0})
    r.handle(step(0, equity=10_000.0))
    r.handle(step(1, equity=8_000.0))
    assert r.state == HALTED
    r.command("resume", {})
    out = r.handle(step(2, equity=8_000.0, intents=(entry(),)))
    assert out.risk_state == ACTIVE and decision(out).action == "allow"
    # a fresh 15 % from the new reference halts again
    out = r.handle(step(3, equity=6_800.0))
    assert out.risk_state == HALTED and out.risk_events[-1].reason == "DRAWDOWN"


def test_daily_loss_halts_and_lifts_on_the_next_utc_day() -> None:
    r = make()
    r.handle(step(0, equity=10_000.0))
    out = r.handle(step(1, equity=9_490.0, intents=(entry(),)))  # 5.1 % down today
    assert out.risk_state == HALTED and decision(out).reason == "HALTED"
    (ev,) = out.risk_events
    assert (ev.state, ev.reason) == (HALTED, "DAILY_LOSS")
    out = r.handle(step(200, equity=9_490.0, intents=(entry(),)))  # later the same day
    assert out.risk_state == HALTED and out.risk_events == ()
    # first step of the next day: day_start resets, 5.1 % drawdown is below reduce_at
    out = r.handle(step(0, day=1, equity=9_490.0, intents=(entry(),)))
    assert out.risk_state == ACTIVE
    assert decision(out).action == "allow"
    (ev,) = out.risk_events
    assert (ev.state, ev.prev_state, ev.reason) == (ACTIVE, HALTED, "WITHIN_LIMITS")


def test_day_boundary_follows_the_close_time() -> None:
    r = make()
    r.handle(step(0, equity=10_000.0))
    r.handle(step(1, equity=9_490.0))
    assert r.state == HALTED
    last = DAY_MS // IV - 1  # this bar closes exactly at the next midnight
    out = r.handle(step(last, equity=9_490.0))
    assert out.close_ts % DAY_MS == 0
    assert out.risk_state == ACTIVE


def test_drawdown_and_daily_loss_on_the_same_step_reports_drawdown() -> None:
    r = make()
    r.handle(step(0, equity=10_000.0))
    out = r.handle(step(1, equity=8_000.0))
    assert out.risk_state == HALTED and out.risk_events[0].reason == "DRAWDOWN"
    # and the daily loss lifting the next day does not lift the drawdown halt
    out = r.handle(step(0, day=1, equity=8_000.0))
    assert out.risk_state == HALTED


def test_worst_account_drives_the_state() -> None:
    r = make()
    r.handle(step(0, accounts=(acct(1.0, "BTC"), acct(10_000.0))))
    out = r.handle(step(1, accounts=(acct(0.94, "BTC"), acct(10_100.0)),
                        intents=(entry(),)))
    assert out.risk_state == HALTED and out.risk_events[0].reason == "DAILY_LOSS"
    assert decision(out).reason == "HALTED"


def test_drawdown_just_below_the_limit_only_reduces() -> None:
    r = make({"daily_loss_pct": 100.0})
    r.handle(step(0, equity=10_000.0))
    out = r.handle(step(1, equity=8_510.0, intents=(entry(),)))  # 14.9 %
    assert out.risk_state == REDUCING and decision(out).reason == "REDUCING"


def test_a_step_without_accounts_keeps_the_state() -> None:
    # execution degraded: no snapshot, so no news about equity; the halt must not lift
    r = make()
    r.handle(step(0, equity=10_000.0))
    r.handle(step(1, equity=9_490.0))
    assert r.state == HALTED
    out = r.handle(step(2, equity=None, intents=(entry(),)))
    assert out.risk_state == HALTED and out.risk_events == ()
    assert decision(out).reason == "HALTED"
    out = r.handle(step(3, equity=9_490.0))
    assert out.risk_state == HALTED and out.risk_events == ()


def test_back_to_active_from_reducing() -> None:
    r = make()
    r.handle(step(0, equity=10_000.0))
    assert r.handle(step(1, equity=9_650.0)).risk_state == REDUCING
    out = r.handle(step(2, equity=9_800.0))
    assert out.risk_state == ACTIVE
    assert out.risk_events[0].prev_state == REDUCING


# ----------------------------------------------------------------------------- commands


def test_halt_then_entry_denied_then_resume() -> None:
    clock = ReplayClock(DAY0 + 123)
    r = make(clock=clock)
    status = r.command("halt", {"reason": "maintenance"})
    assert status["risk_state"] == HALTED and status["reason"] == "maintenance"
    out = r.handle(step(0, intents=(entry(),)))
    assert out.risk_state == HALTED
    assert decision(out) == RiskDecision("E1", SYM, "deny", "HALTED", 0.0)
    assert out.risk_events == (RiskEvent(DAY0 + 123, HALTED, ACTIVE, "MANUAL", "maintenance"),)
    # healthy equity does not lift a manual halt
    out = r.handle(step(1, intents=(entry(),)))
    assert out.risk_state == HALTED and decision(out).reason == "HALTED"
    assert r.command("resume", {})["risk_state"] == ACTIVE
    out = r.handle(step(2, intents=(entry(),)))
    assert out.risk_state == ACTIVE
    assert decision(out).action == "allow"


def test_halt_while_halted_keeps_the_first_reason_and_outlives_the_limit() -> None:
    r = make()
    r.handle(step(0, equity=10_000.0))
    first = r.handle(step(1, equity=9_490.0))  # DAILY_LOSS
    since = first.risk_events[0].ts
    reply = r.command("halt", {})
    assert reply["risk_state"] == HALTED and reply["reason"].startswith("daily loss 5.10%")
    assert reply["note"] == f"already halted since {iso(since)} ({reply['reason']})"
    out = r.handle(step(2, equity=9_490.0))
    assert out.risk_events == () and r.reason_code == "DAILY_LOSS"  # the first reason
    # the manual halt outlives the daily loss, and its own reason takes over then
    out = r.handle(step(0, day=1, equity=9_490.0))
    assert out.risk_state == HALTED
    (ev,) = out.risk_events
    assert (ev.state, ev.prev_state, ev.reason, ev.detail) == (
        HALTED, HALTED, "MANUAL", "ctl halt")


def test_a_second_halt_does_not_replace_the_reason_of_the_first() -> None:
    r = make()
    r.command("halt", {"reason": "exchange maintenance"})
    reply = r.command("halt", {"reason": "something else"})
    assert reply["reason"] == "exchange maintenance"
    assert reply["note"].endswith("(exchange maintenance)")
    r.handle(step(0, equity=10_000.0))
    out = r.handle(step(1, equity=8_000.0))  # a drawdown breach while halted by ctl
    assert out.risk_events == () and r.reason == "exchange maintenance"
    r.command("resume", {})
    assert r.command("halt", {"reason": "new day"})["reason"] == "new day"


def test_a_halt_reason_that_is_not_text_never_reaches_the_events() -> None:
    """Defence in depth behind control.schema: re-applied commands come from the store."""
    r = make()
    assert r.command("halt", {"reason": {"a": [1, 2]}})["reason"] == "{'a': [1, 2]}"
    with pytest.raises(ValueError, match="needs a SYMBOL"):
        r.command("pause", {"symbol": 5})


def test_flatten_makes_exit_intents_for_every_position_on_the_next_step() -> None:
    r = make()
    r.command("flatten", {})
    held = (position("ADAUSDT", 1, 5.0), position(SYM, -1, 7.0))
    out = r.handle(step(4, positions=held))
    assert [(i.id, i.symbol, i.side, i.qty, i.purpose, i.reason) for i in out.intents] == [
        ("4-ADAUSDT-F", "ADAUSDT", -1, 5.0, "exit", "flatten"),
        (f"4-{SYM}-F", SYM, 1, 7.0, "exit", "flatten"),
    ]
    assert [(d.action, d.reason) for d in out.decisions] == [("allow", "EXIT")] * 2
    assert out.risk_state == ACTIVE  # flatten does not halt
    # one shot
    out = r.handle(step(5, positions=held))
    assert out.intents == () and out.decisions == ()


def test_flatten_does_not_duplicate_an_exit_already_decided() -> None:
    r = make()
    r.command("flatten", {})
    held = (position("ADAUSDT"), position(SYM))
    out = r.handle(step(4, positions=held, intents=(exit_(SYM),)))
    assert [(i.id, i.reason) for i in out.intents] == [("X1", "time_stop"),
                                                       ("4-ADAUSDT-F", "flatten")]
    assert len(out.decisions) == 2


def test_flatten_waits_for_a_step_with_the_broker_snapshot() -> None:
    r = make()
    r.command("flatten", {})
    out = r.handle(step(1, equity=None))  # degraded: positions unknown
    assert out.intents == ()
    out = r.handle(step(2, positions=(position(),)))
    assert [i.reason for i in out.intents] == ["flatten"]


def test_flatten_while_halted_passes() -> None:
    r = make()
    r.command("halt", {})
    r.command("flatten", {})
    out = r.handle(step(1, positions=(position(),)))
    assert decision(out) == RiskDecision(f"1-{SYM}-F", SYM, "allow", "EXIT", 10.0)


def test_pause_and_resume_symbol() -> None:
    clock = ReplayClock(DAY0 + 5)
    r = make(clock=clock)
    status = r.command("pause", {"symbol": SYM.lower()})
    assert status["paused_symbols"] == {SYM: "MANUAL"}
    out = r.handle(step(0, intents=(entry(), entry(symbol="LTCUSDT", id="E2"))))
    assert [(d.intent_id, d.action, d.reason) for d in out.decisions] == [
        ("E1", "deny", "SYMBOL_PAUSED"), ("E2", "allow", "OK")]
    (ev,) = out.risk_events
    assert (ev.ts, ev.reason, ev.symbol) == (DAY0 + 5, "SYMBOL_PAUSED", SYM)
    # a manual pause does not expire
    out = r.handle(step(0, day=30, intents=(entry(),)))
    assert decision(out).reason == "SYMBOL_PAUSED"
    clock.advance(DAY0 + 10)
    r.command("resume-symbol", {"symbol": SYM})
    out = r.handle(step(1, day=30, intents=(entry(),)))
    assert decision(out).action == "allow"
    (ev,) = out.risk_events
    assert (ev.ts, ev.reason, ev.symbol, ev.detail) == (
        DAY0 + 10, "SYMBOL_RESUMED", SYM, "ctl resume-symbol")
    assert r.status()["paused_symbols"] == {}


def test_exits_pass_for_a_paused_symbol() -> None:
    r = make()
    r.command("pause", {"symbol": SYM})
    out = r.handle(step(0, intents=(exit_(),), positions=(position(),)))
    assert decision(out).action == "allow"


def test_bad_commands() -> None:
    r = make()
    with pytest.raises(ValueError, match="not paused"):
        r.command("resume-symbol", {"symbol": SYM})
    with pytest.raises(ValueError, match="SYMBOL"):
        r.command("pause", {})
    with pytest.raises(ValueError, match="no command"):
        r.command("explode", {})
    assert r.command("status", {})["risk_state"] == ACTIVE


async def test_commands_over_the_channel_reply_and_errors_are_replies() -> None:
    cfg = load(env={})
    step_send, step_recv = trio.open_memory_channel[Step](1)
    out_send, out_recv = trio.open_memory_channel[Step](1)
    cmd_send, cmd_recv = trio.open_memory_channel[Command](1)
    r = RiskActor(cfg.risk, cfg.portfolio, CostModel.from_config(cfg.costs),
                  ReplayClock(DAY0), IV, step_recv, out_send, cmd_recv)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(r.run)
        reply_send, reply_recv = trio.open_memory_channel[Any](1)
        await cmd_send.send(Command("halt", {}, reply_send))
        assert (await reply_recv.receive())["risk_state"] == HALTED
        await cmd_send.send(Command("resume-symbol", {"symbol": SYM}, reply_send))
        assert "not paused" in (await reply_recv.receive())["error"]
        await step_send.send(step(0, intents=(entry(),)))
        out = await out_recv.receive()
        assert decision(out).reason == "HALTED"
        await step_send.aclose()
        with pytest.raises(trio.EndOfChannel):
            await out_recv.receive()
    assert r.processed == 1


# ----------------------------------------------------------------------------- portfolio


def test_losing_streak_pauses_the_symbol_in_the_same_step() -> None:
    r = make(portfolio={"max_losing_streak": 2, "pause_bars": 10})
    r.handle(step(0, closed=(trade(-5.0),)))
    out = r.handle(step(1, closed=(trade(-5.0, id=2),), intents=(entry(),)))
    assert decision(out).reason == "SYMBOL_PAUSED"
    (ev,) = out.risk_events
    assert (ev.reason, ev.symbol, ev.ts) == ("SYMBOL_PAUSED", SYM, out.close_ts)
    assert ev.detail.startswith("LOSING_STREAK")
    # the pause ends 10 bars later, on the step whose close reaches it
    out = r.handle(step(10, intents=(entry(),)))
    assert decision(out).reason == "SYMBOL_PAUSED"
    out = r.handle(step(11, intents=(entry(),)))
    assert decision(out).action == "allow"
    (ev,) = out.risk_events
    assert (ev.reason, ev.detail) == ("SYMBOL_RESUMED", "pause expired")


def test_live_entries_on_a_bar_that_closed_too_long_ago_are_denied_stale() -> None:
    """Live (stale_after_ms set): a catch-up bar's entry would fill at today's price, not at
    the next open; exits still go. Replays (no limit) are untouched."""
    clock = ReplayClock(DAY0)
    cfg = with_changes(load(env={}))
    send, recv = trio.open_memory_channel[Step](1)
    _, cmd_recv = trio.open_memory_channel[Command](1)
    r = RiskActor(cfg.risk, cfg.portfolio, CostModel.from_config(cfg.costs), clock, IV,
                  recv, send, cmd_recv, stale_after_ms=60_000)
    clock.advance(DAY0 + IV + 59_000)  # 59 s after the bar's close
    assert decision(r.handle(step(intents=(entry(10.0),)))).reason == "OK"
    clock.advance(DAY0 + IV + 61_000)
    assert decision(r.handle(step(intents=(entry(10.0),)))).reason == "STALE_BAR"
    assert decision(r.handle(step(intents=(exit_(),)))).action == "allow"
    replay = make(clock=clock)
    assert decision(replay.handle(step(intents=(entry(10.0),)))).reason == "OK"


def test_a_venue_alert_halts_until_resume() -> None:
    r = make()
    out = r.handle(replace(step(), venue_alerts=("reconcile: XRPUSDT: unknown position +5",)))
    assert out.risk_state == HALTED and "unknown position" in r.status()["reason"]
    assert decision(r.handle(step(1, intents=(entry(10.0),)))).reason == "HALTED"
    r.command("resume", {})
    assert decision(r.handle(step(2, intents=(entry(10.0),)))).reason == "OK"
